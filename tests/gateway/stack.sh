#!/usr/bin/env bash
# stack.sh — the gateway's own private stack for tests/gateway/: PostgreSQL,
# Redis, a scripted fake worker (fake_worker.py) and build/tollgate, on the
# gateway's test ports 18640-18679, under var/gwtest.
#   stack.sh up [GATEWAY_BIN]   start everything fresh; writes var/gwtest/env
#   stack.sh down               stop it
# Two gateways share PostgreSQL, Redis and the workers:
#   - "main": timeouts far above anything a test waits for (30 s), so that no test
#     on it depends on the machine being fast;
#   - "short": small timeouts (header, idle, upstream), only for the tests of those
#     timeouts, which make the other end silent until the timeout must fire.
# Ports: gateway 18640, admin 18644, PostgreSQL 18641, Redis 18642, workers 18643 and 18647,
# a dead worker 18645, the short gateway 18648 (admin 18649); 18650 is left to the tests
# (a TLS 1.1 control server).
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
V=$top/var/gwtest
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
P_GW=18640 P_PG=18641 P_REDIS=18642 P_WORKER=18643 P_ADMIN=18644 P_DEAD=18645 P_WORKER2=18647
P_SHORT=18648 P_SHORT_ADMIN=18649
MODEL=fake-model
# The short gateway's timeouts (ms).  The header timeout also covers the TLS handshake,
# so it is the one left with room for a loaded machine.
SHORT_HEADER_MS=3000 SHORT_IDLE_MS=500 SHORT_UPSTREAM_MS=500
GATEWAYS="gateway gateway-short"

die() { echo "gwtest: $*" >&2; exit 1; }

down() {
    for p in $GATEWAYS worker worker2 redis; do
        [ -f "$V/$p.pid" ] && kill -TERM "$(cat "$V/$p.pid")" 2>/dev/null || true
    done
    for p in $GATEWAYS worker worker2 redis; do
        if [ -f "$V/$p.pid" ]; then
            pid=$(cat "$V/$p.pid")
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
            rm -f "$V/$p.pid"
        fi
    done
    [ -f "$V/pgdir" ] && bash tests/billing/pg.sh stop "$(cat "$V/pgdir")" >/dev/null 2>&1 || true
}

# wait_for WHAT CMD...: run CMD until it succeeds; after 30 s the stack does not come up.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 300); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    die "$what did not come up within 30 s"
}

# start_gateway BIN NAME CONFIG PORT: start one gateway, wait until it answers /health.
start_gateway() {
    "$1" --config "$3" >"$V/log/$2.log" 2>&1 &
    echo $! >"$V/$2.pid"
    for _ in $(seq 300); do
        curl -sk -o /dev/null "https://127.0.0.1:$4/health" && return 0
        kill -0 "$(cat "$V/$2.pid")" 2>/dev/null || die "$2 exited (see $V/log/$2.log)"
        sleep 0.1
    done
    die "$2 does not answer on $4 after 30 s (see $V/log/$2.log)"
}

