#!/usr/bin/env bash
# run.sh — nginx and tollgate in front of the same fixed upstream, in one run
# (issue 8): wrk, 64 connections, a POST chat body, each proxy over TLS.
#   nginx:    one worker per core, keep-alive to the upstream, TLS 1.2/1.3
#   tollgate: the same TLS, plus auth (key cache), limits (Redis: RPM, TPM and
#             concurrency on the key), a balance hold and metering (a usage
#             row and ledger debit per request in PostgreSQL)
# ROUNDS rounds (default 5), each running nginx then tollgate for DURATION
# (default 10s) after a warm-up; prints every run and the medians: req/s, p50,
# p99, and tollgate/nginx.  Then the p99 of small requests while 1 MiB
# prompts stream in (bench/gateway/large.py).  Not a test: figures vary with
# the machine and what else runs on it.
# Needs nginx and wrk (installed with apt-get when missing), PostgreSQL and
# Redis (as the tests do).  Ports BENCH_PORT_BASE (default 19760) to +9 (no test uses them); state
# under var/gwbench.  One run at a time per port base (a lock), so two trees cannot mix stacks.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
BIN=${TOLLGATE_BIN:-build/tollgate}
UPSTREAM_BIN=${UPSTREAM_BIN:-build/obj/bench/gateway/upstream}
ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-10s} CONNS=${CONNS:-64} THREADS=${WRK_THREADS:-2}
V=$top/var/gwbench
B=${BENCH_PORT_BASE:-19760}
P_NGINX=$B P_GW=$((B + 1)) P_ADMIN=$((B + 2)) P_PG=$((B + 3)) P_REDIS=$((B + 4)) P_UP=$((B + 5))
exec 8>"/tmp/tollgate-gwbench-$B.lock"
flock -w 3600 8 || { echo "bench-gateway: ports $B-$((B + 9)) stay busy (another run)" >&2; exit 1; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
PGD=/tmp/tollgate-gwbench-pg-$(id -u)-$B
MODEL=bench-model
die() { echo "bench-gateway: $*" >&2; exit 1; }

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench-gateway: installing ${need[*]} (Debian packages)" >&2
    apt-get install -y -q "${need[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${need[@]}" >/dev/null; } ||
        die "cannot install ${need[*]}"
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    [ -f "$V/nginx.pid" ] && kill -QUIT "$(cat "$V/nginx.pid" 2>/dev/null)" 2>/dev/null || true
    sleep 3 # tollgate drains its loops and flushes settlements
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    bash tests/billing/pg.sh stop "$PGD" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 143' INT TERM # (the EXIT trap cleans up; without the exit the hold loop went on)

rm -rf "$V"
mkdir -p "$V/tls" "$V/log" "$V/spool" "$V/nginx"
[ -f "$PGD/postmaster.pid" ] && bash tests/billing/pg.sh stop "$PGD" >/dev/null 2>&1
rm -rf "$PGD"
PGBIN=$PGBIN bash tests/billing/pg.sh start "$PGD" "$P_PG" >"$V/log/pg-setup.log" 2>&1 || die "PostgreSQL (see $V/log/pg-setup.log)"
redis-server --port "$P_REDIS" --bind 127.0.0.1 --save "" --appendonly no --logfile "$V/log/redis.log" &
REDIS_PID=$!
pids+=($!)
"$UPSTREAM_BIN" "$P_UP" >"$V/log/upstream.log" 2>&1 &
UP_PID=$!
pids+=($!)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=localhost \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$V/tls/key.pem" -out "$V/tls/cert.pem" >/dev/null 2>&1
openssl rand -hex 32 >"$V/admin.token"
openssl rand -hex 32 >"$V/key.secret"
for _ in $(seq 100); do redis-cli -p "$P_REDIS" ping >/dev/null 2>&1 && break; sleep 0.1; done

# a customer with credit for every request of the run, a key with limits far above it (so the
# limiter runs its Redis script on every request without refusing)
KEY=$(GW_KEY_SECRET=$(cat "$V/key.secret") GW_PG="host=127.0.0.1 port=$P_PG dbname=tollgate user=tollgate" \
      GW_MODEL=$MODEL /usr/bin/python3 tests/gateway/seed.py bench 1000000000000000000 1000000000 100000 2000000000)

