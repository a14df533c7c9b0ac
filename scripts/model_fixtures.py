#!/usr/bin/env python3
"""Writes model parity fixtures with PyTorch + torchvision for `cargo test parity`.

For each architecture: NAME.json (what to build), NAME.safetensors or NAME.pth
(the torchvision state_dict, randomised BatchNorm statistics included) and
NAME.io.safetensors (input, eval-mode logits, train-mode logits, the running
statistics after one train-mode forward, and the gradients of a fixed loss).

    python3 scripts/model_fixtures.py tests/fixtures/models          # small, committed
    python3 scripts/model_fixtures.py /tmp/parity --full             # every named model, not committed
    SWEEP_PARITY_DIR=/tmp/parity cargo test --release parity -- --nocapture
    python3 scripts/model_fixtures.py tests/fixtures/models --pth    # pth_*.pth: checkpoint wrappers, committed

Gradients of a fixed loss are compared for the small models only (see full()).
Small fixtures use torchvision's own classes (BasicBlock, Bottleneck, _make_layer,
DenseNet, VGG + make_layers) with reduced widths, so the forward code is
torchvision's.
"""
import copy
import json
import zlib
import os
import sys

import torch
import torch.nn as nn
import torchvision
from safetensors.torch import save_file
from torchvision.models import resnet as tvr
from torchvision.models import vgg as tvv
from torchvision.models.densenet import DenseNet

torch.manual_seed(0)


def small_resnet(bottleneck, layers, widths, classes, head, stem):
    block = tvr.Bottleneck if bottleneck else tvr.BasicBlock
    m = tvr.ResNet(block, [1, 1, 1, 1], num_classes=classes)
    m.inplanes = widths[0]
    m.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False) if stem == "imagenet" else nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
    if stem == "cifar":
        m.maxpool = nn.Identity()
    m.bn1 = nn.BatchNorm2d(widths[0])
    m.layer1 = m._make_layer(block, widths[0], layers[0])
    m.layer2 = m._make_layer(block, widths[1], layers[1], stride=2)
    m.layer3 = m._make_layer(block, widths[2], layers[2], stride=2)
    m.layer4 = m._make_layer(block, widths[3], layers[3], stride=2)
    m.fc = make_head(widths[3] * block.expansion, head, classes)
    return m


def make_head(features, head, classes):
    if head == "linear":
        return nn.Linear(features, classes)
    layers, cin = [], features
    for h, p in zip(head["hidden"], head["dropout"]):
        layers += [nn.Linear(cin, h), nn.ReLU(), nn.Dropout(p)]
        cin = h
    return nn.Sequential(*layers, nn.Linear(cin, classes))


