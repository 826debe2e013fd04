"""``edgerun plan -m MODEL``: print the placement plan of a model (per-layer table, bytes per device)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edgerun.cli.args import CLIError, add, gigabytes, positive_int, resolve


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.1f} MiB"


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``plan``."""
    p = sub.add_parser("plan", help="show where each tensor would run (CPU / GPU)")
    add(p, "model", "ctx")
    p.add_argument("--vram-gb", type=gigabytes, default=None, metavar="GB",
                   help="pretend this much free VRAM in GiB (default: probe the GPU)")
    p.add_argument("--batch", type=positive_int, default=1, help="sequences served at once")
    p.add_argument("--gpu", default=None, metavar="NAME",
                   help="GPU table entry for the predicted speeds when no GPU is probed "
                        "(4090, 3090, '4060 laptop', a100, h100, h200; default: the probed GPU, else 4090)")
    add(p, "placement", "vram_budget", "override", "kv_type", "json",
        json={"help": "print the plan as JSON"})
    return p


def run(args: argparse.Namespace) -> int:
    """Plan from the file's tensor table and metadata (no weights are read)."""
    from edgerun.models.base import ModelLoadError
    from edgerun.quant.gguf_file import GGUFError, GGUFFile
    from edgerun.runtime.planner import CPU_KV_BYTES, GPU_SPECS, PlanError, plan_for_file

    if args.gpu is not None and args.gpu.lower() not in GPU_SPECS:
        raise CLIError(f"--gpu {args.gpu!r} is not in the GPU table ({', '.join(GPU_SPECS)})")

    path = resolve(args.model)
    gib = 1 << 30
    try:
        gf = GGUFFile(path)
    except GGUFError as e:
        raise CLIError(f"cannot load {path}: {e}") from None
    try:
        plan = plan_for_file(
            gf, ctx=args.ctx, batch=args.batch, mode=args.placement,
            vram_bytes=None if args.vram_gb is None else int(args.vram_gb * gib),
            vram_budget=None if args.vram_budget is None else int(args.vram_budget * gib),
            overrides=args.override, gpu_name=args.gpu, kv_bytes_per_elem=CPU_KV_BYTES[args.kv_type])
    except (PlanError, ModelLoadError, GGUFError, KeyError, ValueError) as e:
        raise CLIError(str(e).strip("'\"")) from None
    finally:
        gf.close()
    if args.json:
        print(json.dumps(plan.to_dict()))
        return 0
    print(f"model {path.name}: {plan.n_layers} layers, ctx {plan.ctx} x batch {plan.batch}, "
          f"placement {plan.mode}")
    if args.vram_gb is None:
        from edgerun.runtime.devices import probe_gpus

        gpus = probe_gpus()
        print(f"GPU: {gpus[0].name}, {_gib(gpus[0].vram_free)} free of {_gib(gpus[0].vram_total)}" if gpus
              else "GPU: none found (use --vram-gb to plan for one)")
    print(f"VRAM free {_gib(plan.vram_free)}, usable {_gib(plan.vram_usable)} "
          f"(reserve {_gib(plan.reserve)})")
    print(f"{'layer':>5}  {'attn':<6} {'ffn':<6} {'kv':<4}")
    for i, d in plan.layers.items():
        print(f"{i:>5}  {d['attn']:<6} {d['ffn']:<6} {plan.kv_devices[i]:<4}")
    emb = plan.tensors.get("token_embd.weight")
    if emb is not None:
        print(f"token_embd: {emb.device}   output head ({plan.head_tensor}): {plan.head_device}")
    kv = plan.kv_cache
    print(f"KV cache: {_gib(kv['bytes'])} on {kv['device']} (gpu {_gib(kv['gpu_bytes'])}, "
          f"cpu {_gib(kv['cpu_bytes'])})")
    t = plan.totals
    print(f"total: gpu {_gib(t['gpu'])}, cpu {_gib(t['cpu'])}")
    for line in plan.speed_lines()[1:]:  # the headline is already among the plan's notes
        print(line)
    for n in plan.notes:
        print(f"note: {n}")
    return 0
