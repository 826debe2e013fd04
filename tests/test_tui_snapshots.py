"""SVG snapshots of the chat app's main screens (regenerate with --snapshot-update).

Deterministic: fixed terminal size, scripted backend with fixed timings, live CPU/RAM/GPU
readings frozen, history times frozen, an empty models directory.
"""

from __future__ import annotations

import asyncio

import pytest

from edgerun.tui.backend import ScriptedBackend

SIZE = (120, 40)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def _env(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGERUN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("EDGERUN_MODELS", str(tmp_path / "models"))
    monkeypatch.chdir(tmp_path)


def make_app():
    from edgerun.tui.app import ChatApp

    return ChatApp(ScriptedBackend(delay=0.001, model="qwen2.5-coder-0.5b-instruct"), freeze_stats=True)


async def settle(pilot) -> None:
    app = pilot.app
    for _ in range(400):
        await pilot.pause(0.02)
        if app.ready and not app.chat.streaming:
            break
    await pilot.pause(0.1)
    await asyncio.sleep(0.1)
    await pilot.pause()


def test_main_screen_empty(snap_compare):
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=settle)


def test_main_screen_after_reply(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        pilot.app.chat.send("Show me a greet function in Python")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_settings_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f4")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_model_picker(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        await pilot.press("f3")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_history_screen(snap_compare):
    async def run_before(pilot):
        await settle(pilot)
        pilot.app.chat.send("How do I reverse a list?")
        await settle(pilot)
        await pilot.press("ctrl+n")
        pilot.app.chat.send("Explain Python decorators")
        await settle(pilot)
        await pilot.press("f2")
        await settle(pilot)

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)
