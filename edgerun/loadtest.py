"""Load tester for any OpenAI-compatible server: throughput and latency vs concurrency.

For each concurrency level it sends `--requests` streaming completions with `--concurrency`
in flight, and reports requests/s, output tokens/s, TTFT P50/P90/P99, inter-token latency
P50/P99 and errors. The knee is the last level before throughput stops growing (< 10% gain)
while P99 TTFT keeps climbing. `--plot` writes a PNG of throughput and P99 TTFT.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import numpy as np

_WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
          "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    output_tokens: int = 0
    itls: list[float] = field(default_factory=list)
    error: str = ""


@dataclass
class LevelResult:
    """Summary of one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    duration_s: float
    requests_per_s: float
    output_tokens_per_s: float
    ttft_p50_s: float
    ttft_p90_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    e2e_p50_s: float
    knee: bool = False


def make_prompt(n_tokens: int, i: int) -> str:
    """About n_tokens tokens of text; a distinct opening so prefix caching does not flatter us."""
    rng = random.Random(i)
    words = [f"request {i}:"] + [rng.choice(_WORDS) for _ in range(max(n_tokens - 3, 1))]
    return " ".join(words)


def _pct(xs: list[float], q: float) -> float:
    return float(np.percentile(xs, q)) if xs else float("nan")


async def one_request(client: httpx.AsyncClient, url: str, body: dict[str, Any],
                      headers: dict[str, str]) -> RequestResult:
    """One streaming completion; times the first token and the gaps between chunks."""
    t0 = time.perf_counter()
    last = 0.0
    res = RequestResult(ok=False)
    chunks = 0
    try:
        async with client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code != 200:
                await r.aread()
                res.error = f"HTTP {r.status_code}: {r.text[:200]}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = str(obj["error"].get("message"))
                    return res
                if obj.get("usage"):
                    res.output_tokens = int(obj["usage"].get("completion_tokens", 0))
                choices = obj.get("choices") or []
                if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                    now = time.perf_counter()
                    if chunks == 0:
                        res.ttft_s = now - t0
                    else:
                        res.itls.append(now - last)
                    last = now
                    chunks += 1
        res.e2e_s = time.perf_counter() - t0
        res.output_tokens = res.output_tokens or chunks
        res.ok = True
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
    return res


async def run_level(url: str, model: str, concurrency: int, n_requests: int, prompt_tokens: int,
                    max_tokens: int, api_key: str | None = None, timeout: float = 600.0) -> LevelResult:
    """Send n_requests with `concurrency` in flight; summarise."""
    endpoint = url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n_requests):
        queue.put_nowait(i)
    results: list[RequestResult] = []

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            body = {"model": model, "prompt": make_prompt(prompt_tokens, i + 1000 * concurrency),
                    "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
                    "stream_options": {"include_usage": True}}
            results.append(await one_request(client, endpoint, body, headers))

    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    dur = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    ttfts = [r.ttft_s for r in ok]
    itls = [x for r in ok for x in r.itls]
    return LevelResult(
        concurrency=concurrency, requests=len(results), errors=len(results) - len(ok), duration_s=dur,
        requests_per_s=len(ok) / dur, output_tokens_per_s=sum(r.output_tokens for r in ok) / dur,
        ttft_p50_s=_pct(ttfts, 50), ttft_p90_s=_pct(ttfts, 90), ttft_p99_s=_pct(ttfts, 99),
        itl_p50_s=_pct(itls, 50), itl_p99_s=_pct(itls, 99), e2e_p50_s=_pct([r.e2e_s for r in ok], 50))


def mark_knee(levels: list[LevelResult], min_gain: float = 0.10) -> int | None:
    """Index of the knee: the last level after which throughput grows by less than min_gain."""
    for i in range(len(levels) - 1):
        a, b = levels[i].output_tokens_per_s, levels[i + 1].output_tokens_per_s
        if a > 0 and b < a * (1 + min_gain):
            levels[i].knee = True
            return i
    return None


