#!/usr/bin/env bash
# gpu-check.sh [OUT] — everything issue 12 asks of a GPU, in one run of about 5-8 minutes on
# one H100/H200 (run from the repository root; OUT defaults to $OUT, else var/gpu-check):
#   1. binaries: the ones scripts/gpu-prep.sh built on the session's machine and carried
#      (build/gpu-carry: the device image may lack libevent/cJSON/PCRE2/OpenSSL headers and can
#      install nothing), when they load there; else make CUDA=1 there
#   2. op harness CUDA vs CPU (every op, NMSE per op, sampled ids exactly) and whole-model logits
#      CUDA vs CPU for DeepSeek-V3 (bf16, fp8, f32), DeepSeek-V2 (f16) and Mixtral (bf16) tiny
#      models (tests/engine/cuda_test.sh); the op harness again with TOLLGATE_CUDA_TC=0
#   3. a DeepSeek-V2-Lite-shaped model (its exact layer shapes, 8 of its 27 layers, random bf16):
#      logits CUDA vs CPU, then decode tokens/s at batch 1 and 64 against the roofline of the
#      bytes read per step at the measured device-to-device copy bandwidth (bench/cuda)
#   4. transformers: tiny random DeepseekV3ForCausalLM / MixtralForCausalLM built and saved by
#      transformers' own code; engine logits and greedy tokens on cpu and cuda:0 against it
#      (scripts/gpu/hf_check.py)
#   5. serve --device cuda:0 vs --device cpu: concurrent greedy and seeded sampled chat requests
#      on the demo model (continuous batching, prefix-cache hits, sampling on the device)
#      (scripts/gpu/serve_check.py)
# How a session with a device runs it:
#   here:   bash scripts/gpu-prep.sh
#   device: run(command="bash scripts/gpu-check.sh \"$OUT\"",
#               carry=["build/gpu-carry", "build/data/deepseek-v3-tokenizer"], timeout_s=590)
# A failed stage is said loudly (FAIL in the summary, the end of its log on stdout) and the later
# stages still run; only "no binaries" ends the run early.  Every stage's time limit is cut to
# what is left of GPU_CHECK_BUDGET (540 s), so the run ends, summary printed, inside one device
# call.  Only a few files come back from a device run (8 at most), so models and scratch go to
# GPU_CHECK_WORK (var/gpu-check-work) and OUT gets: summary.txt (one line per stage and the
# figures), logs.txt (the end of every stage's log), bench.json, hf_check.json.  The summary is
# also the last thing printed.  Exit 1 if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-var/gpu-check}}
work=${GPU_CHECK_WORK:-var/gpu-check-work}
BUDGET=${GPU_CHECK_BUDGET:-540}
mkdir -p "$out" "$work"
work=$(cd "$work" && pwd) # absolute: stages cd elsewhere
PY=${PYTHON:-python3}     # the device image's python3 has torch and transformers
summary=$out/summary.txt
logs=$out/logs.txt
: > "$summary"
: > "$logs"
T0=$(date +%s)
status=0
say() { echo "$*" | tee -a "$summary"; }
# stage NAME TIMEOUT CMD...: run with its log in $work/NAME.log; ok / FAIL in the summary
stage() {
    local name=$1 lim=$2
    shift 2
    local s left rc=0 d
    s=$(date +%s)
    left=$((BUDGET - (s - T0) - 10))
    if [ "$left" -lt 15 ]; then
        say "$name: FAIL: not run, the time budget of ${BUDGET}s is spent"
        status=1
        return 99
    fi
    [ "$lim" -gt "$left" ] && lim=$left
    echo "=== $name (limit ${lim}s): $*" > "$work/$name.log"
    timeout -k 10 "$lim" "$@" >> "$work/$name.log" 2>&1 || rc=$?
    d=$(($(date +%s) - s))
    if [ $rc -eq 0 ] && grep -q "^SKIPPED" "$work/$name.log"; then
        rc=3
        echo "(a skip: this machine was meant to have a GPU)" >> "$work/$name.log"
    fi
    if [ $rc -eq 0 ]; then
        say "$name: ok (${d}s)"
    elif [ $rc -eq 124 ] || [ $rc -eq 137 ]; then
        say "$name: FAIL: timed out after ${lim}s (see logs.txt)"
        status=1
    else
        say "$name: FAIL rc=$rc (${d}s), see logs.txt"
        status=1
    fi
    { echo; echo "######## $name: rc=$rc, ${d}s (the last 300 lines)"; tail -n 300 "$work/$name.log"; } >> "$logs"
    echo "--- $name: the end of its log"
    tail -n 12 "$work/$name.log"
    return $rc
}
# figures from a stage's log into the summary
figures() { grep -E "$2" "$work/$1.log" 2>/dev/null | head -n "${3:-60}" | sed 's/^/  /' >> "$summary"; }

