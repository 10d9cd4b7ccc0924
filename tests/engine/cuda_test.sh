#!/usr/bin/env bash
# cuda_test.sh CUDA_DIR OPS_BIN CPU_ENGINE — the CUDA backend as `make test` sees it.
#   CUDA_DIR/tollgate-engine, CUDA_DIR/eng_ops_test: built with the CUDA backend linked in
#   OPS_BIN: the CPU-only op harness; CPU_ENGINE: the plain (CPU-only) engine
# Always: the CPU-only engine refuses --device cuda:0 naming the missing backend.
# No GPU here: --device cuda:0 (logits and serve) must exit 1 with "no CUDA device"; the
#   comparisons are then a recorded skip (tests/expected-skips lists it for GPU-less CI).
# A GPU here: the op harness CUDA vs CPU (NMSE per op) and whole-model logits CUDA vs CPU
#   for every architecture and dtype (worst |diff| <= 1e-3 of the logits' scale, same argmax).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/lib/tgskip.sh
# under ASan the CUDA runtime needs the shadow gap unprotected (harmless otherwise)
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}protect_shadow_gap=0"
dir=${1:?usage: cuda_test.sh CUDA_DIR OPS_BIN CPU_ENGINE}
ops=${2:?}
cpu=${3:?}
eng=$dir/tollgate-engine
work=${CUDA_TEST_WORK:-$dir/work}
fail() { echo "cuda_test: FAIL: $*" >&2; exit 1; }
rm -rf "$work" && mkdir -p "$work"

"$cpu" gen-model --arch deepseek_v3 --preset tiny --dtype bf16 --seed 41 --out "$work/v3-bf16" 2>/dev/null
if [ "${CUDA_TEST_ENGINE_HAS_CUDA:-0}" = 1 ]; then # scripts/gpu-check.sh: CPU_ENGINE is make CUDA=1's
    echo "cuda_test: $cpu is a CUDA build (make CUDA=1): the CPU-only build's refusal is not checked here"
else
    err=$(echo '[1,2]' | "$cpu" logits --model "$work/v3-bf16" --device cuda:0 2>&1 >/dev/null) &&
        fail "a CPU-only build accepted --device cuda:0" || true
    echo "$err" | grep -q "no CUDA backend" || fail "CPU-only build, --device cuda:0: unclear message: $err"
    echo "cuda_test: CPU-only build, --device cuda:0: $err"
fi

rc=0
err=$(echo '[1,2]' | "$eng" logits --model "$work/v3-bf16" --device cuda:0 2>&1 >/dev/null) || rc=$?
if [ $rc -ne 0 ]; then
    echo "$err" | grep -q "no CUDA device" || fail "--device cuda:0 failed without saying why: $err"
    [ $rc -eq 1 ] || fail "--device cuda:0 without a GPU: exit $rc, want 1"
    mkdir -p "$work/served" && cp "$work/v3-bf16"/* "$work/served/"
    cp build/data/deepseek-v3-tokenizer/tokenizer.json build/data/deepseek-v3-tokenizer/tokenizer_config.json "$work/served/"
    rc2=0
    err2=$(timeout 60 "$eng" serve --model "$work/served" --device cuda:0 --listen 127.0.0.1:1 2>&1 >/dev/null) || rc2=$?
    [ $rc2 -ne 0 ] && [ $rc2 -ne 124 ] || fail "serve --device cuda:0 without a GPU: exit $rc2"
    echo "$err2" | grep -q "no CUDA device" || fail "serve --device cuda:0: unclear message: $err2"
    echo "cuda_test: the CUDA backend compiled and linked; --device cuda:0 without a GPU: $err"
    tg_skip "engine cuda:0" "no CUDA device present ($err): op harness and logits CUDA vs CPU not run"
    exit 0
fi

# a GPU: op by op, then whole models; every comparison runs, the first failure is the exit status
bad=0
# the scalar level: the reference arithmetic (avx512/amx run int8 weights int8 x int8 on VNNI)
TOLLGATE_ENGINE_ISA=scalar "$ops" dump "$work/ops-cpu.bin" || bad=1
"$dir/eng_ops_test" compare "$work/ops-cpu.bin" cuda:0 || { echo "cuda_test: FAIL: op harness CUDA vs CPU"; bad=1; }
"$cpu" gen-model --arch deepseek_v3 --preset tiny --dtype fp8 --seed 42 --out "$work/v3-fp8" 2>/dev/null
"$cpu" gen-model --arch deepseek_v3 --preset tiny --dtype f32 --seed 43 --out "$work/v3-f32" 2>/dev/null
"$cpu" gen-model --arch deepseek_v2 --preset tiny --dtype f16 --seed 44 --out "$work/v2-f16" 2>/dev/null
"$cpu" gen-model --arch mixtral --preset tiny --dtype bf16 --seed 45 --out "$work/mixtral-bf16" 2>/dev/null
python3 -c '
import random
r = random.Random(7)
for n in (1, 2, 7, 16, 17, 40, 100):
    print([r.randrange(0, 256) for _ in range(n)])
' > "$work/prompts.txt"
for m in v3-bf16 v3-fp8 v3-f32 v2-f16 mixtral-bf16; do
    if "$cpu" logits --model "$work/$m" < "$work/prompts.txt" > "$work/$m.cpu" &&
        "$eng" logits --model "$work/$m" --device cuda:0 < "$work/prompts.txt" > "$work/$m.cuda" &&
        python3 tests/engine/logits_compare.py "$m" "$work/$m.cpu" "$work/$m.cuda" 1e-3; then
        :
    else
        echo "cuda_test: FAIL: $m logits CUDA vs CPU"
        bad=1
    fi
done
[ $bad -eq 0 ] || fail "some comparison failed (above)"
echo "cuda_test: ok"
