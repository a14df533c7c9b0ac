#!/usr/bin/env python3
"""PyTorch's side of examples/opt_bench.rs: torch.optim's step on the CPU
(its default, per-tensor implementation), the same sizes and rules.

    THREADS=2 python3 bench/opt_torch.py [n] [sgd|adam]
"""
import os
import sys
import time

import torch

n = int(sys.argv[1]) if len(sys.argv) > 1 else 11_700_000
rule = sys.argv[2] if len(sys.argv) > 2 else "sgd"
torch.set_num_threads(int(os.environ.get("THREADS", torch.get_num_threads())))
sizes = [n // 4] * 3 + [n - 3 * (n // 4)]
ws = [torch.randn(s, requires_grad=True) for s in sizes]
pulls = [torch.randn(s) for s in sizes]
if rule == "sgd":
    opt = torch.optim.SGD(ws, lr=0.01, momentum=0.9, weight_decay=5e-4)
elif rule == "adam":
    opt = torch.optim.Adam(ws, lr=1e-3)
else:
    sys.exit(f"unknown rule {rule!r} (sgd or adam)")
ms = []
for _ in range(13):
    opt.zero_grad()
    sum((w * c).sum() for w, c in zip(ws, pulls)).backward()
    start = time.perf_counter()
    opt.step()
    ms.append((time.perf_counter() - start) * 1e3)
ms = sorted(ms[1:])
print(f"torch {rule} step of {n} weights: median {ms[len(ms) // 2]:.2f} ms, best {ms[0]:.2f} ms")
