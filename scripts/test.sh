#!/usr/bin/env bash
# Set up .venv (idempotent) and run lint + the whole test suite, real models included.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/ruff check .
# Real models are fetched on first use into models/ (git-ignored).
.venv/bin/python -m pytest -q -rs --durations=15 "$@"
