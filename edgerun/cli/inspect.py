"""``edgerun inspect MODEL``: architecture, sizes, tensor types and bytes of a GGUF file."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgerun.cli.args import CLIError, add, resolve


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``inspect``."""
    p = sub.add_parser("inspect", help="describe a GGUF model")
    p.add_argument("model", help="catalog name or path to a .gguf file")
    add(p, "json")
    return p


def run(args: argparse.Namespace) -> int:
    """Read the file's header and tensor table (no weights) and print a summary."""
    from gguf import GGMLQuantizationType

    from edgerun.quant.gguf_file import GGUFError, GGUFFile

    path = resolve(args.model)
    try:
        gf = GGUFFile(path)
    except GGUFError as e:
        raise CLIError(str(e)) from None
    with gf:
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