up() {
    local bin=${1:-build/tollgate}
    [ -d "$V" ] && down
    [ -f "$V/pgdir" ] && rm -rf "$(cat "$V/pgdir")"
    rm -rf "$V"
    mkdir -p "$V/tls" "$V/spool" "$V/spool-short" "$V/log" "$V/hold"
    [ -n "$PGBIN" ] || die "PostgreSQL binaries not found"
    # PostgreSQL runs as `postgres` when we are root; it must be able to enter its directory.
    local pgd=/tmp/tollgate-gwtest-pg-$(id -u)
    # A cluster left running by an interrupted run: stop it before its files go.
    [ -f "$pgd/postmaster.pid" ] && bash tests/billing/pg.sh stop "$pgd" >/dev/null 2>&1
    rm -rf "$pgd"
    echo "$pgd" >"$V/pgdir"
    PGBIN=$PGBIN bash tests/billing/pg.sh start "$pgd" "$P_PG" >"$V/log/pg-setup.log" 2>&1 ||
        die "PostgreSQL did not start (see $V/log/pg-setup.log)"
    redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no --daemonize no \
        --logfile "$V/log/redis.log" &
    echo $! >"$V/redis.pid"
    FAKE_WORKER_HOLD_DIR=$V/hold FAKE_WORKER_LOG=$V/worker-requests.jsonl /usr/bin/python3 tests/gateway/fake_worker.py "$P_WORKER" \
        >"$V/log/worker.log" 2>&1 &
    echo $! >"$V/worker.pid"
    FAKE_WORKER_HOLD_DIR=$V/hold FAKE_WORKER_LOG=$V/worker2-requests.jsonl /usr/bin/python3 tests/gateway/fake_worker.py "$P_WORKER2" \
        >"$V/log/worker2.log" 2>&1 &
    echo $! >"$V/worker2.pid"
    openssl rand -hex 32 >"$V/admin.token"
    openssl rand -hex 32 >"$V/key.secret"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$V/tls/key.pem" -out "$V/tls/cert.pem" \
        >/dev/null 2>&1 || die "openssl req failed"
    cat >"$V/tollgate.json" <<JSON
{
  "listen": "127.0.0.1:$P_GW", "admin_listen": "127.0.0.1:$P_ADMIN",
  "tls_cert": "$V/tls/cert.pem", "tls_key": "$V/tls/key.pem",
  "postgres": "host=127.0.0.1 port=$P_PG dbname=tollgate user=tollgate",
  "redis": "127.0.0.1:$P_REDIS",
  "admin_token_file": "$V/admin.token", "key_secret_file": "$V/key.secret",
  "spool_dir": "$V/spool", "access_log": "$V/log/access.log", "receipt_key": "",
  "max_body_bytes": 65536, "header_timeout_ms": 30000, "upstream_timeout_ms": 30000, "idle_timeout_ms": 30000,
  "redis_timeout_ms": 5000, "shutdown_grace_ms": 30000,
  "stream_high_water": 65536, "auth_fail_limit": 0,
  "workers": [{"url": "http://127.0.0.1:$P_DEAD", "models": ["$MODEL"]},
              {"url": "http://127.0.0.1:$P_WORKER", "models": ["$MODEL", "other-model"]},
              {"url": "http://127.0.0.1:$P_WORKER2", "models": ["$MODEL"]}]
}
JSON
    cat >"$V/tollgate-short.json" <<JSON
{
  "listen": "127.0.0.1:$P_SHORT", "admin_listen": "127.0.0.1:$P_SHORT_ADMIN",
  "tls_cert": "$V/tls/cert.pem", "tls_key": "$V/tls/key.pem",
  "postgres": "host=127.0.0.1 port=$P_PG dbname=tollgate user=tollgate",
  "redis": "127.0.0.1:$P_REDIS", "redis_timeout_ms": 5000,
  "admin_token_file": "$V/admin.token", "key_secret_file": "$V/key.secret",
  "spool_dir": "$V/spool-short", "access_log": "$V/log/access-short.log", "receipt_key": "",
  "header_timeout_ms": $SHORT_HEADER_MS, "idle_timeout_ms": $SHORT_IDLE_MS,
  "upstream_timeout_ms": $SHORT_UPSTREAM_MS,
  "workers": [{"url": "http://127.0.0.1:$P_WORKER", "models": ["$MODEL"]}]
}
JSON
    wait_for "Redis on $P_REDIS" redis-cli -p "$P_REDIS" ping
    for w in "$P_WORKER" "$P_WORKER2"; do
        wait_for "the fake worker on $w" curl -s -o /dev/null "http://127.0.0.1:$w/health"
    done
    start_gateway "$bin" gateway "$V/tollgate.json" "$P_GW"
    start_gateway "$bin" gateway-short "$V/tollgate-short.json" "$P_SHORT"
    cat >"$V/env" <<ENV
export GW_DIR=$V
export GW_URL=https://127.0.0.1:$P_GW
export GW_CERT=$V/tls/cert.pem
export GW_PG="host=127.0.0.1 port=$P_PG dbname=tollgate user=tollgate"
export GW_REDIS_PORT=$P_REDIS
export GW_MODEL=$MODEL
export GW_KEY_SECRET=$(cat "$V/key.secret")
export GW_PID=$(cat "$V/gateway.pid")
export GW_ADMIN=http://127.0.0.1:$P_ADMIN
export GW_ADMIN_TOKEN=$(cat "$V/admin.token")
export GW_ADMIN_URL=http://127.0.0.1:$P_ADMIN
export GW_SHORT_URL=https://127.0.0.1:$P_SHORT
export GW_SHORT_ADMIN_URL=http://127.0.0.1:$P_SHORT_ADMIN
export GW_SHORT_HEADER_MS=$SHORT_HEADER_MS
export GW_SHORT_IDLE_MS=$SHORT_IDLE_MS
export GW_SHORT_UPSTREAM_MS=$SHORT_UPSTREAM_MS
export GW_HOLD_DIR=$V/hold
export GW_WORKER_LOG=$V/worker-requests.jsonl
export GW_WORKER2_LOG=$V/worker2-requests.jsonl
ENV
}

case ${1:-} in
up) up "${2:-}" ;;
down) down ;;
*) echo "usage: stack.sh up [BIN] | down" >&2; exit 2 ;;
esac
