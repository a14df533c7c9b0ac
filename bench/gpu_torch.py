#!/usr/bin/env python3
"""torchvision's ResNet18 at 224x224, batch 50, SGD momentum 0.9, one epoch (after three
untimed warm-up steps) of random 32x32 uint8 images resized on the GPU, in f32, tf32, bf16 autocast, and
bf16 autocast with channels-last model and inputs (the fast eager recipe); then, for each, the model
step alone (22 steps on one batch at 224, no data step, one read at the end):
the baseline next to `sweep` in bench/gpu.sh (same GPU, same call).

    python3 bench/gpu_torch.py [images]
"""
import sys
import time

import torch
import torch.nn.functional as F
import torchvision

n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
dev = torch.device("cuda")
g = torch.Generator().manual_seed(0)
data = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
labels = torch.randint(0, 10, (n,), generator=g).to(dev)
mean = torch.tensor([0.4914, 0.4824, 0.4467], device=dev).view(1, 3, 1, 1)
std = torch.tensor([0.2471, 0.2436, 0.2616], device=dev).view(1, 3, 1, 1)
for precision in ["f32", "tf32", "bf16", "bf16-channels-last"]:
    cl = precision.endswith("channels-last")
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).to(dev)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    order = torch.randperm(n, device=dev)

    def images(idx):
        x = F.interpolate(data[idx].float() / 255, size=224, mode="bilinear", antialias=True, align_corners=False)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last) if cl else x

    def step(idx):
        x = images(idx)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    for i in range(3):  # warm-up (cuDNN's first calls), not timed
        step(order[i * 50 : (i + 1) * 50])
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for i in range(0, n, 50):
        loss = step(order[i : i + 50])
    torch.cuda.synchronize()
    secs = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**20
    reserved = torch.cuda.max_memory_reserved() / 2**20
    free, total = torch.cuda.mem_get_info()
    print(f"torch resnet18 224 batch 50 {precision}: {n / secs:.0f} img/s, {secs:.1f} s for {n} images, peak {peak:.0f} MiB "
          f"(reserved {reserved:.0f}, device in use {(total - free) / 2**20:.0f}), loss {loss.item():.4f}")
    # the test pass sweep's trainer makes after each epoch (500 images at batch 256, eval mode,
    # no gradients): the same work for the peak-memory comparison (not in the timing above)
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
        for i in range(0, 500, 256):
            model(images(order[i : min(i + 256, 500)])).float().argmax(1)
    torch.cuda.synchronize()
    model.train()
    free, total = torch.cuda.mem_get_info()
    print(f"torch resnet18 224 batch 50 {precision}, with a test pass of 500 at batch 256: peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB "
          f"(reserved {torch.cuda.max_memory_reserved() / 2**20:.0f}, device in use {(total - free) / 2**20:.0f})")
    # the model alone, as examples/train_step.rs's line "without synchronisations":
    # 22 steps on one random batch already at 224, the loss read once at the end
    xb = torch.randn(50, 3, 224, 224, device=dev)
    if cl:
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = labels[:50]

    def model_step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision.startswith("bf16")):
            loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    model_step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(22):
        loss = model_step()
    loss.item()
    per = (time.perf_counter() - t) / 22
    print(f"torch resnet18 224 batch 50 {precision}, model step without synchronisations: {per * 1000:.1f} ms ({50 / per:.0f} img/s)")
