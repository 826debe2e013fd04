"""Entry point of the one-file binary (scripts/build_binary.sh).

A binary built with `--with-model NAME` carries that GGUF under `embedded_models/` in its
bundle: `-m NAME` (or the file's name) then means the embedded file, and `run`, `chat`,
`serve`, `tokenize` and `bench` default to it when `-m` is not given. Nothing is copied to
the models directory and nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

_MODEL_COMMANDS = {"run", "chat", "serve", "tokenize", "bench", "perplexity", "plan"}


def _embedded() -> dict[str, Path]:
    base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parent)) / "embedded_models"
    out: dict[str, Path] = {}
    for p in sorted(base.glob("*.gguf")) if base.is_dir() else []:
        out[p.name] = out[p.stem] = p
        alias = p.with_suffix(".name")
        if alias.is_file():
            out[alias.read_text().strip()] = p
    return out


def _rewrite(argv: list[str], models: dict[str, Path]) -> list[str]:
    if not models:
        return argv
    argv = list(argv)
    for i, a in enumerate(argv[:-1]):
        if a in ("-m", "--model") and argv[i + 1] in models:
            argv[i + 1] = str(models[argv[i + 1]])
            return argv
        if a in ("-m", "--model"):
            return argv
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in _MODEL_COMMANDS and not any(a.startswith("--model=") for a in argv):
        default = next(iter(models.values()))
        argv[argv.index(command) + 1 : argv.index(command) + 1] = ["-m", str(default)]
    return argv


def main() -> int:
    from edgerun.cli import main as cli_main

    return cli_main(_rewrite(sys.argv[1:], _embedded()))


if __name__ == "__main__":
    sys.exit(main())
