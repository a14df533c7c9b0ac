#!/usr/bin/env python3
"""PyTorch's side of examples/train_step.rs: one SGD step of a torchvision model
on random data, printing peak RSS and step times as JSON.

    python3 bench/train_step_torch.py resnet18 8 224 [steps]

In place of a model's name, FILE#RUN builds run RUN of sweep file FILE as sweep
does (examples/train_step.rs): the head, the frozen layers (requires_grad =
False, BatchNorm still in training mode) and the optimiser the file gives it.
"""
import json
import resource
import sys
import time
import tomllib

import torch
import torchvision.models as tm

model, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
torch.set_num_threads(int(__import__("os").environ.get("THREADS", torch.get_num_threads())))


def from_sweep_file(path, run):
    """The model and optimiser of run `run` of a sweep file ([defaults] under
    its [[run]] table; the keys the term report uses)."""
    doc = tomllib.load(open(path, "rb"))
    runs = [r for r in doc.get("run", []) if r.get("name") == run]
    if not runs:
        sys.exit(f"{path} has no run named {run}")
    cfg = {**doc.get("defaults", {}), **runs[0]}
    arch = cfg["model"]
    m = getattr(tm, arch)(num_classes=10)
    if cfg.get("stem", "imagenet") == "cifar":
        # sweep's stem = "cifar": a 3x3/1 convolution and no max-pool.
        if arch.startswith("resnet"):
            m.conv1 = torch.nn.Conv2d(3, m.conv1.out_channels, 3, 1, 1, bias=False)
            m.maxpool = torch.nn.Identity()
        elif arch.startswith("densenet"):
            m.features.conv0 = torch.nn.Conv2d(3, m.features.conv0.out_channels, 3, 1, 1, bias=False)
            m.features.pool0 = torch.nn.Identity()
    head, slot = cfg.get("head", "linear"), None
    if arch.startswith("resnet"):
        slot, stages = "fc", [["conv1.", "bn1."]] + [[f"layer{i}."] for i in range(1, 5)]
    elif arch.startswith("densenet"):
        slot = "classifier"
        stages = [["features.conv0.", "features.norm0."]] + [
            [f"features.denseblock{i}.", f"features.transition{i}."] + (["features.norm5."] if i == 4 else [])
            for i in range(1, 5)]
    elif arch.startswith("vgg"):
        slot, stages = "classifier" if isinstance(head, dict) else "classifier.6", None
    else:
        sys.exit(f"{arch}: not a model of the term report")
    if isinstance(head, dict):
        width = getattr(m, slot).in_features if not arch.startswith("vgg") else 512 * 7 * 7
        layers = []
        for h, p in zip(head["hidden"], head.get("dropout", [0.0] * len(head["hidden"]))):
            layers += [torch.nn.Linear(width, h), torch.nn.ReLU(), torch.nn.Dropout(p)]
            width = h
        setattr(m, slot, torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)))
    freeze = cfg.get("freeze", "none")
    if freeze == "all":
        frozen = [""]
    elif freeze == "none":
        frozen = []
    elif stages is not None and "through" in freeze:
        through = freeze["through"].replace("denseblock", "layer")
        names = ["stem"] + [f"layer{i}" for i in range(1, 5)]
        frozen = [p for s in stages[: names.index(through) + 1] for p in s]
    else:
        sys.exit(f"freeze = {freeze}: not supported here")
    for name, p in m.named_parameters():
        if not name.startswith(slot) and any(name.startswith(f) for f in frozen):
            p.requires_grad = False
    params = [p for p in m.parameters() if p.requires_grad]
    o = cfg.get("optimizer", {"name": "sgd", "lr": 0.01})
    if o["name"] == "adam":
        opt = torch.optim.Adam(params, lr=o["lr"], betas=tuple(o.get("betas", (0.9, 0.999))),
                               weight_decay=o.get("weight_decay", 0.0))
    else:
        opt = torch.optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0),
                              weight_decay=o.get("weight_decay", 0.0), nesterov=o.get("nesterov", False))
    return run, m.train(), opt


opt = None
if "#" in model:
    model, m, opt = from_sweep_file(*model.split("#", 1))
elif model == "smallcnn":
    # sweep's quickstart model (bench/smallcnn_torch.py has the same).
    def stage(cin, cout):
        return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    m = torch.nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(64, 10)).train()
else:
    m = getattr(tm, model)(num_classes=10).train()
opt = opt or torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
after_build = peak()
times = []
for _ in range(steps):
    x = torch.randn(batch, 3, size, size)
    y = torch.arange(batch) % 10
    t = time.perf_counter()
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(m(x), y)
    loss.backward()
    opt.step()
    loss.item()
    times.append(time.perf_counter() - t)
# EVAL_STEPS: forward passes in eval mode without autograd, as a test pass runs them.
eval_times = []
m.eval()
with torch.no_grad():
    for _ in range(int(__import__("os").environ.get("EVAL_STEPS", "0"))):
        x = torch.randn(batch, 3, size, size)
        t = time.perf_counter()
        m(x).argmax(1).tolist()
        eval_times.append(time.perf_counter() - t)
trainable = sum(p.numel() for p in m.parameters() if p.requires_grad)
print(json.dumps({"impl": "pytorch " + torch.__version__, "model": model, "batch": batch, "size": size,
                  "trainable_parameters": trainable, "eval_step_seconds": eval_times,
                  "peak_rss_mib": peak(), "rss_after_build_mib": after_build, "step_seconds": times}))
