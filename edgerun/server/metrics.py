"""Prometheus metrics in the text exposition format (no prometheus_client).

`Metrics` is an engine observer: the engine thread reports time to first token, the gap
between tokens and each finished request; gauges (queue, KV pool, prefix-cache hit rate,
GPU memory and utilisation) are read at scrape time.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from edgerun.serving.types import StreamEvent

PREFIX = "edgerun"

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5)
SPEC_RATE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
SPEC_TPS_BUCKETS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 120.0, 300.0)


def _fmt(v: float) -> str:
    if v == float("inf"):
        return "+Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    """Cumulative-bucket histogram."""

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        self.name, self.help = name, help
        self.buckets = tuple(sorted(buckets)) + (float("inf"),)
        self.counts = [0] * len(self.buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        for i, b in enumerate(self.buckets):
            if v <= b:
                self.counts[i] += 1
                break
        self.sum += v
        self.count += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        acc = 0
        for b, c in zip(self.buckets, self.counts, strict=True):
            acc += c
            lines.append(f'{self.name}_bucket{{le="{_fmt(b)}"}} {acc}')
        lines += [f"{self.name}_sum {_fmt(self.sum)}", f"{self.name}_count {self.count}"]
        return lines


def _scalar(kind: str, name: str, help: str, samples: list[tuple[str, float]] | float) -> list[str]:
    lines = [f"# HELP {name} {help}", f"# TYPE {name} {kind}"]
    if not isinstance(samples, list):
        samples = [("", samples)]
    lines += [f"{name}{labels} {_fmt(v)}" for labels, v in samples]
    return lines


_nvml: Any = None


def gpu_stats() -> list[dict[str, float]]:
    """Per-GPU memory used/total (bytes) and utilisation (0-1) via pynvml; [] without it."""
    global _nvml
    if _nvml is False:
        return []
    try:
        if _nvml is None:
            import pynvml

            pynvml.nvmlInit()
            _nvml = pynvml
        out = []
        for i in range(_nvml.nvmlDeviceGetCount()):
            h = _nvml.nvmlDeviceGetHandleByIndex(i)
            mem = _nvml.nvmlDeviceGetMemoryInfo(h)
            util = _nvml.nvmlDeviceGetUtilizationRates(h)
            out.append({"memory_used": float(mem.used), "memory_total": float(mem.total),
                        "utilization": util.gpu / 100.0})
        return out
    except Exception:
        _nvml = False if _nvml is None else _nvml
        return []


class Metrics:
    """Request-level histograms and counters, fed by the engine (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds",
                              "Time from request arrival to its first generated token.", TTFT_BUCKETS)
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds",
                             "Time between consecutive generated tokens of a request.", ITL_BUCKETS)
        self.e2e = Histogram(f"{PREFIX}_e2e_request_latency_seconds",
                             "Time from request arrival to its last token.", E2E_BUCKETS)
        self.spec_acceptance = Histogram(
            f"{PREFIX}_spec_acceptance_rate",
            "Per finished speculative request: accepted / proposed tokens.", SPEC_RATE_BUCKETS)
        self.spec_tokens_per_step = Histogram(
            f"{PREFIX}_spec_tokens_per_step",
            "Per finished speculative request: generated tokens / target steps.", SPEC_TPS_BUCKETS)
        self.prompt_tokens = 0
        self.cached_prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.http_errors: dict[int, int] = {}

    def on_first_token(self, ttft_s: float) -> None:
        with self._lock:
            self.ttft.observe(ttft_s)

    def on_token(self, itl_s: float) -> None:
        with self._lock:
            self.itl.observe(itl_s)

    def on_finish(self, event: StreamEvent, e2e_s: float) -> None:
        with self._lock:
            self.e2e.observe(e2e_s)
            self.prompt_tokens += event.usage.prompt_tokens
            self.cached_prompt_tokens += event.usage.cached_tokens
            self.generation_tokens += event.usage.completion_tokens
            r = event.finish_reason or "unknown"
            self.finished[r] = self.finished.get(r, 0) + 1
            sp = event.spec
            if sp is not None and sp.proposed:
                self.spec_acceptance.observe(sp.acceptance_rate)
            if sp is not None and sp.steps:
                self.spec_tokens_per_step.observe(sp.tokens_per_step)

    def on_http_error(self, status: int) -> None:
        with self._lock:
            self.http_errors[status] = self.http_errors.get(status, 0) + 1

    def render(self, stats: dict[str, Any], model_name: str = "") -> str:
        """The whole exposition text, engine gauges from `Engine.stats()`."""
        p = PREFIX
        with self._lock:
            lines = self.ttft.render() + self.itl.render() + self.e2e.render()
            if stats.get("spec_mode"):
                lines += self.spec_acceptance.render() + self.spec_tokens_per_step.render()
            lines += _scalar("counter", f"{p}_prompt_tokens_total", "Prompt tokens of finished requests.",
                             float(self.prompt_tokens))
            lines += _scalar("counter", f"{p}_prompt_tokens_cached_total",
                             "Prompt tokens served from the prefix cache.", float(self.cached_prompt_tokens))
            lines += _scalar("counter", f"{p}_generation_tokens_total", "Generated tokens.",
                             float(self.generation_tokens))
            lines += _scalar("counter", f"{p}_request_success_total", "Finished requests by finish reason.",
                             [(f'{{finish_reason="{k}"}}', float(v))
                              for k, v in sorted(self.finished.items())])
            lines += _scalar("counter", f"{p}_http_errors_total", "Error responses by status code.",
                             [(f'{{status="{k}"}}', float(v)) for k, v in sorted(self.http_errors.items())])
        lines += _scalar("gauge", f"{p}_num_requests_running", "Requests in the running batch.",
                         float(stats["running"]))
        lines += _scalar("gauge", f"{p}_num_requests_waiting", "Requests waiting to be scheduled.",
                         float(stats["waiting"]))
        lines += _scalar("gauge", f"{p}_kv_blocks_used", "KV cache blocks held by requests.",
                         float(stats["kv_blocks_used"]))
        lines += _scalar("gauge", f"{p}_kv_blocks_total", "KV cache blocks in the pool.",
                         float(stats["kv_blocks_total"]))
        lines += _scalar("gauge", f"{p}_kv_cache_usage_ratio", "Fraction of KV blocks held (0-1).",
                         float(stats["kv_usage"]))
        lines += _scalar("gauge", f"{p}_prefix_cache_hit_rate",
                         "Prompt tokens found in the prefix cache / prompt tokens looked up.",
                         float(stats["prefix_cache_hit_rate"]))
        lines += _scalar("counter", f"{p}_prefix_cache_queries_total", "Prompt tokens looked up.",
                         float(stats["prefix_cache_queries"]))
        lines += _scalar("counter", f"{p}_prefix_cache_hits_total", "Prompt tokens found cached.",
                         float(stats["prefix_cache_hits"]))
        lines += _scalar("counter", f"{p}_num_preemptions_total", "Sequences preempted for KV space.",
                         float(stats.get("preemptions", 0)))
        lines += _scalar("gauge", f"{p}_batch_tiles_bytes",
                         "Memory of the batch-friendly copy of the weights (0: none).",
                         float(stats.get("batch_tiles_bytes", 0)))
        if stats.get("spec_mode"):
            lines += _scalar("counter", f"{p}_spec_proposed_tokens_total",
                             "Tokens proposed by speculative decoding (draft model or prompt lookup).",
                             [(f'{{mode="{stats["spec_mode"]}"}}', float(stats.get("spec_proposed", 0)))])
            lines += _scalar("counter", f"{p}_spec_accepted_tokens_total",
                             "Proposed tokens the model accepted.",
                             [(f'{{mode="{stats["spec_mode"]}"}}', float(stats.get("spec_accepted", 0)))])
            lines += _scalar("counter", f"{p}_spec_verify_steps_total",
                             "Sequence steps that verified proposals.", float(stats.get("spec_steps", 0)))
        if model_name:
            lines += _scalar("gauge", f"{p}_model_info", "The served model.",
                             [(f'{{model="{model_name}"}}', 1.0)])
        gpus = gpu_stats()
        if gpus:
            for key, name, help in (("memory_used", "gpu_memory_used_bytes", "GPU memory in use."),
                                    ("memory_total", "gpu_memory_total_bytes", "GPU memory size."),
                                    ("utilization", "gpu_utilization_ratio", "GPU busy fraction (0-1).")):
                lines += _scalar("gauge", f"{p}_{name}", help,
                                 [(f'{{gpu="{i}"}}', g[key]) for i, g in enumerate(gpus)])
        return "\n".join(lines) + "\n"
