#!/usr/bin/env bash
# test.sh TARGET... — `make test`: start the private test stack (scripts/stack.sh
# test-up), run each test target with make, the integration tests last, stop
# the stack, print one summary line per target.  Exit status 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."

targets=()
for t in "$@"; do [ "$t" = test-integration ] || targets+=("$t"); done
for t in "$@"; do [ "$t" = test-integration ] && targets+=("$t"); done

declare -A result
stack_ok=1
if ! bash scripts/stack.sh test-up; then
    echo "test: the test stack did not start (see var/test/log/)" >&2
    stack_ok=0
fi
trap 'bash scripts/stack.sh test-down' EXIT
[ -f var/test/env ] && . var/test/env

fails=0
for t in "${targets[@]}"; do
    echo "=== $t"
    start=$(date +%s)
    if [ "$t" = test-integration ] && [ $stack_ok -eq 0 ]; then
        result[$t]="FAIL (no stack)"
        fails=$((fails + 1))
        continue
    fi
    if make --no-print-directory "$t"; then
        result[$t]="ok ($(($(date +%s) - start))s)"
    else
        result[$t]="FAIL ($(($(date +%s) - start))s)"
        fails=$((fails + 1))
    fi
done

echo
echo "=== summary"
[ $stack_ok -eq 1 ] || echo "test stack: FAIL"
for t in "${targets[@]}"; do printf '%-28s %s\n' "$t" "${result[$t]}"; done
if [ $fails -eq 0 ] && [ $stack_ok -eq 1 ]; then
    echo "all ${#targets[@]} test targets passed"
    exit 0
fi
echo "$fails test target(s) failed"
exit 1
