#!/usr/bin/env bash
# Build dist/edgerun, a one-file binary (PyInstaller): Python, edgerun, its native kernels and
# the Textual CSS inside; no Python needed where it runs.
#
#   bash scripts/build_binary.sh                  # dist/edgerun
#   bash scripts/build_binary.sh --with-model NAME   # dist/edgerun-NAME, the model (catalog name
#                                                    # or .gguf path) inside, the default -m
#   bash scripts/build_binary.sh --slim           # dist/edgerun-slim: no Numba (starts faster;
#                                                    # needs the native kernels, refuses to build without)
#
# Uses .venv (made by scripts/test.sh or `pip install -e .`); installs edgerun[binary] into it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
model=""
slim=0
while [ $# -gt 0 ]; do
    case "$1" in
        --with-model) model=${2:?--with-model needs a model name or path}; shift 2 ;;
        --with-model=*) model=${1#*=}; shift ;;
        --slim) slim=1; shift ;;
        -h|--help) sed -n 2,11p "$0"; exit 0 ;;
        *) echo "build_binary.sh: unknown option '$1'" >&2; exit 2 ;;
    esac
done
"$PY" -c "import PyInstaller" 2>/dev/null || "$PY" -m pip install -q -e '.[binary]'
if ! "$PY" -c "import edgerun._native" 2>/dev/null; then
    [ "$slim" = 1 ] && { echo "build_binary.sh: --slim needs the native kernels (pip install -e . with a C compiler)" >&2; exit 2; }
    echo "build_binary.sh: warning: native kernels not built; the binary will use the Numba kernels" >&2
fi
unset EDGERUN_EMBED_MODEL EDGERUN_EMBED_NAME
export EDGERUN_BINARY_NAME=edgerun EDGERUN_SLIM=$slim
[ "$slim" = 1 ] && EDGERUN_BINARY_NAME=edgerun-slim
if [ -n "$model" ]; then
    path=$("$PY" -c "import sys; from edgerun.catalog import resolve_model; print(resolve_model(sys.argv[1]))" \
           "$model")
    export EDGERUN_EMBED_MODEL=$path
    EDGERUN_BINARY_NAME=$EDGERUN_BINARY_NAME-$(basename "$model" .gguf)
    case "$model" in *.gguf) ;; *) export EDGERUN_EMBED_NAME=$model ;; esac
    echo "embedding $path"
fi
start=$(date +%s)
"$PY" -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
    packaging/edgerun.spec
echo "built dist/$EDGERUN_BINARY_NAME ($(du -h "dist/$EDGERUN_BINARY_NAME" | cut -f1)) in $(( $(date +%s) - start )) s"
