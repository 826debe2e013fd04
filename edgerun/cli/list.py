"""``edgerun list``: the catalog (downloaded or not) and other local .gguf files."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from edgerun.cli.args import add


def register(sub: Any) -> argparse.ArgumentParser:
    """Add ``list``."""
    p = sub.add_parser("list", help="catalog and local models")
    add(p, "json")
    return p


def run(args: argparse.Namespace) -> int:
    """Print the catalog with each model's local state, then local files outside it."""
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
