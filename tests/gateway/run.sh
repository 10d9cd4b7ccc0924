#!/usr/bin/env bash
# run.sh — the gateway's end-to-end tests on a private stack (stack.sh), then
# the stack is stopped.  Exit status: the tests'.
set -uo pipefail
cd "$(dirname "$0")/../.."
# One run at a time on this machine: the stack's ports and var/gwtest are shared.
exec 9>/tmp/tollgate-gwtest.lock
flock -w 600 9 || { echo "gwtest: another run holds /tmp/tollgate-gwtest.lock" >&2; exit 1; }
trap 'bash tests/gateway/stack.sh down' EXIT INT TERM PIPE
bash tests/gateway/stack.sh up "${1:-build/tollgate}" || exit 1
. var/gwtest/env
/usr/bin/python3 tests/gateway/test_gateway.py
rc=$?
if [ $rc -ne 0 ]; then
    echo "--- gateway log (tail)"; tail -n 30 var/gwtest/log/gateway.log
fi
bash tests/gateway/stack.sh down
trap - EXIT INT TERM PIPE
if grep -q "ERROR: AddressSanitizer\|ERROR: LeakSanitizer\|runtime error:" var/gwtest/log/gateway.log; then
    echo "gateway: sanitizer report in var/gwtest/log/gateway.log" >&2
    rc=1
fi
exit $rc
