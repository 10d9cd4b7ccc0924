#!/bin/bash
# run.sh — the PostgreSQL-backed billing tests (make test-billing).
# Uses $TG_TEST_PG (scripts/test.sh exports it, migrations applied); without
# it, starts a private cluster on port 18680 for the duration of the run.
# The fault test starts its own second cluster on port 18690.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One run at a time on this machine: the fixed ports 18680-18699 and 18760-18773.
if [ -z "${TG_BILLTEST_LOCKED:-}" ]; then
    export TG_BILLTEST_LOCKED=1
    exec flock -w 1800 /tmp/tollgate-billtest-run.lock "$0" "$@"
fi
own=
if [ -z "${TG_TEST_PG:-}" ]; then
    own=$(mktemp -d /tmp/billtest-pg.XXXXXX)
    chmod 755 "$own"
    trap 'bash tests/billing/pg.sh stop "$own/pg"; rm -rf "$own"' EXIT
    bash tests/billing/pg.sh start "$own/pg" 18680
    export TG_TEST_PG="host=127.0.0.1 port=18680 dbname=tollgate user=tollgate"
fi
export BILL_SERVER=${BILL_SERVER:-build/bill_server}
/usr/bin/python3 tests/billing/test_billing.py
/usr/bin/python3 tests/billing/test_rollup.py
/usr/bin/python3 tests/billing/test_money.py
# The gateway fault test (SIGKILL of the gateway, ports 18760-18765); mk/billing.mk builds
# $TG_GATEWAY (build/tollgate, or build/<sanitizer>/tollgate) before this runs.
export TG_CTL=${TG_CTL:-build/tollgatectl}
export TG_GATEWAY=${TG_GATEWAY:-build/tollgate}
/usr/bin/python3 tests/billing/test_gw_kill.py
# Faults under load (ports 18770-18773): 20 SIGKILLs of the gateway, then PostgreSQL
# down for 60 s, both under streaming load; exactly once, no hold or lease left.
/usr/bin/python3 tests/billing/test_faults.py
# Receipts, refusal counters, money metrics, the spool lock (ports 18780-18786).
/usr/bin/python3 tests/billing/test_gw_money.py
