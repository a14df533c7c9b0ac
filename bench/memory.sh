#!/usr/bin/env bash
# Training speed and peak memory on the CPU, sweep (examples/train_step.rs) next
# to PyTorch (bench/train_step_torch.py) in the same run: SGD (momentum 0.9)
# steps on random data, one process per workload and implementation, and a
# table of images/s (median step after the first), the ratio and peak RSS.
# Needs python3 with torch and torchvision.
#   bench/memory.sh                          # the five workloads of issue 19
#   bench/memory.sh resnet152:8:224 vgg16    # model[:batch[:size[:steps]]] (default 8, 224, $STEPS or 4)
set -euo pipefail
cd "$(dirname "$0")/.."
default=(smallcnn:64:32:40 resnet18:128:32:6 resnet18:8:224:6 resnet50:8:224:4 densenet121:8:224:4)
workloads=("${@:-${default[@]}}")
steps=${STEPS:-4}
cargo build --release --example train_step >&2
threads=$(nproc)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for w in "${workloads[@]}"; do
  IFS=: read -r model batch size n <<< "$w"
  batch=${batch:-8}
  size=${size:-224}
  n=${n:-$steps}
  RAYON_NUM_THREADS=$threads target/release/examples/train_step "$model" "$batch" "$size" "$n" | tee -a "$out"
  THREADS=$threads python3 bench/train_step_torch.py "$model" "$batch" "$size" "$n" | tee -a "$out"
done
python3 - "$out" "$threads" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    s = d["step_seconds"][1:] or d["step_seconds"]
    key = (d["model"], d["batch"], d["size"])
    rows.setdefault(key, {})["sweep" if d["impl"] == "sweep" else "torch"] = (d["batch"] / statistics.median(s), d["peak_rss_mib"], d["impl"])
print(f"\n{sys.argv[2]} threads; images/s = batch / median step time (steps after the first)\n")
print("| model | batch | size | sweep img/s | PyTorch img/s | sweep / PyTorch | sweep peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|---|")
for (model, batch, size), r in rows.items():
    if "sweep" in r and "torch" in r:
        (a, ma, _), (b, mb, _) = r["sweep"], r["torch"]
        print(f"| {model} | {batch} | {size} | {a:.1f} | {b:.1f} | **{a / b:.2f}x** | {ma:.0f} MiB | {mb:.0f} MiB |")
PY
