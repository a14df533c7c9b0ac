#!/usr/bin/env bash
# Training speed and peak memory on the CPU, sweep (examples/train_step.rs) next
# to PyTorch (bench/train_step_torch.py) in the same run: SGD (momentum 0.9)
# steps on random data, one process per workload and implementation, ROUNDS
# times (default 2) alternating sweep and PyTorch, and a table of images/s
# (the median step and the best step over all rounds, each process's first
# step left out: this machine's speed drifts by 20-30% over minutes), the
# ratios and peak RSS.
# Needs python3 with torch and torchvision.
#   bench/memory.sh                          # the five workloads of issue 19
#   bench/memory.sh resnet152:8:224 vgg16    # model[:batch[:size[:steps]]] (default 8, 224, $STEPS or 4)
#   bench/memory.sh term                     # the five runs of experiments/report.toml
#   EVAL_STEPS=10 bench/memory.sh term       # also a test pass's speed: forward passes in eval
#                                            # mode without gradients, after the training steps
# A model may be FILE#RUN: run RUN of a sweep file, with its head, frozen layers
# and optimiser (from random weights), built alike on both sides.
set -euo pipefail
cd "$(dirname "$0")/.."
default=(smallcnn:64:32:40 resnet18:128:32:6 resnet18:8:224:6 resnet50:8:224:4 densenet121:8:224:4)
# The term report's runs at their batch sizes and resolutions, but VGG16's at
# batch 16 (its 128 at 224x224 takes 15 s a step here).
r=experiments/report.toml
term=("$r#resnet18-finetune:50:224:3" "$r#resnet50-layer3-4+mlp:128:32:6" "$r#resnet152-layer3-4+mlp:128:32:5"
  "$r#densenet169:128:32:6" "$r#vgg16-deep-head:16:224:3")
if [ "${1:-}" = term ]; then set -- "${term[@]}"; fi
workloads=("${@:-${default[@]}}")
steps=${STEPS:-4}
cargo build --release --example train_step >&2
threads=$(nproc)
out=$(mktemp)
trap 'rm -f "$out"' EXIT
for _ in $(seq "${ROUNDS:-2}"); do
  for w in "${workloads[@]}"; do
    IFS=: read -r model batch size n <<< "$w"
    batch=${batch:-8}
    size=${size:-224}
    n=${n:-$steps}
    RAYON_NUM_THREADS=$threads target/release/examples/train_step "$model" "$batch" "$size" "$n" | tee -a "$out"
    THREADS=$threads python3 bench/train_step_torch.py "$model" "$batch" "$size" "$n" | tee -a "$out"
  done
done
python3 - "$out" "$threads" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    d = json.loads(line)
    r = rows.setdefault((d["model"], d["batch"], d["size"]), {}).setdefault(
        "sweep" if d["impl"] == "sweep" else "torch", {"steps": [], "rss": 0})
    r["steps"] += d["step_seconds"][1:] or d["step_seconds"]
    r.setdefault("eval", []).extend(d.get("eval_step_seconds", [])[1:])
    r["rss"] = max(r["rss"], d["peak_rss_mib"])
print(f"\n{sys.argv[2]} threads; images/s = batch / step time, median and best step of all rounds\n")
print("| model | batch | size | sweep img/s median / best | PyTorch img/s median / best | sweep / PyTorch median / best | sweep peak RSS | PyTorch peak RSS |")
print("|---|---|---|---|---|---|---|---|")
for (model, batch, size), r in rows.items():
    if "sweep" in r and "torch" in r:
        med = {k: batch / statistics.median(v["steps"]) for k, v in r.items()}
        best = {k: batch / min(v["steps"]) for k, v in r.items()}
        print(f"| {model} | {batch} | {size} | {med['sweep']:.1f} / {best['sweep']:.1f} | {med['torch']:.1f} / {best['torch']:.1f} "
              f"| **{med['sweep'] / med['torch']:.2f}x / {best['sweep'] / best['torch']:.2f}x** | {r['sweep']['rss']:.0f} MiB | {r['torch']['rss']:.0f} MiB |")
evals = {k: r for k, r in rows.items() if all(r.get(i, {}).get("eval") for i in ("sweep", "torch"))}
if evals:
    print("\nTest passes (EVAL_STEPS): forward passes in eval mode without gradients, images/s of the median and best pass\n")
    print("| model | batch | size | sweep img/s median / best | PyTorch img/s median / best | sweep / PyTorch median / best |")
    print("|---|---|---|---|---|---|")
    for (model, batch, size), r in evals.items():
        med = {k: batch / statistics.median(v["eval"]) for k, v in r.items()}
        best = {k: batch / min(v["eval"]) for k, v in r.items()}
        print(f"| {model} | {batch} | {size} | {med['sweep']:.1f} / {best['sweep']:.1f} | {med['torch']:.1f} / {best['torch']:.1f} "
              f"| **{med['sweep'] / med['torch']:.2f}x / {best['sweep'] / best['torch']:.2f}x** |")
PY
