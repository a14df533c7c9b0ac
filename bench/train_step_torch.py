#!/usr/bin/env python3
"""PyTorch's side of examples/train_step.rs: one SGD step of a torchvision model
on random data, printing peak RSS and step times as JSON.

    python3 bench/train_step_torch.py resnet18 8 224 [steps]
"""
import json
import resource
import sys
import time

import torch
import torchvision.models as tm

model, batch, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 1
torch.set_num_threads(int(__import__("os").environ.get("THREADS", torch.get_num_threads())))
if model == "smallcnn":
    # sweep's quickstart model (bench/smallcnn_torch.py has the same).
    def stage(cin, cout):
        return [torch.nn.Conv2d(cin, cout, 3, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
                torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
    m = torch.nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(64, 10)).train()
else:
    m = getattr(tm, model)(num_classes=10).train()
opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
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
print(json.dumps({"impl": "pytorch " + torch.__version__, "model": model, "batch": batch, "size": size,
                  "peak_rss_mib": peak(), "rss_after_build_mib": after_build, "step_seconds": times}))
