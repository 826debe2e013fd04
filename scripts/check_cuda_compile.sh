#!/usr/bin/env bash
# Compile every CUDA source under native/cuda with nvcc for sm_80, sm_89 and sm_90; fail on any error.
# Usage: scripts/check_cuda_compile.sh [--ptx]
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
if ! command -v "$NVCC" >/dev/null 2>&1; then
    echo "check_cuda_compile: nvcc not found" >&2
    exit 2
fi
mode=(-c)
ext=o
if [[ "${1:-}" == "--ptx" ]]; then mode=(--ptx); ext=ptx; fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
fail=0
for f in native/cuda/*.cu; do
    for arch in 80 89 90; do
        if "$NVCC" -arch=sm_$arch -std=c++17 -Werror all-warnings "${mode[@]}" "$f" \
            -o "$out/$(basename "$f" .cu).sm_$arch.$ext"; then
            echo "ok   $f sm_$arch"
        else
            echo "FAIL $f sm_$arch" >&2
            fail=1
        fi
    done
done
exit $fail
