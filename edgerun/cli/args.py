"""Shared argument helpers: every flag is defined once, so it has the same spelling, type, default,
help and validation in every subcommand that takes it.

Policy: a value that cannot be used is refused while parsing, with one line naming the flag
(``edgerun: error: argument --temp: ...``, exit status 2), never by a traceback later on. Numbers
are checked finite (NaN and inf are refused everywhere), counts positive, ranges stated in the
message.

Adding a flag:

* to one command: ``add(p, "name")`` after defining ``FLAGS["name"]`` here (or a plain
  ``p.add_argument`` with one of the value types below when the flag belongs to that command alone);
* to several commands at once: define it in ``FLAGS`` and append its key to a group: ``LOAD``
  (every command that loads a model: run, perplexity, serve, chat; convert it in
  :func:`runner_options`), ``SAMPLING`` (run; convert it in :func:`sampling_params`); or call
  ``add(p, "name")`` in each command's ``register``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from edgerun.runtime.factory import RunnerOptions
    from edgerun.runtime.runner import Runner
    from edgerun.text.sampling import SamplingParams


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``edgerun: error: MESSAGE`` and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgerun: error: {message}\n")


# ----------------------------------------------------------------------------- value types
# Each raises ArgumentTypeError, which argparse prints as "argument --flag: MESSAGE".

GiB = 1 << 30
#: below this a positive temperature is refused (0 is greedy): logits / 1e-320 overflow to inf and
#: the softmax turns to NaN; from 1e-3 up, logits / T stay far inside float range for any logit
MIN_TEMPERATURE = 1e-3
#: repeat penalty range: 1e-40 divides logits into inf; 1e-3 .. 1e3 keeps them finite
MIN_REPEAT_PENALTY, MAX_REPEAT_PENALTY = 1e-3, 1e3
MAX_SEED = 2**64 - 1
#: ggml's GGML_MAX_N_THREADS; `run --threads 100000` took 22 s to a 2-token answer on 2 cores
MAX_THREADS = 512
#: sizes in GiB beyond this are typos (1e300 GiB overflowed the conversion to bytes)
MAX_GIB = 1 << 20
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def _int(s: str, what: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{s[:40]}'") from None


def _float(s: str, what: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{s[:40]}'") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"expected {what}, got '{s}' (NaN and infinity are refused)")
    return v


def positive_int(s: str) -> int:
    """An integer > 0."""
    v = _int(s, "a positive integer")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{s}'")
    return v


def nonneg_int(s: str) -> int:
    """An integer >= 0."""
    v = _int(s, "an integer >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{s}'")
    return v


def nonneg_float(s: str) -> float:
    """A finite number >= 0."""
    v = _float(s, "a finite number >= 0")
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got '{s}'")
    return v


def threads(s: str) -> int:
    """A thread count, 1..MAX_THREADS."""
    v = positive_int(s)
    if v > MAX_THREADS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_THREADS} threads, got '{s}'")
    return v


def gigabytes(s: str) -> float:
    """A size in GiB: finite, >= 0, at most MAX_GIB."""
    v = nonneg_float(s)
    if v > MAX_GIB:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_GIB:g} GiB, got '{s}'")
    return v


def port(s: str) -> int:
    """A TCP port, 1-65535."""
    v = _int(s, "a port number 1-65535")
    if not 1 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got '{s}'")
    return v


def temperature(s: str) -> float:
    """0 (greedy) or a finite number >= MIN_TEMPERATURE; smaller positive values are refused."""
    v = nonneg_float(s)
    if 0 < v < MIN_TEMPERATURE:
        raise argparse.ArgumentTypeError(
            f"{s} is too small: use 0 for greedy decoding or a temperature >= {MIN_TEMPERATURE:g}")
    return v


def probability(lo_open: bool, hi_open: bool) -> Callable[[str], float]:
    """A number in [0, 1] with the named ends excluded."""
    lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
    what = f"a number in {lo}0, 1{hi}"

    def parse(s: str) -> float:
        v = _float(s, what)
        if v < 0 or v > 1 or (lo_open and v == 0) or (hi_open and v == 1):
            raise argparse.ArgumentTypeError(f"expected {what}, got '{s}'")
        return v

    return parse


def repeat_penalty(s: str) -> float:
    """A penalty in [MIN_REPEAT_PENALTY, MAX_REPEAT_PENALTY] (1 = off)."""
    what = f"a number in [{MIN_REPEAT_PENALTY:g}, {MAX_REPEAT_PENALTY:g}] (1 = off)"
    v = _float(s, what)
    if not MIN_REPEAT_PENALTY <= v <= MAX_REPEAT_PENALTY:
        raise argparse.ArgumentTypeError(f"expected {what}, got '{s}'")
    return v


def seed(s: str) -> int | None:
    """-1 means a random seed (llama.cpp's convention), else an integer in [0, 2^64)."""
    v = _int(s, "an integer seed (-1 for random)")
    if v == -1:
        return None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2^64) or -1 for random, got '{s}'")
    return v


