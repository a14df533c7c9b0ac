#!/usr/bin/env python3
"""torchvision's DataLoader on the same data and transforms as examples/loader.rs:
ImageFolder (PIL decode every time), the report's heavy augmentation on PIL
images, Resize(224) (or none), ToTensor, Normalize; batch 128, shuffled.

    python3 bench/loader_torch.py EXTRACTED_DIR/train [workers] [batches]
"""
import json
import sys
import time

import torch
from torchvision import datasets, transforms as T

root = sys.argv[1]
workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
n_batches = int(sys.argv[3]) if len(sys.argv) > 3 else 20
torch.set_num_threads(1)


def heavy(resize):
    t = [
        T.RandomCrop(32, padding=4),
        T.RandomHorizontalFlip(),
        T.RandomRotation(10),
        T.RandomAffine(0, shear=10, scale=(0.8, 1.2)),
        T.ColorJitter(0.2, 0.2, 0.2),
    ]
    if resize:
        t.append(T.Resize(224))
    return T.Compose(t + [T.ToTensor(), T.Normalize((0.4914, 0.4824, 0.4467), (0.2471, 0.2436, 0.2616))])


for what, resize in [("heavy+resize224+normalize", True), ("heavy+normalize at 32x32", False)]:
    ds = datasets.ImageFolder(root, transform=heavy(resize))
    dl = torch.utils.data.DataLoader(ds, batch_size=128, shuffle=True, num_workers=workers, drop_last=True,
                                     persistent_workers=False)
    it = iter(dl)
    next(it)  # start-up of the workers, not counted
    t = time.perf_counter()
    images = 0
    for _ in range(n_batches):
        x, _ = next(it)
        images += x.shape[0]
    secs = time.perf_counter() - t
    print(json.dumps({"what": "torchvision " + what, "workers": workers, "batch": 128, "images": images,
                      "seconds": round(secs, 2), "images_per_sec": round(images / secs)}))
    del it, dl
