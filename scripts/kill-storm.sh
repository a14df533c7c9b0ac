#!/usr/bin/env bash
# Crash-safety check: kill -9 the worker at random moments, restart it, repeat until the
# queue is drained; then compare every recorded epoch with an uninterrupted run of the same
# sweep and run SQLite's integrity check. Needs python3 (for sqlite3 and random delays).
#
#   scripts/kill-storm.sh [MAX_RESTARTS]        (default 80; uses target/release/sweep)
#
# KILL_STORM_TRAIN (images, default 320), KILL_STORM_EPOCHS (default 3) and
# KILL_STORM_MAX_DELAY (seconds a worker lives at most, default 8) make a longer
# storm, e.g. KILL_STORM_TRAIN=640 KILL_STORM_EPOCHS=6 KILL_STORM_MAX_DELAY=2 for 30+ kills.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/sweep
# The storm kills workers from outside, often several times at one point of a
# run: not the run's fault, so the limit on worker deaths is lifted here (it is
# tested on its own in tests/it/cli.rs and tests/it/store.rs).
export SWEEP_MAX_WORKER_DEATHS=1000
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cat > "$work/ks.toml" <<T
name = "kill-storm"
dataset = { name = "synthetic", train_size = ${KILL_STORM_TRAIN:-320}, test_size = 64 }
[defaults]
model = "smallcnn"
batch_size = 16
epochs = ${KILL_STORM_EPOCHS:-3}
augment = "a"
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, weight_decay = 5e-4 }
schedule = { name = "multistep", milestones = [1], factors = [0.5] }
[augment.a]
train = [{ random_crop = { size = 32, padding = 2 } }, { hflip = {} }]
[[grid]]
optimizer.lr = [0.05, 0.02]
head = ["linear", { hidden = [32], dropout = [0.3] }]
T
"$bin" -q --home "$work/ref" submit "$work/ks.toml" >/dev/null 2>&1
"$bin" -q --home "$work/kill" submit --queue-only "$work/ks.toml" >/dev/null
left() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute(\"select count(*) from runs where status != 'done'\").fetchone()[0])" "$work/kill/sweep.db"; }
kills=0
for i in $(seq 1 "${1:-80}"); do
    "$bin" -q --home "$work/kill" worker >/dev/null 2>&1 &
    pid=$!
    sleep "$(python3 -c "import random; print(random.uniform(0.3, ${KILL_STORM_MAX_DELAY:-8.0}))")"
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid"; kills=$((kills + 1)); fi
    wait "$pid" 2>/dev/null || true
    [ "$(left)" = 0 ] && break
done
python3 - "$work" "$kills" "$i" <<'P'
import os, sqlite3, sys
work, kills, restarts = sys.argv[1], sys.argv[2], sys.argv[3]
q = ("select r.key, e.epoch, e.train_loss, e.train_acc, e.test_loss, e.test_acc, e.lr "
     "from epochs e join runs r on r.id = e.run_id order by r.key, e.epoch")
ref = sqlite3.connect(f"{work}/ref/sweep.db").execute(q).fetchall()
db = sqlite3.connect(f"{work}/kill/sweep.db")
got = db.execute(q).fetchall()
status = db.execute("select status, count(*), sum(attempts) from runs group by status").fetchall()
integrity = db.execute("pragma integrity_check").fetchone()[0]
kept = {row[0] for row in db.execute("select path from checkpoints union select state_path from checkpoints")}
files = {os.path.join("runs", d, f) for d in os.listdir(f"{work}/kill/runs")
         for f in os.listdir(f"{work}/kill/runs/{d}") if f.endswith(".safetensors")}
print(f"kill -9 x {kills} over {restarts} worker starts; runs (status, count, attempts): {status}")
print(f"epochs: {len(got)} recorded, {len(ref)} in the uninterrupted run, identical: {got == ref}")
print(f"integrity_check: {integrity}; checkpoint files on disk == files the database refers to: {files == kept}")
ok = got == ref and integrity == "ok" and files == kept and status == [("done", 4, status[0][2])]
sys.exit(0 if ok else 1)
P
