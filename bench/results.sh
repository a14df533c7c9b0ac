#!/usr/bin/env bash
# `sweep results` on a database of 10,000 runs x 20 epochs: wall time of the
# whole command (process start, SQLite, rendering), median of 10.
#   bench/results.sh [runs] [epochs]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10000}
epochs=${2:-20}
cargo build --release --quiet
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
cat > "$home/seed.toml" <<'TOML'
name = "seed"
dataset = "synthetic"
[defaults]
model = "smallcnn"
batch_size = 64
epochs = 1
optimizer = { name = "sgd", lr = 0.05 }
TOML
./target/release/sweep --home "$home" -q submit --queue-only "$home/seed.toml" >/dev/null
python3 bench/results_db.py "$home" "$runs" "$epochs"
python3 - "$home" <<'PY'
import statistics, subprocess, sys, time
home = sys.argv[1]
cases = [
    ["results", "--sweep", "big"],
    ["results", "--sweep", "big", "--format", "json"],
    ["results", "--sweep", "big", "--where", "model=resnet50", "--sort", "-test_acc"],
    ["results", "--sweep", "big", "--group-by", "model,lr"],
]
for args in cases:
    times = []
    for _ in range(10):
        t = time.perf_counter()
        out = subprocess.run(["./target/release/sweep", "--home", home, *args], capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    lines = out.stdout.count(b"\n")
    print(f"sweep {' '.join(args)}: median {statistics.median(times) * 1000:.0f} ms, min {min(times) * 1000:.0f} ms ({lines} lines)")
PY
