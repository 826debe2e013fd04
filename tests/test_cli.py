"""The command line: bad input gets one clear line and a non-zero exit; real runs answer."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgerun.cli import main


def edgerun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgerun.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("argv, msg", [
    (["run", "-m", "/nonexistent/model.gguf", "-p", "hi"], "model file not found"),
    (["run", "-m", "no-such-model", "-p", "hi"], "unknown model 'no-such-model'"),
    (["run", "-m", "x.gguf", "-p", "hi", "-n", "0"], "expected a positive integer"),
    (["run", "-m", "x.gguf", "-p", "hi", "--temp", "-1"], "expected a finite number"),
    (["run", "-m", "x.gguf", "-p", "hi", "--bogus"], "unrecognized arguments: --bogus"),
    (["run", "-p", "hi"], "the following arguments are required: -m/--model"),
    (["perplexity", "-m", "x.gguf", "-f", "/nonexistent.txt"], "not found"),
    (["inspect", "/nonexistent.gguf"], "model file not found"),
    (["pull", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_bad_input_one_line(argv, msg, capsys):
    with pytest.raises(SystemExit) as ei:
        code = main(argv)
        raise SystemExit(code)
    assert ei.value.code == 2
    err = capsys.readouterr().err.strip()
    assert msg in err
    assert len(err.splitlines()) == 1


def test_malformed_model_file(tmp_path, capsys):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 20)
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgerun: error:") and len(err.splitlines()) == 1
    assert main(["run", "-m", str(bad), "-p", "hi"]) == 2


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    names = {r["name"] for r in json.loads(capsys.readouterr().out)["catalog"]}
    assert {"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "gemma-3-270m"} <= names


@pytest.mark.real
def test_pull_present_model_prints_path(gemma_path):
    r = edgerun("pull", "gemma-3-270m")
    assert r.returncode == 0
    assert r.stdout.strip().splitlines()[-1] == str(gemma_path)


@pytest.mark.real
def test_inspect_real(gemma_path, capsys):
    assert main(["inspect", str(gemma_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "gemma3" and info["layers"] == 18
    assert set(info["tensor_types"]) == {"F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"}
    assert info["chat_template"] is False


@pytest.mark.real
def test_run_json_greedy_is_deterministic(gemma_path):
    args = ["run", "-m", str(gemma_path), "-p", "The capital of France is", "-n", "8", "--temp", "0",
            "--threads", "2", "--json"]
    a, b = edgerun(*args), edgerun(*args)
    assert a.returncode == 0, a.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    for key in ("text", "tokens", "prompt_tokens", "ttft_ms", "prefill_tok_s", "decode_tok_s"):
        assert key in ja
    assert ja["tokens"] == jb["tokens"] and len(ja["tokens"]) == 8
    assert "France" in ja["text"]  # llama.cpp gives the same 8 tokens


@pytest.mark.real
def test_run_chat_and_seeded_sampling(qwen05_path):
    base = ["run", "-m", str(qwen05_path), "-p", "Name a color.", "--chat", "-n", "6", "--json",
            "--seed", "7", "--temp", "0.9"]
    a, b = edgerun(*base), edgerun(*base)
    assert a.returncode == 0, a.stderr
    assert json.loads(a.stdout)["tokens"] == json.loads(b.stdout)["tokens"]
    assert json.loads(a.stdout)["prompt_tokens"] > 10  # the chat template wrapped the prompt


@pytest.mark.real
def test_run_prompt_longer_than_context(gemma_path):
    r = edgerun("run", "-m", str(gemma_path), "-p", "word " * 300, "--ctx", "64", "-n", "4")
    assert r.returncode == 2
    assert "does not fit the context" in r.stderr


@pytest.mark.real
def test_perplexity_json(gemma_path, tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    r = edgerun("perplexity", "-m", str(gemma_path), "-f", str(f), "--ctx", "64", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["chunks"] >= 2 and out["tokens"] == out["chunks"] * 63
    assert 1.0 < out["ppl"] < 20  # repeated text is easy to predict