def plot(levels: list[LevelResult], path: str, title: str = "") -> None:
    """PNG of output tokens/s and P99 TTFT against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [lv.concurrency for lv in levels]
    fig, ax1 = plt.subplots(figsize=(7, 4.2))
    ax1.plot(xs, [lv.output_tokens_per_s for lv in levels], "o-", color="tab:blue", label="output tok/s")
    ax1.set_xscale("log", base=2)
    ax1.set_xticks(xs, [str(x) for x in xs])
    ax1.set_xlabel("concurrency")
    ax1.set_ylabel("output tokens/s", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(xs, [lv.ttft_p99_s * 1000 for lv in levels], "s--", color="tab:red", label="P99 TTFT")
    ax2.set_ylabel("P99 TTFT (ms)", color="tab:red")
    for lv in levels:
        if lv.knee:
            ax1.axvline(lv.concurrency, color="grey", linestyle=":")
            ax1.annotate("knee", (lv.concurrency, lv.output_tokens_per_s), textcoords="offset points",
                         xytext=(5, -15))
    ax1.set_title(title or "edgerun loadtest")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(levels: list[LevelResult]) -> str:
    head = (f"{'conc':>5} {'reqs':>5} {'err':>4} {'req/s':>7} {'tok/s':>8} {'TTFT p50':>9} {'p90':>8} "
            f"{'p99':>8} {'ITL p50':>8} {'p99':>8}")
    rows = [head]
    for lv in levels:
        ms = lambda s: f"{s * 1000:7.0f}ms" if s == s else "      - "  # noqa: E731
        rows.append(f"{lv.concurrency:>5} {lv.requests:>5} {lv.errors:>4} {lv.requests_per_s:>7.2f} "
                    f"{lv.output_tokens_per_s:>8.1f} {ms(lv.ttft_p50_s):>9} {ms(lv.ttft_p90_s)} "
                    f"{ms(lv.ttft_p99_s)} {ms(lv.itl_p50_s)} {ms(lv.itl_p99_s)}"
                    + ("  <- knee" if lv.knee else ""))
    return "\n".join(rows)


def _model_name(url: str, api_key: str | None) -> str:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(url.rstrip("/") + "/v1/models", headers=headers, timeout=10)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def run(url: str, concurrency: list[int], n_requests: int, prompt_tokens: int, max_tokens: int,
        model: str | None = None, api_key: str | None = None) -> list[LevelResult]:
    """All levels in order, knee marked."""
    model = model or _model_name(url, api_key)
    levels = []
    for c in concurrency:
        levels.append(asyncio.run(run_level(url, model, c, max(n_requests, c), prompt_tokens, max_tokens,
                                            api_key)))
    mark_knee(levels)
    return levels


def _main(args: argparse.Namespace) -> int:
    try:
        conc = [int(x) for x in args.concurrency.split(",") if x.strip()]
        if not conc or min(conc) <= 0:
            raise ValueError
    except ValueError:
        print("error: --concurrency wants a comma-separated list of positive integers", file=sys.stderr)
        return 2
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        print("error: --plot needs matplotlib: pip install 'edgerun[plots]'", file=sys.stderr)
        return 2
    try:
        levels = run(args.url, conc, args.requests, args.prompt_tokens, args.max_tokens, args.model,
                     args.api_key)
    except httpx.HTTPError as e:
        print(f"error: cannot reach {args.url}: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([asdict(lv) for lv in levels], indent=2))
    else:
        print(format_table(levels))
    if args.plot:
        title = f"{args.url}  prompt ~{args.prompt_tokens} tok, gen {args.max_tokens} tok"
        plot(levels, args.plot, title=title)
        if not args.json:
            print(f"plot written to {args.plot}")
    return 1 if all(lv.errors == lv.requests for lv in levels) else 0


def register(sub: Any) -> None:
    """Add `edgerun loadtest` to an argparse subparsers object."""
    p = sub.add_parser("loadtest", help="throughput/latency sweep against an OpenAI-compatible server")
    p.add_argument("--url", default="http://127.0.0.1:8080", help="server base URL (without /v1)")
    p.add_argument("--concurrency", default="1,2,4,8,16", help="comma-separated levels")
    p.add_argument("--requests", type=int, default=32, help="requests per level (at least the concurrency)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="approximate prompt length")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens to generate per request")
    p.add_argument("--model", default=None, help="model name (default: the server's first)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", default=None, metavar="FILE.png", help="write a throughput/TTFT plot")
    p.set_defaults(func=_main)