def nonempty(s: str) -> str:
    """A non-empty string (an empty stop string would stop at once)."""
    if not s:
        raise argparse.ArgumentTypeError("expected a non-empty string")
    return s


def log_level(s: str) -> str:
    """One of LOG_LEVELS, any case."""
    v = s.lower()
    if v not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(LOG_LEVELS)}, got '{s}'")
    return v


def positive_int_list(s: str) -> list[int]:
    """Comma-separated positive integers: ``1,2,4``."""
    parts = [p.strip() for p in s.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected comma-separated positive integers, got ''")
    try:
        return [positive_int(p) for p in parts]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got '{s}'") from None


# ----------------------------------------------------------------------------- the flag table


@dataclass(frozen=True)
class Flag:
    """One command-line flag: its option strings and argparse keywords (dest is the table key).

    ``hidden`` are old spellings still accepted but not shown in ``--help``.
    """

    names: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()


BACKENDS = ("auto", "native", "numba", "reference")
PLACEMENTS = ("auto", "cpu", "gpu", "hybrid")

FLAGS: dict[str, Flag] = {
    # the model and how it is loaded
    "model": Flag(("-m", "--model"), {"required": True, "help": "catalog name or path to a .gguf file"}),
    "threads": Flag(("-t", "--threads"), {"type": threads, "default": None,
                                          "help": "CPU threads (default: every core this process may use)"}),
    "ctx": Flag(("-c", "--ctx"), {"type": positive_int, "default": 4096, "metavar": "N",
                                  "help": "context size in tokens (default %(default)s)"}),
    "backend": Flag(("--backend",), {"choices": BACKENDS, "default": "auto",
                                     "help": "CPU kernels (auto: native if built, else Numba)"}),
    "placement": Flag(("--placement",), {
        "choices": PLACEMENTS, "default": "auto",
        "help": "where tensors go (auto: attention + KV cache on the GPU when one is present)"}),
    "vram_budget": Flag(("--vram-budget",), {"type": gigabytes, "default": None, "metavar": "GB",
                                             "help": "use at most this much VRAM, in GiB"},
                        hidden=("--vram-budget-gb",)),
    "override": Flag(("--override",), {
        "action": "append", "default": [], "metavar": "REGEX=cpu|gpu",
        "help": "force matching tensors onto a device (repeatable, last match wins; llama.cpp's -ot)"},
        hidden=("-ot",)),
    "kv_type": Flag(("--kv-type",), {
        "choices": ("f16", "f32"), "default": "f16",
        "help": "CPU KV cache element type (f16 halves its memory; llama.cpp's --cache-type-k/v)"}),
    # sampling
    "n_predict": Flag(("-n", "--n-predict"), {"type": positive_int, "default": 128, "metavar": "N",
                                              "help": "tokens to generate (default %(default)s)"}),
    "temp": Flag(("--temp",), {
        "type": temperature, "default": 0.8,
        "help": f"temperature (0 = greedy; positive values from {MIN_TEMPERATURE:g})"}),
    "top_k": Flag(("--top-k",), {"type": nonneg_int, "default": 40, "help": "top-k (0 = off)"}),
    "top_p": Flag(("--top-p",), {"type": probability(True, False), "default": 0.95,
                                 "help": "top-p, in (0, 1] (1 = off)"}),
    "min_p": Flag(("--min-p",), {"type": probability(False, True), "default": 0.05,
                                 "help": "min-p, in [0, 1) (0 = off)"}),
    "repeat_penalty": Flag(("--repeat-penalty",), {
        "type": repeat_penalty, "default": 1.0,
        "help": f"repetition penalty in [{MIN_REPEAT_PENALTY:g}, {MAX_REPEAT_PENALTY:g}] (1 = off)"}),
    "seed": Flag(("--seed",), {"type": seed, "default": None,
                               "help": "sampling seed (-1 or absent: random)"}),
    "stop": Flag(("--stop",), {"type": nonempty, "action": "append", "default": None,
                               "help": "stop string (repeatable)"}),
    # output and connections
    "json": Flag(("--json",), {"action": "store_true", "help": "print JSON"}),
    "deterministic": Flag(("--deterministic",), {
        "action": "store_true",
        "help": "the answer `serve --deterministic` gives, whatever it is batched with: prefill in steps "
                "of at most 16 rows (slower prefill)"}),
    # an empty key would turn the server's auth off without a word
    "api_key": Flag(("--api-key",), {"type": nonempty, "default": None,
                                     "help": "API key ('Authorization: Bearer KEY')"}),
    "url": Flag(("--url",), {"default": None, "help": "server base URL, e.g. http://127.0.0.1:8080"}),
}

#: flags of every command that loads a model (run, perplexity, serve, chat)
LOAD: tuple[str, ...] = ("threads", "ctx", "backend", "placement", "vram_budget", "override", "kv_type")
#: sampling flags (run)
SAMPLING: tuple[str, ...] = ("n_predict", "temp", "top_k", "top_p", "min_p", "repeat_penalty", "seed",
                             "stop")


def add(p: argparse.ArgumentParser, *keys: str, **changes: dict[str, Any]) -> None:
    """Add the flags ``keys`` of :data:`FLAGS` to ``p``; ``changes[key]`` replaces some of that
    flag's argparse keywords for this command (``add(p, "ctx", ctx={"default": 512})``)."""
    for key in keys:
        f = FLAGS[key]
        kw = {**f.kwargs, **changes.get(key, {})}
        p.add_argument(*f.names, dest=key, **kw)
        if f.hidden:
            # same action, no default of its own (the visible flag's default stands), no help line
            p.add_argument(*f.hidden, dest=key, **{**kw, "default": argparse.SUPPRESS,
                                                   "help": argparse.SUPPRESS})
    unknown = set(changes) - set(keys)
    if unknown:
        raise KeyError(f"changes for flags not added: {sorted(unknown)}")


def add_model_args(p: argparse.ArgumentParser, **changes: dict[str, Any]) -> None:
    """``-m/--model`` and the :data:`LOAD` flags."""
    add(p, "model", *LOAD, **changes)


# ----------------------------------------------------------------------------- conversions


def resolve(spec: str) -> Path:
    """A catalog name or a .gguf path -> the local file (pulling a catalog model on first use)."""
    from edgerun.catalog import ModelError, resolve_model

    try:
        return resolve_model(spec)
    except ModelError as e:
        raise CLIError(str(e)) from None


def runner_options(args: argparse.Namespace | None, **changes: Any) -> RunnerOptions:
    """The :data:`LOAD` flags of ``args`` (absent ones keep their defaults) as RunnerOptions;
    ``changes`` set further fields (``num_blocks``, ``batch_tiles`` ...)."""
    from edgerun.runtime.factory import RunnerOptions

    ns = vars(args) if args is not None else {}
    opts: dict[str, Any] = {}
    if ns.get("threads") is not None:
        opts["n_threads"] = ns["threads"]
    if ns.get("ctx") is not None:
        opts["n_ctx"] = ns["ctx"]
    for key in ("backend", "placement", "kv_type"):
        if ns.get(key) is not None:
            opts[key] = ns[key]
    if ns.get("vram_budget") is not None:
        opts["vram_budget"] = int(ns["vram_budget"] * GiB)
    if ns.get("override"):
        opts["overrides"] = tuple(ns["override"])
    opts.update(changes)
    return RunnerOptions(**opts)


def load_runner(args: argparse.Namespace, **changes: Any) -> Runner:
    """Resolve ``args.model`` and build its runner; load errors become one-line CLI errors."""
    from edgerun.models.base import ModelLoadError
    from edgerun.quant.gguf_file import GGUFError
    from edgerun.runtime.factory import make_runner
    from edgerun.runtime.planner import PlanError

    path = resolve(args.model)
    try:
        return make_runner(path, runner_options(args, **changes))
    except (GGUFError, ModelLoadError, PlanError, ValueError) as e:
        raise CLIError(f"cannot load {path}: {e}") from None
    except MemoryError:
        raise CLIError(f"cannot load {path}: not enough memory (a smaller --ctx or --kv-blocks?)") from None


def sampling_params(args: argparse.Namespace) -> SamplingParams:
    """The :data:`SAMPLING` flags as SamplingParams (checked by its own validation too)."""
    from edgerun.text.sampling import SamplingParams

    p = SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       repeat_penalty=args.repeat_penalty, seed=args.seed, max_tokens=args.n_predict,
                       stop=list(args.stop or []))
    try:
        p.validate()
    except ValueError as e:
        raise CLIError(str(e)) from None
    return p


__all__ = ["FLAGS", "LOAD", "SAMPLING", "CLIError", "Flag", "Parser", "add", "add_model_args", "gigabytes",
           "load_runner", "nonempty", "nonneg_float", "nonneg_int", "port", "positive_int",
           "positive_int_list", "resolve", "runner_options", "sampling_params", "threads"]
