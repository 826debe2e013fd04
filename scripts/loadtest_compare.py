"""Load-test edgerun's server and llama.cpp's server on the same model, in one run.

Starts each server on loopback in turn (never both at once: they would share the cores),
runs `edgerun.loadtest` at the same concurrency levels, prints both tables and the ratio,
and writes a chart with both curves.

    python scripts/loadtest_compare.py --llama-server /path/to/llama-server \
        -m qwen2.5-coder-0.5b-instruct --concurrency 1,2,4,8 --requests 16
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from edgerun.catalog import resolve_model
from edgerun.loadtest import LevelResult, format_table, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("server did not become healthy")


def measure(cmd: list[str], port: int, args: argparse.Namespace, log: Path) -> list[LevelResult]:
    url = f"http://127.0.0.1:{port}"
    with open(log, "w") as lf:
        proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, proc)
            levels = [int(c) for c in args.concurrency.split(",")]
            return run(url, levels, args.requests, args.prompt_tokens, args.max_tokens)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def chart(results: dict[str, list[LevelResult]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, lv in results.items():
        xs = [x.concurrency for x in lv]
        a1.plot(xs, [x.output_tokens_per_s for x in lv], "o-", label=name)
        a2.plot(xs, [x.ttft_p99_s * 1000 for x in lv], "s--", label=name)
        for x in lv:
            if x.knee:
                a1.annotate("knee", (x.concurrency, x.output_tokens_per_s), textcoords="offset points",
                            xytext=(4, -12))
    for ax, yl in ((a1, "output tokens/s"), (a2, "P99 TTFT (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel(yl)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("edgerun serve vs llama.cpp server (same model, threads, load)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--llama-server", default=None, help="path to llama.cpp's llama-server binary")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", default="1,2,4,8")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--out", default="out/loadtest")
    args = ap.parse_args()
    path = resolve_model(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    max_c = max(int(c) for c in args.concurrency.split(","))
    results: dict[str, list[LevelResult]] = {}
    p = free_port()
    results["edgerun"] = measure([sys.executable, "-m", "edgerun.cli", "serve", "-m", str(path), "--port",
                                  str(p), "--threads", str(args.threads), "--max-running", str(max_c),
                                  "--ctx", "2048", "--log-level", "warning"], p, args, out / "edgerun.log")
    if args.llama_server:
        p = free_port()
        results["llama.cpp"] = measure([args.llama_server, "-m", str(path), "--port", str(p), "-t",
                                        str(args.threads), "-np", str(max_c), "-c", str(2048 * max_c),
                                        "--host", "127.0.0.1"], p, args, out / "llama-server.log")
    for name, lv in results.items():
        print(f"\n== {name} ==\n{format_table(lv)}")
    if len(results) == 2:
        print("\nratio edgerun / llama.cpp (output tok/s, P99 TTFT):")
        for a, b in zip(results["edgerun"], results["llama.cpp"], strict=True):
            tps = a.output_tokens_per_s / max(b.output_tokens_per_s, 1e-9)
            ttft = a.ttft_p99_s / max(b.ttft_p99_s, 1e-9)
            print(f"  c={a.concurrency:<3} tok/s x{tps:.2f}   p99 TTFT x{ttft:.2f}")
    chart(results, str(out / "loadtest.png"))
    (out / "loadtest.json").write_text(json.dumps({k: [vars(x) for x in v] for k, v in results.items()},
                                                  indent=1))
    print(f"\nchart: {out / 'loadtest.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
