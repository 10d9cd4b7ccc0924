#!/usr/bin/env bash
# test.sh [--no-stack] TARGET... — `make test`: start the private test stack (scripts/stack.sh
# test-up), run each test target with make under a per-target timeout
# (TG_TEST_TIMEOUT seconds, default 1500), the integration tests last, stop the
# stack, print one line per target and "N passed, N failed, N skipped".
#
# A skip is a third state.  Each target gets its own $TG_SKIP_LOG; a test that
# skips appends one line there (tests/lib/tgskip.py, TG_SKIP in tg_test.h,
# tg_skip in shell).  With TG_CI=1 (.ci/run sets it) or CI=true, where everything is
# installed, a skip fails its target unless tests/expected-skips lists it.
# --no-stack (make test-unit): targets that need no servers; no stack starts.
# Exit status 1 if any target failed or timed out.
set -euo pipefail
cd "$(dirname "$0")/.."

use_stack=1
if [ "${1:-}" = --no-stack ]; then use_stack=0; shift; fi
targets=()
for t in "$@"; do [ "$t" = test-integration ] || targets+=("$t"); done
for t in "$@"; do if [ "$t" = test-integration ]; then targets+=("$t"); fi; done

declare -A result
stack_ok=1
if [ $use_stack -eq 1 ]; then
    if ! bash scripts/stack.sh test-up; then
        echo "test: the test stack did not start (see var/test/log/)" >&2
        stack_ok=0
    fi
    trap 'bash scripts/stack.sh test-down' EXIT
    if [ -f var/test/env ]; then . var/test/env; fi
fi

skipdir=var/test/skips$([ $use_stack -eq 1 ] || echo -unit)
rm -rf "$skipdir"
mkdir -p "$skipdir"
# expected_skip LINE: 0 when tests/expected-skips has a pattern (grep -E,
# first field of a non-comment line) that matches LINE.
expected_skip() {
    local pat
    while IFS=$'\t' read -r pat _; do
        case "$pat" in ''|'#'*) continue ;; esac
        if printf '%s\n' "$1" | grep -Eq -- "$pat"; then return 0; fi
    done < tests/expected-skips
    return 1
}

passed=0 failed=0 skipped=0
for t in "${targets[@]}"; do
    echo "=== $t"
    start=$(date +%s)
    if [ "$t" = test-integration ] && [ $stack_ok -eq 0 ]; then
        result[$t]="FAIL (no stack)"
        failed=$((failed + 1))
        continue
    fi
    export TG_SKIP_LOG="$PWD/$skipdir/$t"
    : > "$TG_SKIP_LOG"
    rc=0
    timeout -k 30 "${TG_TEST_TIMEOUT:-1500}" make --no-print-directory "$t" || rc=$?
    secs=$(($(date +%s) - start))
    nskip=$(wc -l < "$TG_SKIP_LOG")
    unexpected=0
    if [ "$nskip" -gt 0 ]; then
        echo "--- $t skipped $nskip:"
        while IFS= read -r line; do
            if { [ "${TG_CI:-0}" = 1 ] || [ "${CI:-}" = true ]; } && ! expected_skip "$line"; then
                echo "    $line   (not in tests/expected-skips: a failure under CI)"
                unexpected=$((unexpected + 1))
            else
                echo "    $line"
            fi
        done < "$TG_SKIP_LOG"
    fi
    skipped=$((skipped + nskip))
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        result[$t]="FAIL (timed out after ${secs}s)"
        failed=$((failed + 1))
    elif [ $rc -ne 0 ]; then
        result[$t]="FAIL (${secs}s)"
        failed=$((failed + 1))
    elif [ $unexpected -gt 0 ]; then
        result[$t]="FAIL ($unexpected unexpected skip(s), ${secs}s)"
        failed=$((failed + 1))
    elif [ "$nskip" -gt 0 ]; then
        result[$t]="ok with $nskip skip(s) (${secs}s)"
        passed=$((passed + 1))
    else
        result[$t]="ok (${secs}s)"
        passed=$((passed + 1))
    fi
done
unset TG_SKIP_LOG

echo
echo "=== summary"
[ $stack_ok -eq 1 ] || echo "test stack: FAIL"
for t in "${targets[@]}"; do printf '%-28s %s\n' "$t" "${result[$t]}"; done
echo "$passed passed, $failed failed, $skipped skipped (test targets: ${#targets[@]}; skips: single tests)"
if [ $failed -eq 0 ] && [ $stack_ok -eq 1 ]; then exit 0; fi
exit 1
