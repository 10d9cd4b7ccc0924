#!/bin/bash
# run.sh — the PostgreSQL-backed billing tests (make test-billing).
# Uses $TG_TEST_PG (scripts/test.sh exports it, migrations applied); without
# it, starts a private cluster on port 18680 for the duration of the run.
# The fault test starts its own second cluster on port 18690.
set -euo pipefail
cd "$(dirname "$0")/../.."
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
# The gateway fault test (SIGKILL of build/tollgate, ports 18760-18765).  mk/billing.mk does not
# make test-billing depend on the gateway: bring it up to date here (a stale binary would test old
# code), unless TG_GATEWAY names one.
export TG_CTL=${TG_CTL:-build/tollgatectl}
if [ -z "${TG_GATEWAY:-}" ]; then
    export TG_GATEWAY=build${SANITIZER:+/$SANITIZER}/tollgate
    if ! make --no-print-directory "$TG_GATEWAY" >/tmp/billtest-gw-build.$$ 2>&1; then
        tail -20 /tmp/billtest-gw-build.$$ >&2
        rm -f /tmp/billtest-gw-build.$$
        echo "test_gw_kill: SKIPPED: $TG_GATEWAY does not build (above)" >&2
        exit 0
    fi
    rm -f /tmp/billtest-gw-build.$$
fi
/usr/bin/python3 tests/billing/test_gw_kill.py
