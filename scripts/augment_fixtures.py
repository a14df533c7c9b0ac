#!/usr/bin/env python3
"""Writes tests/fixtures/augment: for fixed inputs and fixed parameters of each
transform, the output of torchvision.transforms.functional on float tensor
images in [0, 1] (what a transform pipeline after ToTensor computes).

    python3 scripts/augment_fixtures.py tests/fixtures/augment

cases.json lists the cases: the name of the input tensor, the sweep steps (or the
deterministic sweep transforms) that must reproduce it, and for affine cases the
parameters torchvision derived the matrix from. cases.safetensors holds the
tensors. Tested by tests/it/augment.rs within 1/255.
"""
import json
import math
import os
import sys

import torch
import torchvision
import torchvision.transforms.functional as F
from safetensors.torch import save_file

out_dir = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/augment"
os.makedirs(out_dir, exist_ok=True)
g = torch.Generator().manual_seed(0)


def image(h, w):
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8).float() / 255.0


tensors = {}
cases = []


def case(name, img, out, steps=None, transforms=None, affine=None):
    key = next(k for k, v in inputs.items() if v is img)
    tensors[f"{name}.output"] = out.contiguous()
    c = {"name": name, "input": key, "output_shape": list(out.shape)}
    if steps is not None:
        c["steps"] = steps
    if transforms is not None:
        c["transforms"] = transforms
    if affine is not None:
        c["affine"] = affine
    cases.append(c)


a = image(13, 17)
b = image(37, 45)
s = image(32, 32)
inputs = {"input.a": a, "input.b": b, "input.s": s}
tensors.update({k: v.clone() for k, v in inputs.items()})

# Resize(size) on tensors: shorter side to size, antialiased bilinear.
case("resize_up", a, F.resize(a, 50, antialias=True), transforms=[{"resize": {"size": 50}}])
case("resize_down", b, F.resize(b, 16, antialias=True), transforms=[{"resize": {"size": 16}}])
case("resize_32_to_64", s, F.resize(s, 64, antialias=True), transforms=[{"resize": {"size": 64}}])

# CenterCrop: round-half-to-even offsets, zero padding when larger.
case("center_crop_31", s, F.center_crop(s, 31), transforms=[{"center_crop": {"size": 31}}])
case("center_crop_40", s, F.center_crop(s, 40), transforms=[{"center_crop": {"size": 40}}])

# RandomCrop(32, padding=4) with a fixed position (i, j) in the padded image.
for mode, fill, i, j in [("constant", 0, 1, 7), ("constant", 128, 8, 3), ("reflect", 0, 8, 0), ("reflect", 0, 2, 5)]:
    padded = F.pad(s, 4, fill=fill / 255.0, padding_mode=mode)
    out = F.crop(padded, i, j, 32, 32)
    case(
        f"random_crop_{mode}_{fill}_{i}_{j}",
        s,
        out,
        steps=[{"crop": {"top": i - 4, "left": j - 4, "h": 32, "w": 32, "mode": mode, "fill": fill / 255.0}}],
    )

case("hflip", a, F.hflip(a), steps=["hflip"])


def inverse_affine(angle, translate, scale, shear):
    return F._get_inverse_affine_matrix([0.0, 0.0], angle, translate, scale, shear)


# RandomRotation(degrees): F.rotate(img, angle, NEAREST, fill=[fill] * 3).
for angle, fill in [(7.3, 0), (-10.0, 128), (45.0, 0)]:
    out = F.rotate(s, angle, fill=[fill / 255.0] * 3)
    m = inverse_affine(-angle, [0.0, 0.0], 1.0, [0.0, 0.0])
    case(
        f"rotation_{angle}",
        s,
        out,
        steps=[{"affine": {"matrix": m, "fill": fill / 255.0}}],
        affine={"angle": -angle, "translate": [0.0, 0.0], "scale": 1.0, "shear": [0.0, 0.0]},
    )

# RandomAffine: F.affine(img, angle, translate, scale, shear, NEAREST, fill).
for k, (angle, tr, sc, sh) in enumerate(
    [(0.0, [2, -1], 1.13, [8.5, 0.0]), (5.0, [0, 0], 0.85, [-10.0, 0.0]), (-3.0, [-1, 2], 1.2, [4.0, 0.0])]
):
    out = F.affine(s, angle=angle, translate=tr, scale=sc, shear=sh, fill=[0.0] * 3)
    m = inverse_affine(angle, [float(t) for t in tr], sc, sh)
    case(
        f"affine_{k}",
        s,
        out,
        steps=[{"affine": {"matrix": m, "fill": 0.0}}],
        affine={"angle": angle, "translate": [float(t) for t in tr], "scale": sc, "shear": sh},
    )

# ColorJitter's adjustments, alone and in one drawn order.
fns = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue]
for k, f in [(0, 1.17), (0, 0.8), (1, 0.81), (1, 1.2), (2, 1.25), (2, 0.7), (3, 0.07), (3, -0.23)]:
    factors = [None] * 4
    factors[k] = f
    case(f"jitter_{k}_{f}", s, fns[k](s, f), steps=[{"jitter": {"order": [0, 1, 2, 3], "factors": factors}}])
order, factors = [3, 1, 0, 2], [1.15, 0.83, 1.2, 0.07]
out = s
for k in order:
    out = fns[k](out, factors[k])
case("jitter_all", s, out, steps=[{"jitter": {"order": order, "factors": factors}}])

mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
case("normalize_cifar10", s, F.normalize(s, mean, std), transforms=[{"normalize": "cifar10"}])

case("erase", s, F.erase(s, 3, 5, 10, 7, torch.tensor(0.5)), steps=[{"erase": {"top": 3, "left": 5, "h": 10, "w": 7, "value": 0.5}}])

# The report's heavy training chain with fixed draws.
x = F.crop(F.pad(s, 4, fill=0.0), 6, 2, 32, 32)
x = F.hflip(x)
x = F.rotate(x, -6.5, fill=[0.0] * 3)
x = F.affine(x, angle=0.0, translate=[0, 0], scale=0.9, shear=[7.0, 0.0], fill=[0.0] * 3)
for k, f in [(2, 1.1), (0, 0.9), (3, None), (1, 1.15)]:
    if f is not None:
        x = fns[k](x, f)
x = F.normalize(x, [0.4914, 0.4824, 0.4467], [0.2471, 0.2436, 0.2616])
case(
    "heavy_chain",
    s,
    x,
    steps=[
        {"crop": {"top": 2, "left": -2, "h": 32, "w": 32, "mode": "constant", "fill": 0.0}},
        "hflip",
        {"affine": {"matrix": inverse_affine(6.5, [0.0, 0.0], 1.0, [0.0, 0.0]), "fill": 0.0}},
        {"affine": {"matrix": inverse_affine(0.0, [0.0, 0.0], 0.9, [7.0, 0.0]), "fill": 0.0}},
        {"jitter": {"order": [2, 0, 3, 1], "factors": [0.9, 1.15, 1.1, None]}},
        {"normalize": {"mean": [0.4914, 0.4824, 0.4467], "std": [0.2471, 0.2436, 0.2616]}},
    ],
)

save_file(tensors, os.path.join(out_dir, "cases.safetensors"))
with open(os.path.join(out_dir, "cases.json"), "w") as f:
    json.dump({"torch": torch.__version__, "torchvision": torchvision.__version__, "cases": cases}, f, indent=1)
print(f"{len(cases)} cases -> {out_dir}")
