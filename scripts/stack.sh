#!/usr/bin/env bash
# stack.sh — set up and run the whole tollgate stack on loopback.
#
#   stack.sh run        var/:      gateway 8443, admin 8444, PG 8432, Redis 8379, engine 8500
#                       (the engine is the gateway's worker: it starts, checks, restarts and stops it);
#                       foreground, Ctrl-C stops everything; data kept between runs.
#   stack.sh test-up    var/test/: the same on 18443/18444/18432/18379/18500, fresh each time,
#                       in the background; writes var/test/env for the tests.
#   stack.sh test-down  stop what test-up started.
#
# Every port can be moved with TG_PORT_{GATEWAY,ADMIN,PG,REDIS,ENGINE}.
# PostgreSQL refuses to run as root: when we are root the cluster runs as the
# `postgres` user; if that user cannot reach var/ (a 0700 parent directory),
# the cluster lives under /var/tmp and var/.../pg is a symlink to it.
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
mode=${1:-run}

BIN=${TG_BIN:-build}   # build/<sanitizer> under make SANITIZER=...
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
MODEL=deepseek-v3-demo

case "$mode" in
run)
    V=$top/var
    : "${TG_PORT_GATEWAY:=8443}" "${TG_PORT_ADMIN:=8444}" "${TG_PORT_PG:=8432}"
    : "${TG_PORT_REDIS:=8379}" "${TG_PORT_ENGINE:=8500}"
    ;;
test-up | test-down)
    V=$top/var/test
    : "${TG_PORT_GATEWAY:=18443}" "${TG_PORT_ADMIN:=18444}" "${TG_PORT_PG:=18432}"
    : "${TG_PORT_REDIS:=18379}" "${TG_PORT_ENGINE:=18500}"
    ;;
*)
    echo "usage: stack.sh run|test-up|test-down" >&2
    exit 2
    ;;
esac