say "gpu-check $(date -u +%FT%TZ) at $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)'), budget ${BUDGET}s"
say "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
say "nvcc: $(${CUDA_HOME:-/usr/local/cuda}/bin/nvcc --version 2>/dev/null | tail -1)"

# cuBLAS (never carried): the toolkit's, else the one PyTorch's wheels bring
cublas_dir=
for d in ${CUDA_HOME:-/usr/local/cuda}/lib64 /usr/local/cuda*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib; do
    if [ -e "$d/libcublas.so.13" ]; then cublas_dir=$d; break; fi
done
if [ -z "$cublas_dir" ]; then
    cublas_dir=$($PY -c 'import glob, site, os
for p in site.getsitepackages():
    for f in glob.glob(os.path.join(p, "nvidia", "*", "lib", "libcublas.so.13")) + glob.glob(os.path.join(p, "nvidia", "cublas", "lib", "libcublas.so.13")):
        print(os.path.dirname(f)); raise SystemExit' 2>/dev/null)
fi
say "cublas: ${cublas_dir:-not found (the binaries fail to load unless their rpath finds it)}"

# 1. binaries: carried, else built here
C=build/gpu-carry
bins=
if [ -x $C/bin/tollgate-engine ] && [ -x $C/bin/eng_ops_test ] && [ -x $C/bin/eng_gpu_bench ]; then
    export LD_LIBRARY_PATH=$PWD/$C/lib${cublas_dir:+:$cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    missing=$(ldd $C/bin/* 2>&1 | grep "not found" | sort -u)
    if [ -z "$missing" ] && { $C/bin/tollgate-engine 2>&1 || true; } | grep -q "^usage"; then
        bins=$PWD/$C/bin
        built=$(head -1 $C/COMMIT 2>/dev/null || echo ?)
        here=$(git rev-parse HEAD 2>/dev/null || echo ?)
        say "binaries: carried ($C, built from $(tr '\n' ' ' < $C/COMMIT 2>/dev/null))"
        [ "$built" = "$here" ] || say "  WARNING: the tree is at $here, the carried binaries at $built"
    else
        say "binaries: the carried ones do not load here: ${missing:-tollgate-engine does not start}; building"
    fi
fi
if [ -z "$bins" ]; then
    E=build/obj/tests/engine
    export LD_LIBRARY_PATH=${cublas_dir}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    if stage build 300 make -j"$(nproc 2>/dev/null || echo 8)" CUDA=1 $E/cuda/tollgate-engine $E/cuda/eng_ops_test \
        $E/cuda/eng_gpu_bench; then
        bins=$PWD/$E/cuda
    else
        say "no binaries (none carried that load, and the build failed): nothing else can run"
        echo; echo "=== summary"; cat "$summary"
        exit 1
    fi
fi
ENG=$bins/tollgate-engine

# 2. op by op and tiny whole models, CUDA vs CPU (the CPU side: the same binaries on --device cpu)
CUDA_TEST_ENGINE_HAS_CUDA=1 CUDA_TEST_WORK=$work/cuda-test \
    stage ops-and-logits 200 bash tests/engine/cuda_test.sh "$bins" "$bins/eng_ops_test" "$ENG"
figures ops-and-logits "against|sample/|worst logit|over tolerance|FAIL" 60
# the same ops with tensor cores off (bf16 matmuls and experts on sgemm / FMA kernels): tells a
# tensor-core failure from any other
if [ -f $work/cuda-test/ops-cpu.bin ]; then
    stage ops-no-tc 60 env TOLLGATE_CUDA_TC=0 "$bins/eng_ops_test" compare $work/cuda-test/ops-cpu.bin cuda:0
    figures ops-no-tc "over tolerance|FAIL"
fi

# 3. V2-Lite shape: logits CUDA vs CPU, then the decode benchmark
layers=${LITE_LAYERS:-8}
lite=$work/lite$layers
[ -f $lite/config.json ] ||
    stage gen-lite 180 "$ENG" gen-model --arch deepseek_v2 --preset lite --layers $layers --dtype bf16 --seed 5 --out $lite
if [ -f $lite/config.json ]; then
    { # 3 and 17 tokens (experts on the FMA kernels), 100 (600 routed pairs: bf16 experts on tensor cores)
        printf '[1,2,3]\n[100,2000,30000,400,5,6,70,800,9000,10000,11,12,13,14,15,16,17]\n'
        $PY -c 'print([(i * 7919) % 102400 for i in range(1, 101)])'
    } > "$work/lite-prompts.txt"
    stage lite-logits 180 bash -c "'$ENG' logits --model $lite < $work/lite-prompts.txt > $work/lite.cpu &&
        '$ENG' logits --model $lite --device cuda:0 < $work/lite-prompts.txt > $work/lite.cuda &&
        $PY tests/engine/logits_compare.py v2-lite$layers-bf16 $work/lite.cpu $work/lite.cuda 1e-3"
    figures lite-logits "worst logit|FAIL"
    stage bench 180 "$bins/eng_gpu_bench" --model $lite --device cuda:0 --batch 1,64 --steps 32 --prompt 32
    figures bench "copy bandwidth|^batch|^model|roofline"
    grep '^{' "$work/bench.log" > "$out/bench.json" 2>/dev/null || true
    say "bench command: eng_gpu_bench --model $lite --device cuda:0 --batch 1,64 --steps 32 --prompt 32"
    say "  (model: tollgate-engine gen-model --arch deepseek_v2 --preset lite --layers $layers --dtype bf16 --seed 5)"
else
    say "lite-logits, bench: FAIL: not run, no model (gen-lite failed)"
    status=1
fi

# 4. transformers as the independent reference
stage transformers 200 $PY scripts/gpu/hf_check.py "$ENG" "$work/hf" cpu cuda:0
figures transformers "worst logit|FAIL|^transformers |Error"
cp "$work/hf/hf_check.json" "$out/" 2>/dev/null || true

# 5. continuous batching, the prefix cache and sampling through the CUDA backend (the demo
#    model with the real tokenizer, carried: the device machine cannot fetch it)
if [ -f build/data/deepseek-v3-tokenizer/tokenizer.json ]; then
    demo=$work/demo
    [ -f $demo/config.json ] || "$ENG" gen-model --arch deepseek_v3 --preset demo --out $demo \
        --tokenizer build/data/deepseek-v3-tokenizer > "$work/gen-demo.log" 2>&1
    stage serve 150 bash -c "cd $work && $PY $PWD/scripts/gpu/serve_check.py '$ENG' $demo ${GPU_CHECK_PORT:-18500}"
    figures serve "requests in|answers equal|differs|FAIL"
else
    say "serve: FAIL: not run, no build/data/deepseek-v3-tokenizer (carry it: see the top of this script)"
    status=1
fi

say "total $(($(date +%s) - T0)) s; $([ $status -eq 0 ] && echo 'all stages ok' || echo 'some stage FAILED')"
echo
echo "=== summary ($out/summary.txt)"
cat "$summary"
exit $status
