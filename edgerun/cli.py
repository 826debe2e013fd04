"""`edgerun` command line: pull, list, inspect, run, perplexity, bench, plan, serve, loadtest, chat."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn


class CLIError(Exception):
    """A user error: printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"edgerun: error: {message}\n")


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{s}'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{s}'")
    return v


def _nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{s}'") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got '{s}'")
    return v


def _resolve(spec: str) -> Path:
    from edgerun.catalog import ModelError, resolve_model

    try:
        return resolve_model(spec)
    except ModelError as e:
        raise CLIError(str(e)) from None


def _load_runner(args: argparse.Namespace, n_ctx: int | None = None) -> Any:
    from edgerun.models.base import ModelLoadError
    from edgerun.quant.gguf_file import GGUFError
    from edgerun.runtime.hybrid import runner_from_args

    path = _resolve(args.model)
    try:
        return runner_from_args(path, args, n_ctx=n_ctx or args.ctx, n_threads=args.threads,
                                backend=getattr(args, "backend", "auto"))
    except (GGUFError, ModelLoadError, ValueError) as e:
        raise CLIError(f"cannot load {path}: {e}") from None


# ----------------------------------------------------------------------------- commands


def cmd_pull(args: argparse.Namespace) -> int:
    from edgerun.catalog import ModelError, pull

    try:
        path = pull(args.name)
    except ModelError as e:
        raise CLIError(str(e)) from None
    print(path)
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from edgerun.catalog import load_catalog, local_models, local_path

    cat = load_catalog()
    rows = []
    for name, e in cat.items():
        p = local_path(e)
        here = p.is_file() and p.stat().st_size == e.bytes
        rows.append({"name": name, "architecture": e.architecture, "bytes": e.bytes,
                     "license": e.license, "local": str(p) if here else None})
    known = {local_path(e).name for e in cat.values()}
    extra = [str(p) for p in local_models() if p.name not in known]
    if args.json:
        print(json.dumps({"catalog": rows, "local_files": extra}, indent=2))
        return 0
    print(f"{'NAME':32} {'ARCH':8} {'SIZE':>9}  STATUS")
    for r in rows:
        print(f"{r['name']:32} {r['architecture']:8} {r['bytes'] / 1e6:7.0f}MB  "
              f"{'downloaded' if r['local'] else 'not downloaded (edgerun pull ' + r['name'] + ')'}")
    for p in extra:
        print(f"{Path(p).name:32} {'':8} {Path(p).stat().st_size / 1e6:7.0f}MB  local file")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from gguf import GGMLQuantizationType

    from edgerun.quant.gguf_file import GGUFError, GGUFFile

    path = _resolve(args.model)
    try:
        gf = GGUFFile(path)
    except GGUFError as e:
        raise CLIError(str(e)) from None
    md = gf.metadata
    arch = gf.architecture or "?"
    by_type: dict[str, list[int]] = {}
    params = 0
    for t in gf.tensors.values():
        name = GGMLQuantizationType(t.qtype).name
        c = by_type.setdefault(name, [0, 0])
        c[0] += 1
        c[1] += t.nbytes
        n = 1
        for d in t.shape:
            n *= d
        params += n

    def g(k: str) -> Any:
        return md.get(f"{arch}.{k}")

    info = {
        "path": str(path), "architecture": arch, "name": md.get("general.name"),
        "parameters": params, "layers": g("block_count"), "dim": g("embedding_length"),
        "ffn_dim": g("feed_forward_length"), "heads": g("attention.head_count"),
        "kv_heads": g("attention.head_count_kv"), "context_length": g("context_length"),
        "vocab_size": len(md.get("tokenizer.ggml.tokens", [])),
        "tokenizer": md.get("tokenizer.ggml.model"),
        "chat_template": "tokenizer.chat_template" in md,
        "tensors": len(gf.tensors), "file_bytes": gf.file_size,
        "tensor_types": {k: {"count": v[0], "bytes": v[1]} for k, v in sorted(by_type.items())},
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    for k, v in info.items():
        if k == "tensor_types":
            print("tensor types:")
            for tn, c in v.items():
                print(f"  {tn:6} {c['count']:5} tensors {c['bytes'] / 1e6:10.1f} MB")
        elif k == "parameters":
            print(f"{k:15} {v / 1e6:.1f}M")
        else:
            print(f"{k:15} {v}")
    return 0


def _sampling(args: argparse.Namespace) -> Any:
    from edgerun.text.sampling import SamplingParams

    p = SamplingParams(temperature=args.temp, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                       repeat_penalty=args.repeat_penalty, seed=args.seed, max_tokens=args.n_predict,
                       stop=list(args.stop or []))
    try:
        p.validate()
    except ValueError as e:
        raise CLIError(str(e)) from None
    return p


def cmd_run(args: argparse.Namespace) -> int:
    from edgerun.generate import ContextOverflowError, stream
    from edgerun.serving.speculative import SpeculativeError, config_from_args, speculator_from_args
    from edgerun.text.tokenizer import ChatTemplateError

    params = _sampling(args)
    try:
        config_from_args(args)  # a bad flag fails before the model loads
    except SpeculativeError as e:
        raise CLIError(str(e)) from None
    runner = _load_runner(args)
    try:
        spec = speculator_from_args(args, runner)
    except SpeculativeError as e:
        raise CLIError(str(e)) from None
    tok = runner.tokenizer
    try:
        ids = (tok.encode_chat([{"role": "user", "content": args.prompt}]) if args.chat
               else tok.encode(args.prompt))
    except ChatTemplateError as e:
        raise CLIError(str(e)) from None
    if not ids:
        raise CLIError("the prompt is empty")
    parts: list[str] = []
    gen_ids: list[int] = []
    ev = None
    try:
        for ev in stream(runner, ids, params, spec):
            parts.append(ev.text)
            gen_ids += ev.token_ids
            if not args.json and ev.text:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
    except ContextOverflowError as e:
        raise CLIError(str(e)) from None
    assert ev is not None
    if args.json:
        t = ev.timings
        print(json.dumps({
            "text": "".join(parts), "tokens": gen_ids, "prompt_tokens": len(ids),
            "completion_tokens": len(gen_ids), "finish_reason": ev.finish_reason,
            "ttft_ms": round(t.ttft_s * 1000, 2), "prefill_tok_s": round(t.prefill_tok_s, 2),
            "decode_tok_s": round(t.decode_tok_s, 2), "backend": runner.backend.name,
            "threads": runner.n_threads,
            **({"speculative": {"mode": spec.mode, "proposed": ev.spec.proposed, "accepted": ev.spec.accepted,
                                "acceptance_rate": round(ev.spec.acceptance_rate, 4),
                                "tokens_per_step": round(ev.spec.tokens_per_step, 3)}}
               if spec is not None and ev.spec is not None else {}),
        }))
    else:
        sys.stdout.write("\n")
        t = ev.timings
        st = ev.spec
        sp = (f", {spec.mode}: {st.accepted}/{st.proposed} accepted, {st.tokens_per_step:.2f} tokens/step"
              if spec is not None and st is not None else "")
        print(f"[{len(ids)} prompt tokens, {len(gen_ids)} generated; ttft {t.ttft_s * 1000:.0f} ms, "
              f"prefill {t.prefill_tok_s:.1f} tok/s, decode {t.decode_tok_s:.1f} tok/s, "
              f"{runner.backend.name} x{runner.n_threads}{sp}]", file=sys.stderr)
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from edgerun.generate import perplexity

    f = Path(args.file)
    if not f.is_file():
        raise CLIError(f"file not found: {f}")
    try:
        text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CLIError(f"{f} is not UTF-8 text") from None
    runner = _load_runner(args, n_ctx=args.ctx)
    ids = runner.tokenizer.encode(text)
    try:
        ppl, n, chunks = perplexity(runner, ids, args.ctx)
    except ValueError as e:
        raise CLIError(str(e)) from None
    if args.json:
        print(json.dumps({"ppl": ppl, "tokens": n, "chunks": chunks}))
    else:
        print(f"perplexity {ppl:.4f} over {n} tokens in {chunks} chunks of {args.ctx}")
    return 0


# ----------------------------------------------------------------------------- parser


def add_placement_args(p: argparse.ArgumentParser) -> None:
    """The placement flags shared by run, perplexity, serve and chat."""
    p.add_argument("--placement", choices=["auto", "cpu", "gpu", "hybrid"], default="auto",
                   help="where tensors go (auto: attention + KV cache on the GPU when one is present)")
    p.add_argument("--vram-budget", type=_nonneg_float, default=None, metavar="GB",
                   help="use at most this much VRAM")
    p.add_argument("--override", action="append", default=[], metavar="REGEX=cpu|gpu",
                   help="force matching tensors onto a device (repeatable, like llama.cpp's -ot)")
    p.add_argument("--kv-type", choices=["f16", "f32"], default="f16",
                   help="CPU KV cache element type (f16 halves its memory; llama.cpp's --cache-type-k/v)")


def _add_model_args(p: argparse.ArgumentParser, ctx: int = 4096) -> None:
    p.add_argument("-m", "--model", required=True, help="catalog name or path to a .gguf file")
    p.add_argument("--threads", "-t", type=_positive_int, default=None, help="CPU threads")
    p.add_argument("--ctx", "-c", type=_positive_int, default=ctx, help="context size in tokens")
    p.add_argument("--backend", choices=["auto", "native", "numba", "reference"], default="auto",
                   help="CPU kernels (auto: native if built, else Numba)")
    add_placement_args(p)


def _optional(module: str) -> Callable[[Any], None] | None:
    import importlib

    try:
        return importlib.import_module(module).register  # type: ignore[no-any-return]
    except (ImportError, AttributeError):
        return None


_OPTIONAL = {"bench": "edgerun.bench", "plan": "edgerun.runtime.plan_cli", "serve": "edgerun.server.app",
             "loadtest": "edgerun.loadtest", "chat": "edgerun.tui"}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser; with `command`, only that optional subcommand's module is imported."""
    from edgerun.serving.speculative import add_speculative_args

    ap = _Parser(prog="edgerun", description="Run GGUF language models locally.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("pull", help="download a catalog model")
    p.add_argument("name")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("list", help="catalog and local models")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("inspect", help="describe a GGUF model")
    p.add_argument("model")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="generate from a prompt")
    _add_model_args(p)
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-n", "--n-predict", type=_positive_int, default=128, help="tokens to generate")
    p.add_argument("--temp", type=_nonneg_float, default=0.8, help="temperature (0 = greedy)")
    p.add_argument("--top-k", type=int, default=40)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--min-p", type=float, default=0.05)
    p.add_argument("--repeat-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--chat", action="store_true", help="send the prompt through the chat template")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_speculative_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("perplexity", help="perplexity of a text file")
    _add_model_args(p, ctx=512)
    p.add_argument("-f", "--file", required=True)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_perplexity)

    mods = [_OPTIONAL[command]] if command in _OPTIONAL else list(_OPTIONAL.values())
    for mod in mods:
        reg = _optional(mod)
        if reg is not None:
            reg(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    first = next((a for a in argv if not a.startswith("-")), None)
    ap = build_parser(first)
    args = ap.parse_args(argv)
    if not getattr(args, "func", None):
        ap.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CLIError as e:
        print(f"edgerun: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