log() { printf 'tollgate: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_pg() { # run a command as the owner of the PostgreSQL cluster (from /: our cwd may be closed to it)
    if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

psql_admin() { "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$TG_PORT_PG" -U postgres "$@"; }
psql_app() { "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$TG_PORT_PG" -U tollgate -d tollgate "$@"; }

pg_datadir() { # where the cluster's files live (see the header)
    if [ "$(id -u)" -eq 0 ] && ! runuser -u postgres -- test -x "$V"; then
        local h
        h=$(printf '%s' "$V" | sha256sum | cut -c1-16)
        echo "/var/tmp/tollgate-pg-$h"
    else
        echo "$V/pg"
    fi
}

pg_stop() {
    local d
    d=$(pg_datadir)
    [ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m fast -w stop >/dev/null 2>&1 || true
}

pg_start() {
    local d
    d=$(pg_datadir)
    if [ ! -f "$d/PG_VERSION" ]; then
        log "initialising PostgreSQL cluster in $d"
        rm -rf "$d"
        mkdir -p "$d"
        [ "$(id -u)" -eq 0 ] && chown postgres: "$d"
        chmod 700 "$d"
        as_pg "$PGBIN/initdb" -D "$d" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >"$V/log/initdb.log" 2>&1 ||
            die "initdb failed, see $V/log/initdb.log"
    fi
    local plog=$V/log/pg.log
    if [ "$d" != "$V/pg" ]; then # the cluster lives outside var/: so does its log
        ln -sfn "$d" "$V/pg"
        plog=$d.log
        ln -sfn "$plog" "$V/log/pg.log"
    fi
    touch "$plog"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$plog"
    # A stale pid file from a killed run: pg_ctl copes when the pid is gone.
    as_pg "$PGBIN/pg_ctl" -D "$d" -l "$plog" -w -t 60 start \
        -o "-p $TG_PORT_PG -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c fsync=on" \
        >/dev/null || die "PostgreSQL did not start, see $V/log/pg.log"
    if ! psql_admin -d postgres -tAc "select 1 from pg_roles where rolname='tollgate'" | grep -q 1; then
        psql_admin -d postgres -c "create role tollgate login" >/dev/null
    fi
    if ! psql_admin -d postgres -tAc "select 1 from pg_database where datname='tollgate'" | grep -q 1; then
        psql_admin -d postgres -c "create database tollgate owner tollgate" >/dev/null
    fi
}

migrate() { # apply migrations/*.sql in name order, each once, each in one transaction
    psql_app -c "create table if not exists schema_migrations (name text primary key,
                 applied_at timestamptz not null default now())" >/dev/null
    local f n
    for f in migrations/*.sql; do
        [ -e "$f" ] || continue
        n=$(basename "$f")
        if ! psql_app -tAc "select 1 from schema_migrations where name='$n'" | grep -q 1; then
            log "applying migration $n"
            psql_app -1 -v ON_ERROR_STOP=1 -f "$f" -c "insert into schema_migrations(name) values ('$n')" \
                >/dev/null || die "migration $n failed"
        fi
    done
}

redis_start() {
    mkdir -p "$V/redis"
    redis-server --port "$TG_PORT_REDIS" --bind 127.0.0.1 --dir "$V/redis" --save "" \
        --appendonly no --daemonize no --logfile "$V/log/redis.log" </dev/null >/dev/null 2>&1 &
    echo $! >"$V/run/redis.pid"
    local i
    for i in $(seq 100); do
        redis-cli -p "$TG_PORT_REDIS" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "Redis did not start, see $V/log/redis.log"
}

secrets() {
    umask 077
    [ -s "$V/admin.token" ] || openssl rand -hex 32 >"$V/admin.token"
    [ -s "$V/key.secret" ] || openssl rand -hex 32 >"$V/key.secret"
    # the operator's Ed25519 key signing usage receipts; its public half is published
    # (var/receipt.pub, GET /v1/receipt-key) for `tollgatectl receipt verify`
    [ -s "$V/receipt.key" ] || openssl genpkey -algorithm ed25519 -out "$V/receipt.key" 2>/dev/null ||
        die "openssl genpkey ed25519 failed"
    umask 022
    [ -s "$V/receipt.pub" ] || openssl pkey -in "$V/receipt.key" -pubout -out "$V/receipt.pub" 2>/dev/null ||
        die "openssl pkey -pubout failed"
    if [ ! -s "$V/tls/cert.pem" ]; then
        mkdir -p "$V/tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
            -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$V/tls/key.pem" -out "$V/tls/cert.pem" >/dev/null 2>&1 || die "openssl req failed"
        chmod 600 "$V/tls/key.pem"
    fi
}

model() {
    local d=$V/models/$MODEL
    if [ ! -s "$d/config.json" ]; then
        log "generating the demo model in $d"
        rm -rf "$d"
        mkdir -p "$V/models"
        "$BIN"/tollgate-engine gen-model --arch deepseek_v3 --preset demo --out "$d.tmp" \
            --tokenizer build/data/deepseek-v3-tokenizer || die "gen-model failed"
        mv "$d.tmp" "$d"
    fi
}

config() {
    # Limits: `run` is a public endpoint: every key without its own limits gets these defaults
    # and repeated failed authentications get an address a 429 (gateway/README.md, "Rate limits").
    # The test stack keeps default limits off (the tests set their own per key) and the
    # failed-auth throttle off (every test client is 127.0.0.1; test_limits.py turns it on).
    local limits='"default_rpm": 60, "default_tpm": 200000, "default_concurrency": 8,'
    [ "$mode" = run ] || limits='"auth_fail_limit": 0,'
    cat >"$V/tollgate.json" <<EOF
{
  $limits
  "listen": "127.0.0.1:$TG_PORT_GATEWAY",
  "admin_listen": "127.0.0.1:$TG_PORT_ADMIN",
  "tls_cert": "$V/tls/cert.pem",
  "tls_key": "$V/tls/key.pem",
  "postgres": "host=127.0.0.1 port=$TG_PORT_PG dbname=tollgate user=tollgate",
  "redis": "127.0.0.1:$TG_PORT_REDIS",
  "admin_token_file": "$V/admin.token",
  "key_secret_file": "$V/key.secret",
  "spool_dir": "$V/spool",
  "receipt_key": "$V/receipt.key",
  "access_log": "$V/log/access.log",
  "default_max_tokens": ${TG_DEMO_MAX_TOKENS:-512},
  "workers": [{"url": "http://127.0.0.1:$TG_PORT_ENGINE", "models": ["$MODEL"],
               "command": [$(engine_argv)], "log": "$V/log/engine.log"}]
}
EOF
}

wait_http() { # wait_http URL WHAT PIDFILE
    local i
    for i in $(seq 600); do
        curl -sk -o /dev/null "$1" && return 0
        kill -0 "$(cat "$3")" 2>/dev/null || die "$2 exited, see $V/log/"
        sleep 0.1
    done
    die "$2 did not come up at $1"
}

engine_argv() { # the engine worker's command line as JSON strings: the gateway starts it (and restarts it)
    # The demo model's random weights rarely emit EOS: a request without max_tokens
    # gets 512 tokens (a few seconds) instead of the 4096 a real model would default to.
    local bin
    bin=$(cd "$BIN" && pwd)
    printf '"%s", "serve", "--model", "%s", "--listen", "127.0.0.1:%s", "--threads", "%s"' \
        "$bin/tollgate-engine" "$V/models/$MODEL" "$TG_PORT_ENGINE" "${TG_ENGINE_THREADS:-$(nproc)}"
    "$BIN"/tollgate-engine serve --help 2>&1 | grep -q -- --default-max-tokens &&
        printf ', "--default-max-tokens", "%s"' "${TG_DEMO_MAX_TOKENS:-512}"
    return 0
}

gateway_start() {
    mkdir -p "$V/spool"
    "$BIN"/tollgate --config "$V/tollgate.json" >>"$V/log/gateway.log" 2>&1 &
    echo $! >"$V/run/gateway.pid"
    wait_http "https://127.0.0.1:$TG_PORT_GATEWAY/health" gateway "$V/run/gateway.pid"
    # the engine worker: started by the gateway (workers[].command), which restarts it if it dies
    wait_http "http://127.0.0.1:$TG_PORT_ENGINE/health" "engine (started by the gateway)" "$V/run/gateway.pid"
    wait_http "http://127.0.0.1:$TG_PORT_ADMIN/" admin "$V/run/gateway.pid"
}

ctl() {
    TOLLGATE_ADMIN_URL="http://127.0.0.1:$TG_PORT_ADMIN" TOLLGATE_ADMIN_TOKEN="$(cat "$V/admin.token")" \
        "$BIN"/tollgatectl "$@"
}

demo_account() {
    # Demo prices (DeepSeek-V3's list prices): $0.27 / 1M input (miss), $0.07 (hit), $1.10 output.
    ctl price set --model "$MODEL" --input-miss 270000 --input-hit 70000 --output 1100000 >/dev/null ||
        die "could not set the demo price"
    if [ ! -s "$V/demo.key" ]; then
        ctl customer create demo --credit-usd 5.00 >/dev/null 2>&1 || log "customer demo exists already"
        local k
        k=$(ctl key create --customer demo | tail -n 1) || die "could not create the demo key"
        umask 077
        printf '%s\n' "$k" >"$V/demo.key"
        umask 022
    fi
}

stop_all() {
    local p
    for p in gateway engine redis; do
        [ -f "$V/run/$p.pid" ] && kill -TERM "$(cat "$V/run/$p.pid")" 2>/dev/null || true
    done
    for p in gateway engine redis; do
        if [ -f "$V/run/$p.pid" ]; then
            local pid i
            pid=$(cat "$V/run/$p.pid")
            # the gateway drains (shutdown_grace_ms), then stops its engine worker (up to 5 s)
            for i in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$V/run/$p.pid"
        fi
    done
    pg_stop
}

up() {
    mkdir -p "$V/log" "$V/run"
    secrets
    pg_start
    migrate
    redis_start
    model
    config
    gateway_start
    demo_account
}

case "$mode" in
run)
    trap 'echo; log "stopping"; stop_all; exit 0' INT TERM
    trap 'stop_all' EXIT
    up
    key=$(cat "$V/demo.key")
    cat <<EOF

tollgate is running.  Gateway https://127.0.0.1:$TG_PORT_GATEWAY  admin http://127.0.0.1:$TG_PORT_ADMIN
Demo key in var/demo.key, admin token in var/admin.token, logs in var/log/.  Ctrl-C stops everything.

curl --cacert $V/tls/cert.pem https://127.0.0.1:$TG_PORT_GATEWAY/v1/chat/completions -H "Authorization: Bearer $key" -H "Content-Type: application/json" -d '{"model":"$MODEL","messages":[{"role":"user","content":"Hello!"}],"max_tokens":32}'

EOF
    # Stay in the foreground until Ctrl-C or until a process dies.
    while kill -0 "$(cat "$V/run/gateway.pid")" 2>/dev/null; do
        sleep 1 &
        wait $! || true
    done
    log "a process exited; see $V/log/"
    exit 1
    ;;
test-up)
    [ -d "$V" ] && { stop_all 2>/dev/null || true; }
    d=$(pg_datadir)
    [ "$d" = "$V/pg" ] || rm -rf "$d" "$d.log"
    rm -rf "$V"
    mkdir -p "$V"
    # Keep the test model between runs: it is deterministic and takes time to make.
    if [ -s "$top/var/cache/models/$MODEL/config.json" ]; then
        mkdir -p "$V/models" && cp -r "$top/var/cache/models/$MODEL" "$V/models/"
    fi
    up
    mkdir -p "$top/var/cache/models"
    [ -s "$top/var/cache/models/$MODEL/config.json" ] || cp -r "$V/models/$MODEL" "$top/var/cache/models/"
    cat >"$V/env" <<EOF
export TG_TEST_DIR=$V
export TG_TEST_GATEWAY=https://127.0.0.1:$TG_PORT_GATEWAY
export TG_TEST_ADMIN=http://127.0.0.1:$TG_PORT_ADMIN
export TG_TEST_ADMIN_TOKEN=$(cat "$V/admin.token")
export TG_TEST_ENGINE=http://127.0.0.1:$TG_PORT_ENGINE
export TG_TEST_CERT=$V/tls/cert.pem
export TG_TEST_PG="host=127.0.0.1 port=$TG_PORT_PG dbname=tollgate user=tollgate"
export TG_TEST_REDIS=127.0.0.1:$TG_PORT_REDIS
export TG_TEST_MODEL=$MODEL
export TG_TEST_BIN=$(cd "$BIN" && pwd)
export TG_TEST_MODEL_DIR=$V/models/$MODEL
export TG_TEST_DEMO_KEY=$(cat "$V/demo.key")
export TOLLGATE_ADMIN_URL=http://127.0.0.1:$TG_PORT_ADMIN
export TOLLGATE_ADMIN_TOKEN=$(cat "$V/admin.token")
EOF
    log "test stack is up ($V/env)"
    ;;
test-down)
    [ -d "$V" ] && stop_all
    ;;
esac
