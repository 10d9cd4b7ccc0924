#!/bin/bash
# run.sh — make bench-billing: a private PostgreSQL (port $BENCH_PG_PORT, default 18790, data
# kept in $BENCH_DIR, default /tmp/tollgate-bench-pg, so the 5 million rows are generated once),
# filled by gen.sql when it holds fewer than $BENCH_ROWS usage rows, then bill_bench's figures.
# $BENCH_PG (a conninfo) uses an existing database instead (it must be migrated).
set -euo pipefail
cd "$(dirname "$0")/../.."
BENCH=${BENCH_BIN:-build/obj/bench/billing/bill_bench}
ROWS=${BENCH_ROWS:-5000000}
MONTH=${BENCH_MONTH:-2026-10}
if [ -z "${BENCH_PG:-}" ]; then
    PORT=${BENCH_PG_PORT:-18790}
    DIR=${BENCH_DIR:-/tmp/tollgate-bench-pg}
    exec 9>"/tmp/tollgate-bench-$PORT.lock"
    flock -w 3600 9
    trap 'bash tests/billing/pg.sh stop "$DIR"' EXIT
    bash tests/billing/pg.sh start "$DIR" "$PORT"
    BENCH_PG="host=127.0.0.1 port=$PORT dbname=tollgate user=tollgate"
    SU=(-h 127.0.0.1 -p "$PORT" -U postgres -d tollgate)
else
    SU=("$BENCH_PG")
fi
have=$(psql -X -tA "${SU[@]}" -c "SELECT count(*) FROM usage WHERE customer_id IN
         (SELECT id FROM customers WHERE name LIKE 'bench-c%')")
if [ "$have" -lt "$ROWS" ]; then
    [ "$have" = 0 ] || { echo "bench-billing: the database holds $have bench rows, fewer than $ROWS:" \
                              "use a fresh one (rm -rf \$BENCH_DIR)" >&2; exit 1; }
    echo "generating $ROWS usage rows (+ ledger, rollups) for $MONTH ..."
    start=$(date +%s)
    psql -X -q "${SU[@]}" -v rows="$ROWS" -v month="$MONTH" -f bench/billing/gen.sql | tail -3
    echo "generated in $(( $(date +%s) - start )) s"
fi
"$BENCH" "$BENCH_PG" "$MONTH"
