#!/usr/bin/env bash
# A plain `pip install .` on a machine without any C compiler: it must install (the native
# kernels are optional, llama.cpp is not pulled), and `edgerun run` must work on the Numba
# kernels with one clear warning. The compilers are hidden: CC/CXX point at /bin/false and
# PATH is a directory of links to every program except the C/C++ compilers.
#
#   bash scripts/check_nocompiler_install.sh      (uses .venv/bin/python to write a test model)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEV_PY=${DEV_PY:-$ROOT/.venv/bin/python}
PY=${PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# PATH without compilers
mkdir "$tmp/bin"
for d in /usr/local/bin /usr/bin /bin; do
    [ -d "$d" ] || continue
    for f in "$d"/*; do
        name=$(basename "$f")
        case "$name" in
            cc|c++|c89|c99|cpp|gcc|g++|tcc|clang|clang++|*-gcc|*-gcc-[0-9]*|*-g++|*-g++-[0-9]*|gcc-[0-9]*|g++-[0-9]*|clang-[0-9]*|cc1*|*-cc)
                continue ;;
        esac
        [ -e "$tmp/bin/$name" ] || ln -s "$f" "$tmp/bin/$name"
    done
done
export CC=/bin/false CXX=/bin/false PATH="$tmp/bin"
for c in gcc cc g++ c++ clang; do
    if command -v "$c" >/dev/null 2>&1; then echo "FAIL: $c is still on PATH" >&2; exit 1; fi
done

"$PY" -m venv "$tmp/venv"
start=$(date +%s)
if ! "$tmp/venv/bin/python" -m pip install -q "$ROOT" > "$tmp/pip.log" 2>&1; then
    cat "$tmp/pip.log" >&2
    echo "FAIL: pip install . without a compiler" >&2
    exit 1
fi
echo "installed without a compiler in $(( $(date +%s) - start )) s"
if "$tmp/venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    echo "FAIL: the plain install pulled llama-cpp-python" >&2; exit 1
fi

# A small synthetic model (random weights, SentencePiece vocabulary), written by the dev venv.
"$DEV_PY" - "$tmp/m.gguf" <<'EOF'
import sys
from tests.synth import bench_gpu_module
b = bench_gpu_module()
shape = b.Shape("nocc", "llama", 2, 64, 128, 4, 2, 300, ctx=256)
b.write_synthetic_gguf(sys.argv[1], shape, qtype=8, seed=3, exact=True)
EOF

cd "$tmp"  # away from the checkout: the installed package is the one imported
EDGERUN_MODELS="$tmp" ./venv/bin/edgerun run -m "$tmp/m.gguf" -p "t5 t7 t9" -n 2 --temp 0 --json \
    > out.json 2> err.txt || { cat err.txt >&2; echo "FAIL: edgerun run" >&2; exit 1; }
cat out.json
python_out=$(./venv/bin/python -c "import json; d = json.load(open('out.json')); \
print(d['completion_tokens'], d['backend'])")
[ "$python_out" = "2 numba" ] || { echo "FAIL: expected 2 tokens on numba, got '$python_out'" >&2; exit 1; }
n_warn=$(grep -ci "numba" err.txt || true)
[ "$n_warn" = "1" ] || { cat err.txt >&2; echo "FAIL: expected one warning line naming Numba" >&2; exit 1; }
echo "warning: $(grep -i numba err.txt)"
echo "OK: installed and ran without a compiler"
