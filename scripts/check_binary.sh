#!/usr/bin/env bash
# Check dist/edgerun (scripts/build_binary.sh) from a clean environment: no venv, no Python on
# PATH beyond the system's, a fresh HOME and models directory.
#   --version, list, run --json giving the venv install's tokens,
#   serve answering /health and one streamed chat completion, chat opening in tmux and
#   quitting on Ctrl+Q.
# Prints start-up to first token of the binary and of the venv install.
#
#   bash scripts/check_binary.sh [MODEL.gguf]   (default: qwen2.5-coder-0.5b-instruct from
#                                                 $EDGERUN_MODELS or models/, else a synthetic one)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BIN=${EDGERUN_BIN:-$ROOT/dist/edgerun}  # EDGERUN_BIN=dist/edgerun-slim checks another build
VENV_PY=${DEV_PY:-$ROOT/.venv/bin/python}
[ -x "$BIN" ] || { echo "FAIL: $BIN not built (bash scripts/build_binary.sh)" >&2; exit 1; }
tmp=$(mktemp -d)
srv=""
cleanup() {
    [ -n "$srv" ] && kill "$srv" 2>/dev/null || true
    tmux kill-session -t edgerun-bin-check 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p "$tmp/home" "$tmp/models"
model=${1:-}
if [ -z "$model" ]; then
    for d in "${EDGERUN_MODELS:-}" "$ROOT/models"; do
        [ -n "$d" ] && [ -f "$d/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ] && model=$d/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf \
            && break
    done
fi
if [ -z "$model" ]; then
    model=$tmp/synth.gguf
    "$VENV_PY" - "$model" <<'EOF'
import sys
from tests.synth import bench_gpu_module
b = bench_gpu_module()
b.write_synthetic_gguf(sys.argv[1], b.Shape("bin", "llama", 2, 64, 128, 4, 2, 300, ctx=512), qtype=8, seed=3,
                       exact=True)
EOF
fi
echo "model: $model"
clean() { env -i HOME="$tmp/home" PATH=/usr/bin:/bin EDGERUN_MODELS="$tmp/models" "$@"; }

clean "$BIN" --version | grep -q "^edgerun " || { echo "FAIL: --version" >&2; exit 1; }
clean "$BIN" list > "$tmp/list.txt"
grep -q "qwen2.5-coder-0.5b-instruct" "$tmp/list.txt" || { cat "$tmp/list.txt"; echo "FAIL: list" >&2; exit 1; }
echo "list: ok"

prompt="def fibonacci(n):"
t0=$(date +%s.%N)
clean "$BIN" run -m "$model" -p "$prompt" -n 16 --temp 0 --json > "$tmp/bin.json"
t1=$(date +%s.%N)
"$ROOT/.venv/bin/edgerun" run -m "$model" -p "$prompt" -n 16 --temp 0 --json > "$tmp/venv.json" 2>/dev/null
t2=$(date +%s.%N)
"$VENV_PY" - "$tmp/bin.json" "$tmp/venv.json" "$t0" "$t1" "$t2" <<'EOF'
import json, sys
b, v = (json.load(open(p)) for p in sys.argv[1:3])
t0, t1, t2 = map(float, sys.argv[3:6])
assert b["tokens"] == v["tokens"], f"binary {b['tokens']} != venv {v['tokens']}"
print(f"run: same 16 tokens as the venv install; wall time (start-up + 16 tokens) binary {t1 - t0:.1f} s, "
      f"venv {t2 - t1:.1f} s; ttft in-process binary {b['ttft_ms']:.0f} ms, venv {v['ttft_ms']:.0f} ms")
EOF

port=$("$VENV_PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
clean "$BIN" serve -m "$model" --port "$port" --ctx 512 > "$tmp/serve.log" 2>&1 &
srv=$!
for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$port/health" > "$tmp/health.json" 2>/dev/null && break
    kill -0 "$srv" 2>/dev/null || { cat "$tmp/serve.log"; echo "FAIL: serve exited" >&2; exit 1; }
    sleep 0.5
done
[ -s "$tmp/health.json" ] || { cat "$tmp/serve.log"; echo "FAIL: /health" >&2; exit 1; }
echo "serve /health: $(cat "$tmp/health.json")"
served=$("$VENV_PY" -c "import json, sys; print(json.load(open(sys.argv[1]))['model'])" "$tmp/health.json")
curl -sN "http://127.0.0.1:$port/v1/chat/completions" -H 'Content-Type: application/json' \
    -d "{\"model\": \"$served\", \"messages\": [{\"role\": \"user\", \"content\": \"Say hi\"}], \"stream\": true, \"max_tokens\": 8}" \
    > "$tmp/stream.txt"
grep -q '^data: {' "$tmp/stream.txt" && grep -q '^data: \[DONE\]' "$tmp/stream.txt" \
    || { cat "$tmp/stream.txt"; echo "FAIL: streamed chat completion" >&2; exit 1; }
echo "serve stream: $(grep -c '^data: {' "$tmp/stream.txt") chunks, [DONE]"
kill "$srv"; wait "$srv" 2>/dev/null || true; srv=""

tmux new-session -d -s edgerun-bin-check -x 120 -y 40 \
    "env -i HOME=$tmp/home PATH=/usr/bin:/bin TERM=xterm-256color EDGERUN_MODELS=$tmp/models $BIN chat -m $model"
ok=""
for _ in $(seq 1 600); do
    if tmux capture-pane -p -t edgerun-bin-check 2>/dev/null | grep -q "ready"; then ok=1; break; fi
    sleep 0.5
done
[ -n "$ok" ] || { tmux capture-pane -p -t edgerun-bin-check || true; echo "FAIL: chat did not get ready" >&2; exit 1; }
tmux send-keys -t edgerun-bin-check C-q
for _ in $(seq 1 100); do
    tmux has-session -t edgerun-bin-check 2>/dev/null || { echo "chat: opened, ready, quit on Ctrl+Q"; break; }
    sleep 0.1
done
if tmux has-session -t edgerun-bin-check 2>/dev/null; then echo "FAIL: Ctrl+Q did not quit" >&2; exit 1; fi
echo "OK: the binary works from a clean environment ($(du -h "$BIN" | cut -f1))"
