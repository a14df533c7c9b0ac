#!/usr/bin/env python3
"""Writes optimizer parity fixtures with torch.optim for `cargo test optim_parity`.

    python3 scripts/optim_fixtures.py tests/fixtures/optim

For each case: CASE.json (sweep's optimizer table) and CASE.safetensors with the
initial parameters (`init.w`, `init.b`), the gradient of every step (`grad.S.w`,
...) and the parameters after every step (`after.S.w`, ...). `w` is a matrix,
`b` a vector (a bias: no weight decay with `decay_bn_bias = false`).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

STEPS = 6
CASES = {
    "sgd_plain": {"name": "sgd", "lr": 0.1},
    "sgd_momentum_dampening_wd": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.1, "weight_decay": 1e-2},
    "sgd_nesterov_wd": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4},
    "sgd_momentum_clip": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "clip_grad_norm": 0.5},
    "sgd_no_decay_bn_bias": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.1, "decay_bn_bias": False},
    "adam_wd": {"name": "adam", "lr": 1e-2, "weight_decay": 1e-2},
    "adam_amsgrad": {"name": "adam", "lr": 1e-2, "betas": [0.8, 0.99], "eps": 1e-6, "amsgrad": True},
    "adamw": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.05},
    "adamw_amsgrad_clip": {"name": "adamw", "lr": 1e-2, "amsgrad": True, "clip_grad_norm": 1.0},
    "adamw_no_decay_bn_bias": {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1, "decay_bn_bias": False},
}


def make(spec, params):
    decay_all = spec.get("decay_bn_bias", True)
    wd = spec.get("weight_decay", 0.01 if spec["name"] == "adamw" else 0.0)
    if decay_all:
        groups = [{"params": params, "weight_decay": wd}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": wd},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    lr = spec["lr"]
    if spec["name"] == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=spec.get("momentum", 0.0), dampening=spec.get("dampening", 0.0),
                               nesterov=spec.get("nesterov", False))
    cls = torch.optim.Adam if spec["name"] == "adam" else torch.optim.AdamW
    return cls(groups, lr=lr, betas=tuple(spec.get("betas", (0.9, 0.999))), eps=spec.get("eps", 1e-8),
               amsgrad=spec.get("amsgrad", False))


def main(out):
    os.makedirs(out, exist_ok=True)
    for i, (name, spec) in enumerate(CASES.items()):
        g = torch.Generator().manual_seed(100 + i)
        w = torch.randn(4, 3, generator=g).requires_grad_()
        b = torch.randn(4, generator=g).requires_grad_()
        t = {"init.w": w.detach().clone(), "init.b": b.detach().clone()}
        opt = make(spec, [w, b])
        for s in range(STEPS):
            # Some steps have large gradients, so that clipping acts.
            scale = 3.0 if s % 2 else 0.3
            w.grad = torch.randn(4, 3, generator=g) * scale
            b.grad = torch.randn(4, generator=g) * scale
            t[f"grad.{s}.w"], t[f"grad.{s}.b"] = w.grad.clone(), b.grad.clone()
            if "clip_grad_norm" in spec:
                torch.nn.utils.clip_grad_norm_([w, b], spec["clip_grad_norm"])
            opt.step()
            t[f"after.{s}.w"], t[f"after.{s}.b"] = w.detach().clone(), b.detach().clone()
        save_file(t, os.path.join(out, name + ".safetensors"))
        with open(os.path.join(out, name + ".json"), "w") as f:
            json.dump(spec, f)
        print(name)


if __name__ == "__main__":
    main(sys.argv[1])
