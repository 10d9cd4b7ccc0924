#!/usr/bin/env bash
# cuda_emu_backend.sh DIR OPS_BIN CPU_ENGINE — the CUDA backend emulated on the host (DIR: the op
# harness and the engine linked with engine/cuda/*.cu compiled against tests/engine/cuda_emu_inc/)
# against the CPU: the op harness (every op, NMSE per op, ids exactly) against CPU/scalar, then a
# tiny V3 bf16 model's logits on prompts of 3, 17 and 70 tokens (70: the tensor-core paths, through
# the reference cuBLAS).  Exit 1 on any difference over tolerance.
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: cuda_emu_backend.sh DIR OPS_BIN CPU_ENGINE}
ops=${2:?}
cpu=${3:?}
work=$dir/work
rm -rf "$work" && mkdir -p "$work"
TOLLGATE_ENGINE_ISA=scalar "$ops" dump "$work/ops-cpu.bin"
timeout 1200 "$dir/eng_ops_test" compare "$work/ops-cpu.bin" cuda:0
"$cpu" gen-model --arch deepseek_v3 --preset tiny --dtype bf16 --seed 41 --out "$work/v3-bf16" > /dev/null
{
    echo '[1,2,3]'
    echo '[5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21]'
    python3 -c 'print([(i * 37) % 256 for i in range(70)])'
} > "$work/prompts.txt"
TOLLGATE_ENGINE_ISA=scalar "$cpu" logits --model "$work/v3-bf16" < "$work/prompts.txt" > "$work/cpu.jsonl"
timeout 1200 "$dir/tollgate-engine" logits --model "$work/v3-bf16" --device cuda:0 < "$work/prompts.txt" > "$work/emu.jsonl"
python3 tests/engine/logits_compare.py v3-bf16-emulated-cuda "$work/cpu.jsonl" "$work/emu.jsonl" 1e-3
echo "cuda_emu_backend: ok"