cat >"$V/tollgate.json" <<JSON
{
  "listen": "127.0.0.1:$P_GW", "admin_listen": "127.0.0.1:$P_ADMIN",
  "tls_cert": "$V/tls/cert.pem", "tls_key": "$V/tls/key.pem", "receipt_key": "",
  "postgres": "host=127.0.0.1 port=$P_PG dbname=tollgate user=tollgate",
  "redis": "127.0.0.1:$P_REDIS",
  "admin_token_file": "$V/admin.token", "key_secret_file": "$V/key.secret",
  "spool_dir": "$V/spool", "access_log": "$V/log/access.log", "dashboard_dir": "",
  "max_body_bytes": 4194304,
  "workers": [{"url": "http://127.0.0.1:$P_UP", "models": ["$MODEL"]}]
}
JSON
"$BIN" --config "$V/tollgate.json" >"$V/log/tollgate.log" 2>&1 &
GW_PID=$!
pids+=($!)

cat >"$V/nginx/nginx.conf" <<NGINX
worker_processes auto;
pid $V/nginx.pid;
error_log $V/log/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream up { server 127.0.0.1:$P_UP; keepalive 128; }
    server {
        listen 127.0.0.1:$P_NGINX ssl;
        ssl_certificate $V/tls/cert.pem;
        ssl_certificate_key $V/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
        keepalive_requests 1000000;
        client_body_buffer_size 64k;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
"$NGINX" -p "$V/nginx" -c "$V/nginx/nginx.conf" -g "daemon off;" >"$V/log/nginx.log" 2>&1 &
pids+=($!)

for _ in $(seq 300); do
    curl -sk -o /dev/null "https://127.0.0.1:$P_GW/health" && curl -sk -o /dev/null "https://127.0.0.1:$P_NGINX/" && break
    sleep 0.1
done
curl -skf -o /dev/null -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" \
    -d "{\"model\":\"$MODEL\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":16}" \
    "https://127.0.0.1:$P_GW/v1/chat/completions" || die "tollgate does not answer a chat request (see $V/log/tollgate.log)"

cat >"$V/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
wrk.body = '{"model":"$MODEL","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}'
LUA

# one wrk run -> "req/s p50_ms p99_ms non2xx"
measure() {
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$2" --latency -s "$V/post.lua" "https://127.0.0.1:$1/v1/chat/completions")
    echo "$out" >>"$V/log/wrk.log"
    echo "$out" | awk '
        function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
        /Requests\/sec/ { rps = $2 }
        /^ +50%/ { p50 = ms($2) }
        /^ +99%/ { p99 = ms($2) }
        /Non-2xx/ { bad = $NF }
        END { printf "%.0f %.3f %.3f %d\n", rps, p50, p99, bad + 0 }'
}
# CPU ticks (user+system, all threads) of each party: "tollgate nginx postgres redis upstream"
ticks() { local t=0 p; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{ print $14 + $15 }' /proc/$p/stat))); done; echo $t; }
cpu_snapshot() {
    local pm nm
    pm=$(head -n 1 "$PGD/postmaster.pid" 2>/dev/null || echo 0)
    nm=$(cat "$V/nginx.pid" 2>/dev/null || echo 0) # this run's nginx: its master and workers
    echo "$(ticks "$GW_PID") $(ticks "$nm" $(pgrep -P "$nm" | tr '\n' ' ')) $(ticks "$pm" $(pgrep -P "$pm" | tr '\n' ' ')) $(ticks "$REDIS_PID") $(ticks "$UP_PID")"
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

if [ -n "${HOLD:-}" ]; then # for profiling by hand: the stack stays up until this script is stopped
    printf 'P_NGINX=%s P_GW=%s P_ADMIN=%s GW_PID=%s V=%s\n' "$P_NGINX" "$P_GW" "$P_ADMIN" "$GW_PID" "$V" >"$V/hold.env"
    echo "bench-gateway: holding; see $V/hold.env" >&2
    while :; do sleep 1; done
fi
measure "$P_NGINX" 3s >/dev/null # warm-up: connections, caches
measure "$P_GW" 3s >/dev/null
echo "bench-gateway: $(nproc) cores, wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds (nginx, then tollgate)"
printf "%-6s %-9s %10s %9s %9s %7s\n" round proxy "req/s" "p50 ms" "p99 ms" non2xx
: >"$V/nginx.runs"
: >"$V/tollgate.runs"
for r in $(seq "$ROUNDS"); do
    for p in nginx tollgate; do
        port=$P_NGINX
        [ $p = tollgate ] && port=$P_GW
        before=$(cpu_snapshot) perf_pid=
        if [ -n "${PERF:-}" ] && [ $p = tollgate ] && [ "$r" = 1 ]; then
            perf record -F 999 -g -p "$GW_PID" -o "$V/perf.data" -- sleep 5 >/dev/null 2>&1 &
            perf_pid=$!
        fi
        read -r rps p50 p99 bad < <(measure "$port" "$DURATION")
        [ -z "$perf_pid" ] || wait "$perf_pid" 2>/dev/null || true
        echo "$rps $p50 $p99 $bad" >>"$V/$p.runs"
        echo "$p $rps ${DURATION%s} $before $(cpu_snapshot)" >>"$V/cpu.runs"
        printf "%-6s %-9s %10s %9s %9s %7s\n" "$r" $p "$rps" "$p50" "$p99" "$bad"
    done
done
for p in nginx tollgate; do
    eval "${p}_rps=$(cut -d' ' -f1 "$V/$p.runs" | median)"
    eval "${p}_p50=$(cut -d' ' -f2 "$V/$p.runs" | median)"
    eval "${p}_p99=$(cut -d' ' -f3 "$V/$p.runs" | median)"
done
echo "medians:"
printf "  nginx     %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n" "$nginx_rps" "$nginx_p50" "$nginx_p99"
printf "  tollgate  %10.0f req/s  p50 %7.3f ms  p99 %7.3f ms\n" "$tollgate_rps" "$tollgate_p50" "$tollgate_p99"
awk -v a="$tollgate_rps" -v b="$nginx_rps" -v c="$tollgate_p99" -v d="$nginx_p99" \
    'BEGIN { printf "  tollgate/nginx: %.2fx throughput, p99 %+.3f ms\n", a / b, c - d }'
# CPU per request of each party, from /proc ticks over each run (medians over rounds)
echo "CPU microseconds per request (median over rounds; wrk's own CPU not counted):"
hz=$(getconf CLK_TCK)
printf "  %-9s %9s %9s %9s %9s %9s\n" run tollgate nginx postgres redis upstream
for p in nginx tollgate; do
    awk -v p=$p -v hz="$hz" '$1 == p {
            n = $2 * $3; if (n == 0) n = 1
            for (i = 0; i < 5; i++) printf "%.1f ", ($(9 + i) - $(4 + i)) / hz * 1e6 / n
            printf "\n" }' "$V/cpu.runs" >"$V/cpu.$p"
    printf "  %-9s" $p
    for c in 1 2 3 4 5; do printf " %9s" "$(cut -d' ' -f$c "$V/cpu.$p" | median)"; done
    printf "\n"
done
# rows of usage read by sequential scans (a settlement plan that scans usage whole shows here; 0
# expected), read before the count below, which is one such scan
seqrows=$(psql -X -tA -h 127.0.0.1 -p "$P_PG" -U tollgate -d tollgate \
    -c "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'usage'" 2>/dev/null || echo "?")
rows=$(psql -X -tA -h 127.0.0.1 -p "$P_PG" -U tollgate -d tollgate -c "SELECT count(*) FROM usage" 2>/dev/null || echo "?")
echo "  usage rows written by tollgate: $rows"
echo "  usage rows read by sequential scans during the run: $seqrows"

if [ "${LARGE:-1}" = 1 ]; then
    /usr/bin/python3 bench/gateway/large.py "$P_GW" "$KEY" "$MODEL" "$V/tls/cert.pem"
fi
