#!/usr/bin/env bash
# run.sh — the gateway's end-to-end tests on a private stack (stack.sh), then
# the stack is stopped.  Exit status: the tests', and 1 as well when either
# gateway's log holds a sanitizer report (CI runs this under ASan/UBSan) or
# the stack does not come up.
set -euo pipefail
cd "$(dirname "$0")/../.."
# One run at a time on this machine: the stack's ports and var/gwtest are shared.
exec 9>/tmp/tollgate-gwtest.lock
flock -w 600 9 || { echo "gwtest: another run holds /tmp/tollgate-gwtest.lock" >&2; exit 1; }
trap 'bash tests/gateway/stack.sh down' EXIT INT TERM PIPE
bash tests/gateway/stack.sh up "${1:-build/tollgate}"
. var/gwtest/env
rc=0
/usr/bin/python3 tests/gateway/test_gateway.py || rc=$?
GW_BIN="${1:-build/tollgate}" /usr/bin/python3 tests/gateway/test_transport.py || rc=$?
logs="var/gwtest/log/gateway.log var/gwtest/log/gateway-short.log"
if [ "$rc" -ne 0 ]; then
    for l in $logs; do
        echo "--- $l (tail)"
        tail -n 30 "$l" || true
    done
fi
bash tests/gateway/stack.sh down
trap - EXIT INT TERM PIPE
# After `down`: a leak report is written when the gateway exits.
for l in $logs; do
    [ -f "$l" ] || { echo "gwtest: $l is missing" >&2; rc=1; continue; }
    if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:" "$l"; then
        echo "gwtest: sanitizer report in $l" >&2
        grep -m 5 -A 5 "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:" "$l" >&2 || true
        rc=1
    fi
done
exit "$rc"
