"""Shared fixtures: real model files (pulled on first use) and runners over them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def real_model(name: str) -> Path:
    """Path of a catalog model, downloading it the first time (skipped with EDGERUN_NO_PULL=1)."""
    from edgerun.catalog import ModelError, load_catalog, local_path, resolve_model

    entry = load_catalog()[name]
    p = local_path(entry)
    if not p.is_file() and os.environ.get("EDGERUN_NO_PULL"):
        pytest.skip(f"{name} not downloaded and EDGERUN_NO_PULL is set")
    try:
        return resolve_model(name)
    except ModelError as e:  # pragma: no cover - network trouble
        pytest.skip(f"cannot fetch {name}: {e}")


@pytest.fixture(scope="session")
def qwen05_path() -> Path:
    return real_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return real_model("gemma-3-270m")


@pytest.fixture(autouse=True)
def _fixed_cpu_speed(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's `auto` picks the layout predicted fastest from the measured CPU speed; tests
    get one fixed figure (a slow laptop's) so their plans do not depend on the machine or its load.
    tests/test_planner.py checks the measurement itself."""
    import edgerun.runtime.planner as planner

    if "cpu_speed" in request.node.name:
        return
    monkeypatch.setattr(planner, "cpu_speed", lambda threads=None: {"read_gbs": 15.0, "gemm_gflops": 140.0})
