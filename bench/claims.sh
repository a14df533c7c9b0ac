#!/usr/bin/env bash
# 16 workers competing for 10,000 queued runs (claim + finish, no training), on the SQLite
# file and on PostgreSQL (a throwaway cluster from scripts/postgres.sh on a Unix socket):
# claims per second and double claims (must be 0). Median-free: one pass each, run twice.
#   bench/claims.sh [WORKERS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
workers=${1:-16}
runs=${2:-10000}
cargo build --release --quiet --example claims
bin=target/release/examples/claims
work=$(mktemp -d)
pg=/tmp/sweep-bench-pg-$$
trap 'scripts/postgres.sh stop "$pg" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
for i in 1 2; do
    rm -f "$work"/claims.db*
    "$bin" "$work/claims.db" "$workers" "$runs"
done
if url=$(scripts/postgres.sh start "$pg" $$); then
    for i in 1 2; do
        db=claims$i
        psql -q "$url" -c "CREATE DATABASE $db"
        "$bin" "${url/\/postgres\?/\/$db?}" "$workers" "$runs"
    done
else
    echo "bench/claims.sh: no PostgreSQL here (apt-get install postgresql); PostgreSQL skipped" >&2
fi
