#!/usr/bin/env python3
"""Sums an `ncu --csv --metrics gpu__time_duration.sum` log by kernel name and
prints the kernels that took the most GPU time (bench/gpu.sh's profile step).

    python3 bench/ncu_top.py ncu.csv [top]
"""
import collections
import csv
import sys

UNIT = {"nsecond": 1e-6, "ns": 1e-6, "usecond": 1e-3, "us": 1e-3, "msecond": 1.0, "ms": 1.0, "second": 1e3, "s": 1e3}

path = sys.argv[1]
top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
with open(path, newline="") as f:
    lines = [l for l in f if l.startswith('"')]  # ncu's own messages are not quoted CSV
rows = csv.DictReader(lines)
total = collections.Counter()
count = collections.Counter()
for r in rows:
    if r.get("Metric Name") != "gpu__time_duration.sum":
        continue
    name = r["Kernel Name"].split("(")[0][:90]
    total[name] += float(r["Metric Value"].replace(",", "")) * UNIT.get(r["Metric Unit"], 1.0)
    count[name] += 1
all_ms = sum(total.values())
print(f"   {sum(count.values())} kernels, {all_ms:.1f} ms of GPU time in all")
for name, ms in total.most_common(top):
    print(f"   {ms:8.2f} ms {100 * ms / all_ms:5.1f}% {count[name]:6d}x  {name}")
