#!/bin/bash
# pg.sh — a throwaway PostgreSQL cluster for the billing tests.
#   pg.sh start DIR PORT     initdb (if needed) + start + database/user tollgate + migrations
#   pg.sh stop DIR           fast shutdown
#   pg.sh migrate DIR PORT   apply migrations/*.sql not yet applied
# Runs the server as the `postgres` user when started as root.  Prints nothing on success.
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
cmd=$1; dir=$2; port=${3:-}
root=$(cd "$(dirname "$0")/../.." && pwd)
asuser() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

migrate() {
    export PGOPTIONS="-c client_min_messages=warning"
    local psql=(psql -X -q -h 127.0.0.1 -p "$port" -U tollgate -d tollgate -v ON_ERROR_STOP=1)
    "${psql[@]}" -c "CREATE TABLE IF NOT EXISTS schema_migrations(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    for f in "$root"/migrations/*.sql; do
        n=$(basename "$f")
        done_=$("${psql[@]}" -tA -c "SELECT 1 FROM schema_migrations WHERE name='$n'")
        [ -n "$done_" ] && continue
        "${psql[@]}" -1 -f "$f"
        "${psql[@]}" -c "INSERT INTO schema_migrations(name) VALUES ('$n')"
    done
}

case $cmd in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/PG_VERSION" ]; then
        asuser "$PGBIN/initdb" -D "$dir" -A trust -U postgres --no-sync >/dev/null
    fi
    asuser "$PGBIN/pg_ctl" -D "$dir" -l "$dir/log" -w -o "-p $port -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -tA -c "SELECT 1 FROM pg_roles WHERE rolname='tollgate'" | grep -q 1 ||
        psql -X -q -h 127.0.0.1 -p "$port" -U postgres -d postgres -c "CREATE ROLE tollgate LOGIN" -c "CREATE DATABASE tollgate OWNER tollgate"
    migrate
    ;;
stop)
    asuser "$PGBIN/pg_ctl" -D "$dir" -m fast -w stop >/dev/null || true
    ;;
migrate) migrate ;;
*) echo "usage: $0 start|stop|migrate DIR [PORT]" >&2; exit 2 ;;
esac
