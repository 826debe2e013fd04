"""``edgerun run -m MODEL -p TEXT``: stream one continuation (or chat reply) to stdout."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edgerun.cli.args import SAMPLING, CLIError, add, add_model_args, load_runner, sampling_params
from edgerun.serving.spec_flags import add_speculative_args


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``run``."""
    p = sub.add_parser("run", help="generate from a prompt")
    add_model_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the prompt text")
    add(p, *SAMPLING)
    p.add_argument("--chat", action="store_true", help="send the prompt through the chat template")
    add(p, "json", "deterministic", json={"help": "print one JSON object"})
    add_speculative_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Load, encode, stream; timings on stderr (or all in one JSON object with --json)."""
    from edgerun.generate import ContextOverflowError, stream
    from edgerun.serving.speculative import SpeculativeError, config_from_args, speculator_from_args
    from edgerun.text.tokenizer import ChatTemplateError

    params = sampling_params(args)
    try:
        config_from_args(args)  # a bad flag fails before the model loads
    except SpeculativeError as e:
        raise CLIError(str(e)) from None
    runner = load_runner(args)
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
        for ev in stream(runner, ids, params, spec, deterministic=args.deterministic):
            parts.append(ev.text)
            gen_ids += ev.token_ids
            if not args.json and ev.text:
                sys.stdout.write(ev.text)
                sys.stdout.flush()
    except ContextOverflowError as e:
        raise CLIError(str(e)) from None
    assert ev is not None, "stream() yields at least its final event"
    t = ev.timings
    if args.json:
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
        st = ev.spec
        sp = (f", {spec.mode}: {st.accepted}/{st.proposed} accepted, {st.tokens_per_step:.2f} tokens/step"
              if spec is not None and st is not None else "")
        print(f"[{len(ids)} prompt tokens, {len(gen_ids)} generated; ttft {t.ttft_s * 1000:.0f} ms, "
              f"prefill {t.prefill_tok_s:.1f} tok/s, decode {t.decode_tok_s:.1f} tok/s, "
              f"{runner.backend.name} x{runner.n_threads}{sp}]", file=sys.stderr)
    return 0
