#!/usr/bin/env bash
# The kill storm across machines: 3 workers, each with a home of its own (as on 3 machines),
# share a throwaway PostgreSQL queue and S3 artifacts on a local moto server; one of them is
# killed with kill -9 at random moments and restarted, again and again, until the queue is
# drained. Then: every run done once, every epoch recorded once and bit-identical to an
# uninterrupted single-worker run on the SQLite file, and the bucket holding exactly the
# checkpoint files the database refers to.
#
#   scripts/kill-storm-cluster.sh [MAX_KILLS]     (default 30; uses target/release/sweep)
#
# KILL_STORM_TRAIN (images, default 320), KILL_STORM_EPOCHS (default 3), KILL_STORM_MAX_DELAY
# (seconds between kills, default 3). Needs PostgreSQL (Debian's package) and moto
# (scripts/s3.sh install).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin sweep
bin=$PWD/target/release/sweep
export SWEEP_MAX_WORKER_DEATHS=1000 SWEEP_HEARTBEAT_SECS=0.5
work=$(mktemp -d /tmp/sweep-storm.XXXXXX)
pg=/tmp/sweep-storm-pg-$$
s3=/tmp/sweep-storm-s3-$$
cleanup() {
    pkill -9 -f "^$bin -q --home $work/machine" 2>/dev/null || true
    scripts/postgres.sh stop "$pg" >/dev/null 2>&1 || true
    scripts/s3.sh stop "$s3" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
url=$(scripts/postgres.sh start "$pg" $$)
endpoint=$(scripts/s3.sh start "$s3" $$)
curl -sf -X PUT "$endpoint/storm" >/dev/null
export AWS_ENDPOINT=$endpoint AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=storm AWS_SECRET_ACCESS_KEY=storm AWS_DEFAULT_REGION=us-east-1
export SWEEP_STORE=$url SWEEP_ARTIFACTS=s3://storm/exp
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
env -u SWEEP_STORE -u SWEEP_ARTIFACTS "$bin" -q --home "$work/ref" submit "$work/ks.toml" >/dev/null 2>&1
"$bin" -q --home "$work/machine0" submit --queue-only "$work/ks.toml" >/dev/null
left() { psql -qAt "$url" -c "select count(*) from runs where status != 'done'"; }
declare -a pids=("" "" "")
alive() { [ -n "${pids[$1]}" ] && kill -0 "${pids[$1]}" 2>/dev/null; }
start() { RAYON_NUM_THREADS=1 "$bin" -q --home "$work/machine$1" worker --device cpu --exit-when-empty >/dev/null 2>&1 & pids[$1]=$!; }
kills=0
starts=0
t0=$(date +%s)
while [ "$kills" -lt "${1:-30}" ] && [ "$(left)" != 0 ]; do
    for m in 0 1 2; do
        if ! alive "$m"; then start "$m"; starts=$((starts + 1)); fi
    done
    sleep "$(python3 -c "import random; print(random.uniform(0.3, ${KILL_STORM_MAX_DELAY:-3.0}))")"
    victim=$((RANDOM % 3))
    if alive "$victim"; then kill -9 "${pids[$victim]}"; kills=$((kills + 1)); fi
done
# The storm is over: the workers drain what is left.
for m in 0 1 2; do alive "$m" || { start "$m"; starts=$((starts + 1)); }; done
for m in 0 1 2; do wait "${pids[$m]}" 2>/dev/null || true; done
[ "$(left)" = 0 ] || { start 0; wait "${pids[0]}" || true; }
seconds=$(( $(date +%s) - t0 ))
"$bin" -q --home "$work/machine0" store copy --from "$url" --to "$work/copy.db" >/dev/null
curl -sf "$endpoint/storm?list-type=2&prefix=exp/runs/" > "$work/keys.xml"
python3 - "$work" "$kills" "$starts" "$seconds" <<'P'
import re, sqlite3, sys
work, kills, starts, seconds = sys.argv[1:5]
q = ("select r.key, e.epoch, e.train_loss, e.train_acc, e.test_loss, e.test_acc, e.lr "
     "from epochs e join runs r on r.id = e.run_id order by r.key, e.epoch")
ref = sqlite3.connect(f"{work}/ref/sweep.db").execute(q).fetchall()
db = sqlite3.connect(f"{work}/copy.db")
got = db.execute(q).fetchall()
status = db.execute("select status, count(*), sum(attempts) from runs group by status").fetchall()
kept = {"exp/" + row[0] for row in db.execute("select path from checkpoints union select state_path from checkpoints")}
held = {k for k in re.findall(r"<Key>([^<]*)</Key>", open(f"{work}/keys.xml").read()) if k.endswith(".safetensors")}
print(f"kill -9 x {kills} across 3 workers ({starts} worker starts) in {seconds} s; PostgreSQL queue, S3 artifacts")
print(f"runs (status, count, attempts): {status}")
print(f"epochs: {len(got)} recorded, {len(ref)} in the uninterrupted SQLite run, identical: {got == ref}")
print(f"checkpoint files in the bucket == files the database refers to: {held == kept} ({len(held)} files)")
ok = got == ref and held == kept and status == [("done", 4, status[0][2])]
sys.exit(0 if ok else 1)
P
