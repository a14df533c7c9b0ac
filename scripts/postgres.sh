#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for sweep's tests, from Debian's postgresql package:
# initdb into a fresh folder, the server listening on a Unix socket in that folder only
# (listen_addresses = '': no TCP at all), trust authentication, no fsync.
#
#   scripts/postgres.sh start DIR [OWNER_PID]   prints the URL of the `postgres` database
#   scripts/postgres.sh stop DIR                stops the server and removes DIR
#   scripts/postgres.sh down DIR                stops the server, keeping its data (an outage)
#   scripts/postgres.sh up DIR                  starts it again after `down`
#
# With OWNER_PID the server stops itself (and DIR is removed) once that process is gone,
# and in any case after SWEEP_PG_MAX_SECS (default 3 hours): a test run that is killed
# leaves nothing running. As root, the cluster runs as the `postgres` user (initdb refuses
# root). Exit 3 when PostgreSQL is not installed (the tests then say they skipped it).
set -euo pipefail
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop|down|up DIR [OWNER_PID]" >&2; exit 2; }

bindir=""
if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    bindir=$(pg_config --bindir)
fi
if [ -z "$bindir" ]; then
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ]; then bindir=$d; break; fi
    done
fi
[ -n "$bindir" ] || { echo "postgres.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 3; }

as_owner() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

server_up() {
    as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses='' -c unix_socket_directories='$dir' -c fsync=off -c synchronous_commit=off \
            -c full_page_writes=off -c max_connections=300" start >"$dir/pg_ctl.log" 2>&1 \
        || { cat "$dir/pg_ctl.log" "$dir/server.log" >&2; exit 1; }
}

case "$cmd" in
start)
    owner=${3:-}
    mkdir -p "$dir"
    if [ "$(id -u)" = 0 ]; then
        chown postgres: "$dir"
        # The server runs as postgres: it must reach DIR (give one under /tmp).
        runuser -u postgres -- test -w "$dir" \
            || { echo "postgres.sh: the postgres user cannot reach $dir (give a folder under /tmp)" >&2; exit 1; }
    fi
    as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    server_up
    max=${SWEEP_PG_MAX_SECS:-10800}
    # The watchdog: stop the server when the owner is gone or the time is up.
    (
        trap '' HUP INT
        waited=0
        while [ "$waited" -lt "$max" ]; do
            if [ -n "$owner" ] && ! kill -0 "$owner" 2>/dev/null; then break; fi
            [ -d "$dir/data" ] || exit 0
            sleep 1
            waited=$((waited + 1))
        done
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$dir"
    ) </dev/null >/dev/null 2>&1 &
    disown || true
    echo "postgres://postgres@localhost/postgres?host=$dir"
    ;;
stop)
    if [ -d "$dir/data" ]; then
        as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
down)
    # The clients' connections are closed as in a restart (fast shutdown).
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
up)
    server_up
    ;;
*)
    echo "usage: $0 start|stop|down|up DIR [OWNER_PID]" >&2; exit 2 ;;
esac
