#!/usr/bin/env bash
# gpu-prep.sh — run on the session's own machine (nvcc, no GPU) right before a device run of
# scripts/gpu-check.sh: the device machine is a CUDA/PyTorch image that may lack this project's
# build dependencies (libevent, cJSON, PCRE2, OpenSSL headers) and cannot install any, so the
# CUDA binaries are built here and travel with the shared libraries they need:
#   build/gpu-carry/bin/   tollgate-engine, eng_ops_test, eng_gpu_bench (CUDA backend linked in)
#   build/gpu-carry/lib/   every shared library they load except the C/C++ runtime and cuBLAS
#                          (libcudart travels: 13.x runs on any 13.x driver; cuBLAS is 600 MB,
#                          gpu-check.sh finds the device's own)
#   build/gpu-carry/COMMIT the commit (and "dirty") they were built from
# and the tokenizer the serve stage needs (build/data/deepseek-v3-tokenizer, fetched at build
# time here; the device machine reaches nothing).  Then, from the session:
#   run(command="bash scripts/gpu-check.sh \"$OUT\"",
#       carry=["build/gpu-carry", "build/data/deepseek-v3-tokenizer"], timeout_s=590)
# gpu-check.sh uses the carried binaries when they load there, else builds with make CUDA=1.
set -euo pipefail
cd "$(dirname "$0")/.."
J=${J:-2}
E=build/obj/tests/engine
make -j"$J" CUDA=1 $E/cuda/tollgate-engine $E/cuda/eng_ops_test $E/cuda/eng_gpu_bench tokenizer-data
C=build/gpu-carry
rm -rf "$C"
mkdir -p "$C/bin" "$C/lib"
cp $E/cuda/tollgate-engine $E/cuda/eng_ops_test $E/cuda/eng_gpu_bench "$C/bin/"
for b in "$C"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
    while read -r l; do
        case $(basename "$l") in
        libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | ld-linux* | libstdc++.so* | libgcc_s.so* | \
            libcublas.so* | libcublasLt.so*) ;;
        *) cp -L "$l" "$C/lib/" ;;
        esac
    done
{
    git rev-parse HEAD
    git status --porcelain --untracked-files=no | grep -q . && echo dirty || true
} > "$C/COMMIT"
echo "gpu-prep: $(du -sh "$C" | cut -f1) in $C (carry limit 64 MiB with the tree), built from $(tr '\n' ' ' < "$C/COMMIT")"
ls "$C/bin" "$C/lib"
