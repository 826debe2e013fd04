"""End to end: the real `edgerun chat` with the real qwen2.5-coder-0.5b-instruct in tmux.

Measures the time to the first frame and the keystroke echo while a reply streams, and
prints the captured pane of the conversation.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.real, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
MODEL = "qwen2.5-coder-0.5b-instruct"


def _pane(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True,
                          text=True).stdout


def _wait_for(session: str, pattern: str, timeout: float, poll: float = 0.02) -> tuple[float, str]:
    """Seconds until `pattern` (regex) shows in the pane, and the pane text."""
    t0 = time.perf_counter()
    rx = re.compile(pattern)
    text = ""
    while time.perf_counter() - t0 < timeout:
        text = _pane(session)
        if rx.search(text):
            return time.perf_counter() - t0, text
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {pattern!r}; pane:\n{text}")


def _command() -> list[str]:
    exe = ROOT / ".venv" / "bin" / "edgerun"
    if exe.is_file():
        return [str(exe), "chat"]
    return [sys.executable, "-c", "from edgerun.tui.app import main; raise SystemExit(main())"]


@pytest.fixture
def session(tmp_path):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    from edgerun.catalog import resolve_model

    resolve_model(MODEL)  # pull outside the timed part
    home = tmp_path / "home"
    home.mkdir()
    (home / "chat_settings.json").write_text(json.dumps(
        {"system_prompt": "You are a helpful coding assistant. Be brief.", "temperature": 0.0,
         "top_p": 1.0, "max_tokens": 96}))
    name = f"edgerun-e2e-{os.getpid()}"
    yield name, home
    subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)


def test_real_chat_in_tmux(session):
    name, home = session
    threads = str(min(4, os.cpu_count() or 1))
    # COLUMNS/LINES inherited from pytest would override the pane's real size
    cmd = " ".join(["env", "-u", "COLUMNS", "-u", "LINES", f"EDGERUN_HOME={home}", "TERM=xterm-256color",
                    *_command(), "-m", MODEL,
                    "--threads", threads, "--ctx", "2048"])
    t0 = time.perf_counter()
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", "-c", str(ROOT),
                    cmd], check=True)
    subprocess.run(["tmux", "resize-window", "-t", name, "-x", "120", "-y", "40"], capture_output=True)
    _wait_for(name, r"edgerun chat", timeout=10)
    first_frame = time.perf_counter() - t0
    print(f"\nfirst frame after {first_frame:.3f} s")

    load_s, _ = _wait_for(name, r"● ready", timeout=300, poll=0.2)
    print(f"model ready after {load_s:.1f} s more")

    question = "Write a Python function that returns the sum of a list."
    subprocess.run(["tmux", "send-keys", "-t", name, "-l", question], check=True)
    subprocess.run(["tmux", "send-keys", "-t", name, "Enter"], check=True)
    _wait_for(name, r"▍ streaming", timeout=300, poll=0.05)
    subprocess.run(["tmux", "send-keys", "-t", name, "-l", "zqx"], check=True)
    echo_s, _ = _wait_for(name, r"zqx", timeout=10, poll=0.005)
    print(f"keystroke echo while streaming: {echo_s * 1000:.0f} ms")

    _, pane = _wait_for(name, r"\d+ tokens · [\d.]+ tok/s|max tokens reached|stopped", timeout=600, poll=0.2)
    time.sleep(0.5)
    pane = _pane(name)
    print("---- pane ----\n" + pane + "\n--------------")
    assert "def " in pane
    assert re.search(r"tok/s\s+[\d.]+", pane), "the side panel shows a tok/s figure"

    subprocess.run(["tmux", "send-keys", "-t", name, "C-q"], check=True)
    for _ in range(100):
        alive = subprocess.run(["tmux", "has-session", "-t", name], capture_output=True).returncode == 0
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, "Ctrl+Q quits the app"
    assert first_frame < 1.5, f"first frame took {first_frame:.2f} s"
    assert echo_s < 1.0, f"keystroke echo took {echo_s:.2f} s while streaming"
