#!/usr/bin/env bash
# A local S3 server for sweep's tests: moto's server from PyPI, in a virtual environment
# under ~/.cache, listening on 127.0.0.1 only.
#
#   scripts/s3.sh install                 installs moto[server] (once)
#   scripts/s3.sh start DIR [OWNER_PID]   starts it, prints its endpoint (http://127.0.0.1:PORT)
#   scripts/s3.sh stop DIR
#
# With OWNER_PID the server stops itself once that process is gone, and in any case after
# SWEEP_S3_MAX_SECS (default 3 hours). Exit 3 when moto is not installed (tests then skip S3).
set -euo pipefail
venv=${XDG_CACHE_HOME:-$HOME/.cache}/sweep-s3-venv
cmd=${1:-}
case "$cmd" in
install)
    if [ ! -x "$venv/bin/moto_server" ]; then
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "moto[server]==5.2.5"
    fi
    ;;
start)
    dir=${2:?usage: $0 start DIR [OWNER_PID]}
    owner=${3:-}
    [ -x "$venv/bin/moto_server" ] || { echo "s3.sh: moto is not installed (scripts/s3.sh install)" >&2; exit 3; }
    mkdir -p "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    max=${SWEEP_S3_MAX_SECS:-10800}
    "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/pid"
    for _ in $(seq 100); do
        if python3 -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:$port/moto-api/')" 2>/dev/null; then
            break
        fi
        kill -0 "$pid" 2>/dev/null || { cat "$dir/server.log" >&2; exit 1; }
        sleep 0.1
    done
    (
        trap '' HUP INT
        waited=0
        while [ "$waited" -lt "$max" ] && kill -0 "$pid" 2>/dev/null; do
            if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then break; fi
            sleep 1
            waited=$((waited + 1))
        done
        kill "$pid" 2>/dev/null || true
        rm -rf "$dir"
    ) </dev/null >/dev/null 2>&1 &
    disown || true
    echo "http://127.0.0.1:$port"
    ;;
stop)
    dir=${2:?usage: $0 stop DIR}
    [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null || true
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 install | start DIR [OWNER_PID] | stop DIR" >&2; exit 2 ;;
esac
