#!/usr/bin/env bash
# gpu-check.sh [OUT] — everything issue 12 asks of a GPU, in one run of about 5-8 minutes on
# one H100/H200 (run from the repository root; OUT defaults to $OUT, else var/gpu-check):
#   1. build: make CUDA=1 (nvcc, sm_90 + PTX) — the engine and the CUDA test binaries
#   2. op harness CUDA vs CPU (every op, NMSE per op) and whole-model logits CUDA vs CPU for
#      DeepSeek-V3 (bf16, fp8, f32), DeepSeek-V2 (f16) and Mixtral (bf16) tiny models
#      (tests/engine/cuda_test.sh)
#   2b. serve --device cuda:0 vs --device cpu: 12 concurrent greedy chat requests on the demo model
#      (continuous batching, prefix-cache hits) (scripts/gpu/serve_check.py)
#   3. transformers: tiny random DeepseekV3ForCausalLM / MixtralForCausalLM built and saved by
#      transformers' own code; engine logits and greedy tokens on cpu and cuda:0 against it
#      (scripts/gpu/hf_check.py)
#   4. a DeepSeek-V2-Lite-shaped model (its exact layer shapes, 8 of its 27 layers, random bf16):
#      logits CUDA vs CPU, then decode tokens/s at batch 1 and 64 against the roofline of the
#      bytes read per step at the measured device-to-device copy bandwidth (bench/cuda)
# How a session with a device runs it (the tokenizer is fetched at build time, which the device
# machine cannot do, so it travels with the tree):
#   run(command="bash scripts/gpu-check.sh \"$OUT\"", carry=["build/data/deepseek-v3-tokenizer"], timeout_s=560)
# Each stage's output goes to OUT/<stage>.log; OUT/summary.txt has one line per stage and the
# figures; exit 1 if any stage failed.  Stages after a failed one still run (except after a
# failed build).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-var/gpu-check}}
mkdir -p "$out"
summary=$out/summary.txt
: > "$summary"
J=$(nproc 2>/dev/null || echo 8)
T0=$(date +%s)
status=0
say() { echo "$*" | tee -a "$summary"; }
stage() { # stage NAME TIMEOUT CMD...: run, log, record ok/FAIL and seconds
    local name=$1 lim=$2
    shift 2
    local s=$(date +%s) rc=0
    echo "=== $name: $*" > "$out/$name.log"
    timeout -k 10 "$lim" "$@" >> "$out/$name.log" 2>&1 || rc=$?
    local d=$(($(date +%s) - s))
    if [ $rc -eq 0 ] && grep -q "^SKIPPED" "$out/$name.log"; then rc=3; echo "(a skip: this machine was meant to have a GPU)" >> "$out/$name.log"; fi
    if [ $rc -eq 0 ]; then say "$name: ok (${d}s)"; else say "$name: FAIL rc=$rc (${d}s), see $name.log"; status=1; fi
    tail -n 40 "$out/$name.log"
    return $rc
}

say "gpu-check $(date -u +%FT%TZ) at $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
say "nvcc: $(${CUDA_HOME:-/usr/local/cuda}/bin/nvcc --version 2>/dev/null | tail -1)"

E=build/obj/tests/engine
stage build 420 make -j"$J" CUDA=1 build/tollgate-engine $E/eng_ops_test $E/cuda/eng_ops_test \
    $E/cuda/tollgate-engine $E/cuda/eng_gpu_bench || { say "build failed: nothing else runs"; exit 1; }

# 2. op by op and tiny whole models, CUDA vs CPU
CUDA_TEST_ENGINE_HAS_CUDA=1 stage ops-and-logits 240 bash tests/engine/cuda_test.sh $E/cuda $E/eng_ops_test build/tollgate-engine
grep -E "NMSE|ids,|worst logit|over tolerance" "$out/ops-and-logits.log" | sed 's/^/  /' >> "$summary"

# 2b. continuous batching and the prefix cache through the CUDA backend (the demo model, the real
#     tokenizer: carry build/data/deepseek-v3-tokenizer to a machine that cannot fetch it)
if [ -f build/data/deepseek-v3-tokenizer/tokenizer.json ]; then
    demo=build/gpu-check/demo
    [ -f $demo/config.json ] || build/tollgate-engine gen-model --arch deepseek_v3 --preset demo --out $demo \
        --tokenizer build/data/deepseek-v3-tokenizer > "$out/gen-demo.log" 2>&1
    stage serve 300 bash -c "cd $out && python3 $PWD/scripts/gpu/serve_check.py $PWD/build/tollgate-engine $PWD/$demo 18500"
    grep -E "requests in|greedy answers|differs" "$out/serve.log" | sed 's/^/  /' >> "$summary"
else
    say "serve: FAIL: not run, no build/data/deepseek-v3-tokenizer (run with carry: build/data/deepseek-v3-tokenizer)"
    status=1
fi

# 3. transformers as the independent reference
stage transformers 300 python3 scripts/gpu/hf_check.py build/tollgate-engine "$out/hf" cpu cuda:0
grep -E "worst logit|FAIL|transformers " "$out/transformers.log" | sed 's/^/  /' >> "$summary"

# 4. V2-Lite shape: logits CUDA vs CPU, then the decode benchmark
layers=${LITE_LAYERS:-8}
lite=build/gpu-check/lite$layers
if [ ! -f $lite/config.json ]; then
    stage gen-lite 240 build/tollgate-engine gen-model --arch deepseek_v2 --preset lite --layers $layers --dtype bf16 --seed 5 --out $lite
fi
if [ -f $lite/config.json ]; then
    printf '[1,2,3]\n[100,2000,30000,400,5,6,70,800,9000,10000,11,12,13,14,15,16,17]\n' > "$out/lite-prompts.txt"
    stage lite-logits 240 bash -c "build/tollgate-engine logits --model $lite < $out/lite-prompts.txt > $out/lite.cpu &&
        build/tollgate-engine logits --model $lite --device cuda:0 < $out/lite-prompts.txt > $out/lite.cuda &&
        python3 tests/engine/logits_compare.py v2-lite$layers-bf16 $out/lite.cpu $out/lite.cuda 1e-3"
    grep -E "worst logit" "$out/lite-logits.log" | sed 's/^/  /' >> "$summary"
    stage bench 300 $E/cuda/eng_gpu_bench --model $lite --device cuda:0 --batch 1,64 --steps 32 --prompt 32
    grep -E "copy bandwidth|^batch|^model" "$out/bench.log" | sed 's/^/  /' >> "$summary"
    grep '^{' "$out/bench.log" > "$out/bench.json" || true
    say "bench command: $E/cuda/eng_gpu_bench --model $lite --device cuda:0 --batch 1,64 --steps 32 --prompt 32"
    say "  (model: build/tollgate-engine gen-model --arch deepseek_v2 --preset lite --layers $layers --dtype bf16 --seed 5)"
fi
say "total $(($(date +%s) - T0)) s; $([ $status -eq 0 ] && echo 'all stages ok' || echo 'some stage FAILED')"
exit $status
