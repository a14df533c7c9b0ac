#!/usr/bin/env bash
# `sweep slurm` end to end on a real single-node Slurm (Debian's slurmctld, slurmd and munge),
# with the queue in a throwaway PostgreSQL: a 4-run sweep as an array of 2 tasks finishes every
# run once; `scancel --batch --signal=USR1` on one task mid-run makes its worker checkpoint and
# hand its run back, the task requeues itself, and the run resumes with every epoch recorded
# once and the numbers of an uninterrupted single-worker run.
#
#   scripts/check-slurm.sh [SWEEP_BINARY]      (as root; default target/debug/sweep)
#
# Everything runs in a private network namespace (`unshare --net`: loopback and an unconnected
# veth pair, so that Slurm's address lookups work), so slurmctld and slurmd reach nothing but
# each other; munged uses its own socket; PostgreSQL a Unix socket. All of it is stopped at the
# end, and the whole check is bounded by SWEEP_SLURM_MAX_SECS (default 600).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath "${1:-target/debug/sweep}")
if [ "${SWEEP_SLURM_INNER:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "check-slurm: needs root (slurmd, a network namespace)" >&2; exit 1; }
    if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    fi
    export SWEEP_SLURM_INNER=1
    exec timeout "${SWEEP_SLURM_MAX_SECS:-600}" unshare --net --fork "$0" "$bin"
fi

# --- inside the namespace ---
ip link set lo up
ip link add sweep0 type veth peer name sweep1
ip addr add 10.254.254.1/24 dev sweep0
ip link set sweep0 up
ip link set sweep1 up

d=$(mktemp -d /tmp/sweep-slurm.XXXXXX)
chmod 755 "$d"
pg=/tmp/sweep-slurm-pg-$$
cleanup() {
    [ -f "$d/slurmd.pid" ] && kill "$(cat "$d/slurmd.pid")" 2>/dev/null || true
    [ -f "$d/slurmctld.pid" ] && kill "$(cat "$d/slurmctld.pid")" 2>/dev/null || true
    [ -f "$d/munged.pid" ] && kill "$(cat "$d/munged.pid")" 2>/dev/null || true
    pkill -f "^$bin worker" 2>/dev/null || true
    scripts/postgres.sh stop "$pg" >/dev/null 2>&1 || true
    sleep 1
    rm -rf "$d"
}
trap cleanup EXIT
fail() { echo "check-slurm: FAILED: $*" >&2; for f in "$d"/home/slurm/logs/*.out "$d"/log/*.log; do [ -f "$f" ] && { echo "--- $f" >&2; tail -30 "$f" >&2; }; done; exit 1; }

# munge with its own key and socket.
mkdir -p "$d/munge" "$d/state" "$d/spool" "$d/log"
dd if=/dev/urandom of="$d/munge/munge.key" bs=1024 count=1 status=none
chown -R munge: "$d/munge"
chmod 700 "$d/munge"
chmod 400 "$d/munge/munge.key"
runuser -u munge -- munged --force --key-file="$d/munge/munge.key" --socket="$d/munge/munge.sock" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" --seed-file="$d/munge/seed"
cp "$d/munge/munged.pid" "$d/munged.pid"

host=$(hostname -s)
cat > "$d/slurm.conf" <<C
ClusterName=sweepcheck
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/munge.sock
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
C
export SLURM_CONF=$d/slurm.conf
slurmctld -f "$SLURM_CONF" -c -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do sinfo -h -o %t 2>/dev/null | grep -q idle && break; sleep 0.2; done
sinfo -h -o %t | grep -q idle || fail "the Slurm node did not come up"

url=$(scripts/postgres.sh start "$pg" $$)
cat > "$d/s.toml" <<T
name = "slurm-check"
dataset = { name = "synthetic", train_size = 640, test_size = 64 }
seed = 1
[defaults]
model = "smallcnn"
batch_size = 16
epochs = 2
optimizer = { name = "sgd", lr = 0.05, momentum = 0.9 }
[[grid]]
optimizer.lr = [0.05, 0.02]
batch_size = [16, 32]
T
# The reference: one worker, the SQLite file.
"$bin" -q --home "$d/ref" submit "$d/s.toml" >/dev/null 2>&1 || fail "the reference run"

export SWEEP_HEARTBEAT_SECS=0.5
out=$("$bin" --home "$d/home" --store "$url" slurm "$d/s.toml" --gpus-per-task 0 --cpus-per-task 1 \
      --array 2 --time 10 --submit) || fail "sweep slurm: $out"
echo "$out"
job=$(echo "$out" | sed -n 's/^submitted job //p')
[ -n "$job" ] || fail "no job id in: $out"
psqlq() { psql -qAt "$url" -c "$1"; }

# Both tasks busy, each mid-run: signal task 0 as Slurm would before its time limit.
for _ in $(seq 600); do
    [ "$(psqlq "select count(*) from runs where status = 'running' and step >= 3")" -ge 2 ] && break
    sleep 0.1
done
[ "$(psqlq "select count(*) from runs where status = 'running'")" -ge 2 ] || fail "the two tasks never trained at once"
scancel --batch --signal=USR1 "${job}_0"
echo "check-slurm: sent USR1 to task ${job}_0"

for _ in $(seq 1200); do
    [ "$(psqlq "select count(*) from runs where status != 'done'")" = 0 ] && break
    sleep 0.25
done
[ "$(psqlq "select count(*) from runs where status = 'done'")" = 4 ] || fail "not every run is done: $(psqlq "select status, count(*) from runs group by status")"
[ "$(psqlq "select count(*) from epochs")" = 8 ] || fail "epochs recorded: $(psqlq "select count(*) from epochs") (want 8: each once)"
[ "$(psqlq "select count(*) from runs where attempts = 2")" -ge 1 ] || fail "no run was handed back and resumed"
grep -q "requeueing this task" "$d"/home/slurm/logs/*_0.out || fail "task 0 did not requeue itself"
# The requeued task comes back, finds nothing left to claim and ends: the whole array ends
# with exit code 0. Slurm holds a requeued job until a BeginTime about two minutes ahead; once
# it is pending again, the check makes it eligible now, as an operator may (`scontrol update
# StartTime=now`), instead of waiting out the delay.
for _ in $(seq 120); do
    scontrol show job "${job}_0" | grep -q "JobState=PENDING" && break
    sleep 0.25
done
scontrol show job "${job}_0" | grep -Eo "(JobState|Restarts|BeginTime)=[^ ]*" | tr '\n' ' '; echo
scontrol update JobId="${job}_0" StartTime=now || true
for _ in $(seq 1200); do [ -z "$(squeue -h -j "$job")" ] && break; sleep 0.25; done
[ -z "$(squeue -h -j "$job")" ] || fail "the job array did not end: $(squeue -j "$job")"
grep -q "worker: 0 run(s) handled" "$d"/home/slurm/logs/*_0.out || fail "the requeued task did not come back as a worker"

# The numbers: every epoch of every run equal to the uninterrupted single-worker run.
"$bin" --home "$d/home" store copy --from "$url" --to "$d/copy.db" >/dev/null
python3 - "$d/ref/sweep.db" "$d/copy.db" <<'PY' || fail "the numbers differ from the single-worker run"
import sqlite3, sys
def epochs(path):
    db = sqlite3.connect(path)
    return db.execute("""select r.key, e.epoch, e.train_loss, e.train_acc, e.test_loss, e.test_acc, e.lr
                         from epochs e join runs r on r.id = e.run_id order by r.key, e.epoch""").fetchall()
ref, got = epochs(sys.argv[1]), epochs(sys.argv[2])
assert len(ref) == 8 and ref == got, (ref, got)
PY
resumed=$(psqlq "select sr.name from runs r join sweep_runs sr on sr.run_id = r.id where r.attempts = 2")
echo "check-slurm: ok: 4 runs done by a 2-task array, each epoch once; run '$resumed' was handed back by task 0 (USR1), resumed after the requeue, with the numbers of an uninterrupted run"