def small_vgg(cfg, bn, hidden, classes, head):
    m = tvv.VGG(tvv.make_layers([c if c else "M" for c in cfg], batch_norm=bn), num_classes=classes)
    c = [x for x in cfg if x][-1]
    if head == "linear":
        m.classifier = nn.Sequential(
            nn.Linear(c * 49, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
            nn.Linear(hidden, classes))
    else:
        m.classifier = make_head(c * 49, head, classes)
    return m


def randomise(m, g):
    """Random BatchNorm affine parameters and statistics, so eval mode is a real test."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) + 0.5)
                mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)
                mod.running_mean.copy_(torch.randn(mod.running_mean.shape, generator=g) * 0.1)
                mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) + 0.5)
                mod.num_batches_tracked.fill_(7)


def old_densenet_keys(sd):
    import re
    out = {}
    for k, v in sd.items():
        out[re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k)] = v
    return out


def write(out, name, arch, model, head, stem, size, classes, fmt="safetensors", dropout=False, grads=True):
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    randomise(model, g)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, size, size, generator=g)
    io = {"__input__": x}
    model.eval()
    with torch.no_grad():
        io["__logits_eval__"] = model(x)
    model.train()
    xr = x.clone()
    logits = model(xr)
    if not dropout:
        io["__logits_train__"] = logits.detach()
        w = torch.randn(logits.shape, generator=g)
        io["__loss_weights__"] = w
        (logits * w).sum().backward()
        for k, p in model.named_parameters():
            if p.grad is not None and grads:
                io["grad." + k] = p.grad.detach().clone()
    for k, v in model.state_dict().items():
        if k.endswith("running_mean") or k.endswith("running_var"):
            io["after." + k] = v.detach().clone()
    if not grads:
        # Deep models in train mode at batch 3 are ill-conditioned: measure how far
        # PyTorch's own float32 result is from float64 and allow 3x that.
        ref = copy.deepcopy(model).double()
        ref.load_state_dict({k: v.double() if v.is_floating_point() else v for k, v in sd.items()})
        ref.train()
        with torch.no_grad():
            r = ref(x.double())
        err = ((logits.detach().double() - r).abs().max() / r.abs().max()).item()
        io["__train_tolerance__"] = torch.tensor([max(1e-4, 3 * err)], dtype=torch.float32)
    spec = {"arch": arch, "head": head, "stem": stem, "classes": classes}
    if fmt == "pth":
        torch.save(old_densenet_keys(sd), os.path.join(out, name + ".pth"))
        spec["weights"] = name + ".pth"
    else:
        save_file(sd, os.path.join(out, name + ".safetensors"))
        spec["weights"] = name + ".safetensors"
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(out, name + ".io.safetensors"))
    with open(os.path.join(out, name + ".json"), "w") as f:
        json.dump(spec, f, indent=1)
    print(name, sum(v.numel() for v in sd.values()), "values")


def small(out):
    mlp = {"hidden": [6], "dropout": [0.0]}
    write(out, "resnet_basic", {"family": "resnet", "bottleneck": False, "layers": [2, 1, 1, 1], "widths": [4, 6, 8, 8]},
          small_resnet(False, [2, 1, 1, 1], [4, 6, 8, 8], 5, "linear", "imagenet"), "linear", "imagenet", 36, 5)
    write(out, "resnet_bottleneck_mlp", {"family": "resnet", "bottleneck": True, "layers": [1, 2, 1, 1], "widths": [4, 4, 6, 8]},
          small_resnet(True, [1, 2, 1, 1], [4, 4, 6, 8], 5, mlp, "imagenet"), mlp, "imagenet", 36, 5)
    write(out, "resnet_cifar_stem", {"family": "resnet", "bottleneck": False, "layers": [1, 1, 1, 1], "widths": [4, 4, 6, 8]},
          small_resnet(False, [1, 1, 1, 1], [4, 4, 6, 8], 5, "linear", "cifar"), "linear", "cifar", 16, 5)
    dn = {"family": "densenet", "growth": 4, "blocks": [2, 3, 2], "init_features": 8, "bn_size": 2}
    write(out, "densenet_pth_old_keys", dn,
          DenseNet(growth_rate=4, block_config=(2, 3, 2), num_init_features=8, bn_size=2, num_classes=5),
          "linear", "imagenet", 36, 5, fmt="pth")
    cfg = [4, 0, 8, 0, 8, 0]
    for bn in (False, True):
        name = "vgg_bn" if bn else "vgg"
        write(out, name, {"family": "vgg", "features": cfg, "batch_norm": bn, "hidden": 12},
              small_vgg(cfg, bn, 12, 5, "linear"), "linear", "imagenet", 36, 5, dropout=True)
    write(out, "vgg_mlp_head", {"family": "vgg", "features": cfg, "batch_norm": True, "hidden": 12},
          small_vgg(cfg, True, 12, 5, {"hidden": [10, 7], "dropout": [0.0, 0.0]}), {"hidden": [10, 7], "dropout": [0.0, 0.0]},
          "imagenet", 36, 5)


def full(out, size):
    """Full-size models with torchvision's random init: logits and BN statistics only.

    Their float32 gradients are ill-conditioned (PyTorch's own float32 gradients of
    densenet121 differ from its float64 ones by up to 14%), so gradients are
    compared on the small models only.
    """
    import functools
    import torchvision.models as tm
    global write
    write = functools.partial(write, grads=False)
    presets = {
        "resnet18": (False, [2, 2, 2, 2]), "resnet34": (False, [3, 4, 6, 3]), "resnet50": (True, [3, 4, 6, 3]),
        "resnet101": (True, [3, 4, 23, 3]), "resnet152": (True, [3, 8, 36, 3]),
    }
    for name, (b, layers) in presets.items():
        write(out, name, {"family": "resnet", "bottleneck": b, "layers": layers, "widths": [64, 128, 256, 512]},
              getattr(tm, name)(num_classes=10), "linear", "imagenet", size, 10)
    for name, (g, blocks, init) in {"densenet121": (32, [6, 12, 24, 16], 64), "densenet161": (48, [6, 12, 36, 24], 96),
                                    "densenet169": (32, [6, 12, 32, 32], 64), "densenet201": (32, [6, 12, 48, 32], 64)}.items():
        write(out, name, {"family": "densenet", "growth": g, "blocks": blocks, "init_features": init, "bn_size": 4},
              getattr(tm, name)(num_classes=10), "linear", "imagenet", size, 10)
    for name, cfg in tvv.cfgs.items():
        n = {"A": 11, "B": 13, "D": 16, "E": 19}[name]
        for bn in (False, True):
            tag = f"vgg{n}" + ("_bn" if bn else "")
            write(out, tag, {"family": "vgg", "features": [c if c != "M" else 0 for c in cfg], "batch_norm": bn, "hidden": 4096},
                  getattr(tm, tag)(num_classes=10), "linear", "imagenet", size, 10, dropout=True)


def pth_wrappers(out):
    """One tiny state_dict as torch.save writes it in the ways users save checkpoints."""
    torch.manual_seed(7)
    g = torch.Generator().manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    sd = model.state_dict()
    other = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3, generator=g)).sum().backward()
    opt.step()
    save = lambda obj, name: torch.save(obj, os.path.join(out, name + ".pth"))
    save(sd, "pth_plain")
    save({"epoch": 3, "model_state_dict": sd, "optimizer_state_dict": opt.state_dict()}, "pth_checkpoint")
    save({"epoch": 3, "weights": sd, "best_acc": 0.5}, "pth_one_entry")
    save({"module." + k: v for k, v in sd.items()}, "pth_ddp")
    save({"_orig_mod." + k: v for k, v in sd.items()}, "pth_compiled")
    save(model, "pth_whole_model")
    save({"generator": sd, "discriminator": other}, "pth_two_models")
    save({"epoch": 3, "best_acc": 0.5}, "pth_no_tensors")


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    if "--pth" in sys.argv:
        pth_wrappers(out)
    elif "--full" in sys.argv:
        full(out, int(os.environ.get("SIZE", "64")))
    else:
        small(out)
