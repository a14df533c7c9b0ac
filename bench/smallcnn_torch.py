"""PyTorch twin of sweep's `smallcnn` training step, for bench/run.sh.

Same architecture (3 x conv3x3-BN-ReLU-maxpool2 with 16/32/64 channels, global
average pooling, Linear(64, 10)), batch 64, SGD(lr=0.05, momentum=0.9,
weight_decay=5e-4), float32, 2560 images of 32x32 per epoch, CPU threads as
given. Prints training images per second for each epoch (the second is the
steady-state figure; sweep's epoch 2 compares to it).
"""
import sys
import time

import torch
from torch import nn

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
torch.set_num_threads(threads)
torch.manual_seed(0)


def stage(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]


model = nn.Sequential(*stage(3, 16), *stage(16, 32), *stage(32, 64),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
loss_fn = nn.CrossEntropyLoss()
n, bs = 2560, 64
images = torch.rand(n, 3, 32, 32)
labels = torch.randint(0, 10, (n,))
model.train()
for epoch in (1, 2):
    perm = torch.randperm(n)
    start = time.perf_counter()
    t = dict(data=0.0, forward=0.0, backward=0.0, optimizer=0.0, metrics=0.0)
    for i in range(0, n, bs):
        t0 = time.perf_counter()
        idx = perm[i:i + bs]
        x, y = images[idx], labels[idx]
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = loss_fn(logits, y)
        t2 = time.perf_counter()
        loss.item()
        (logits.argmax(1) == y).sum().item()
        t3 = time.perf_counter()
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        for k, a, b in (("data", t0, t1), ("forward", t1, t2), ("metrics", t2, t3), ("backward", t3, t4), ("optimizer", t4, t5)):
            t[k] += b - a
    secs = time.perf_counter() - start
    print(f"pytorch {torch.__version__} threads={threads} epoch {epoch}: {n / secs:.0f} img/s")
    print(f"  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items()))
