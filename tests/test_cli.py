"""The command line: bad input gets one clear line and a non-zero exit; real runs answer;
Ctrl+C anywhere exits 130 with one line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest

from edgerun.cli import build_parser, main
from edgerun.cli.args import FLAGS, LOAD


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


# ----------------------------------------------------------------------------- option validation

RUN = ["run", "-m", "x.gguf", "-p", "hi"]
SERVE = ["serve", "-m", "x.gguf"]


@pytest.mark.parametrize("argv, msg", [
    pytest.param([*RUN, "--seed", "-2"], "argument --seed: expected a seed in [0, 2^64) or -1",
                 id="seed-neg"),
    pytest.param([*RUN, "--seed", str(2**64)], "argument --seed: expected a seed", id="seed-huge"),
    pytest.param([*RUN, "--seed", "1.5"], "argument --seed: expected an integer seed", id="seed-float"),
    pytest.param([*RUN, "--temp", "1e-320"], "argument --temp: 1e-320 is too small: use 0 for greedy",
                 id="temp-denormal"),
    pytest.param([*RUN, "--temp", "nan"], "argument --temp: expected a finite number >= 0, got 'nan'",
                 id="temp-nan"),
    pytest.param([*RUN, "--temp", "inf"], "NaN and infinity are refused", id="temp-inf"),
    pytest.param([*RUN, "--repeat-penalty", "1e-40"], "argument --repeat-penalty: expected a number in "
                 "[0.001, 1000]", id="penalty-tiny"),
    pytest.param([*RUN, "--repeat-penalty", "NaN"], "argument --repeat-penalty", id="penalty-nan"),
    pytest.param([*RUN, "--repeat-penalty", "0"], "argument --repeat-penalty", id="penalty-zero"),
    pytest.param([*RUN, "--top-p", "0"], "argument --top-p: expected a number in (0, 1]", id="top-p-zero"),
    pytest.param([*RUN, "--top-p", "-inf"], "argument --top-p", id="top-p-inf"),
    pytest.param([*RUN, "--min-p", "1"], "argument --min-p: expected a number in [0, 1)", id="min-p-one"),
    pytest.param([*RUN, "--top-k", "-1"], "argument --top-k: expected an integer >= 0", id="top-k-neg"),
    pytest.param([*RUN, "--stop", ""], "argument --stop: expected a non-empty string", id="stop-empty"),
    pytest.param([*RUN, "-n", "0"], "argument -n/--n-predict: expected a positive integer", id="n-zero"),
    pytest.param([*RUN, "--ctx", "-5"], "argument -c/--ctx: expected a positive integer", id="run-ctx"),
    pytest.param([*RUN, "--threads", "0"], "argument -t/--threads: expected a positive integer",
                 id="threads-zero"),
    pytest.param([*RUN, "--threads", "100000"], "argument -t/--threads: expected at most 512 threads",
                 id="threads-huge"),
    pytest.param([*RUN, "--vram-budget", "nan"], "argument --vram-budget", id="vram-nan"),
    pytest.param([*RUN, "--vram-budget", "1e300"], "argument --vram-budget: expected at most",
                 id="vram-huge"),
    pytest.param([*SERVE, "--max-running", "0"], "argument --max-running: expected a positive integer",
                 id="max-running"),
    pytest.param([*SERVE, "--max-batch-tokens", "0"], "argument --max-batch-tokens: expected a positive",
                 id="max-batch-tokens"),
    pytest.param([*SERVE, "--max-queue", "0"], "argument --max-queue: expected a positive integer",
                 id="max-queue"),
    pytest.param([*SERVE, "--port", "99999"], "argument --port: expected a port number 1-65535",
                 id="port-high"),
    pytest.param([*SERVE, "--port", "0"], "argument --port: expected a port number 1-65535", id="port-zero"),
    pytest.param([*SERVE, "--log-level", "bogus"], "argument --log-level: expected one of critical, error",
                 id="log-level"),
    pytest.param([*SERVE, "--ctx", "0"], "argument -c/--ctx: expected a positive integer", id="serve-ctx"),
    pytest.param([*SERVE, "--api-key", ""], "argument --api-key: expected a non-empty string", id="api-key"),
    pytest.param([*SERVE, "--kv-blocks", "0"], "argument --kv-blocks: expected a positive", id="kv-blocks"),
    pytest.param(["chat", "--ctx", "0"], "argument -c/--ctx: expected a positive integer", id="chat-ctx"),
    pytest.param(["chat", "--threads", "x"], "argument -t/--threads: expected a positive integer",
                 id="chat-threads"),
    pytest.param(["perplexity", "-m", "x", "-f", "y", "--ctx", "0"], "argument -c/--ctx", id="ppl-ctx"),
    pytest.param(["plan", "-m", "x", "--ctx", "0"], "argument -c/--ctx", id="plan-ctx"),
    pytest.param(["plan", "-m", "x", "--vram-budget-gb", "inf"], "argument --vram-budget", id="plan-alias"),
    pytest.param(["loadtest", "--concurrency", "1,0"], "argument --concurrency: expected comma-separated",
                 id="concurrency"),
    pytest.param(["loadtest", "--requests", "0"], "argument --requests", id="requests"),
    pytest.param(["bench", "-m", "x", "--repeats", "0"], "argument --repeats", id="repeats"),
])
def test_numeric_options_refused_in_one_line(argv: list[str], msg: str) -> None:
    r = edgerun(*argv, timeout=60)
    assert r.returncode == 2, r.stderr
    err = r.stderr.strip()
    assert err.startswith("edgerun: error: ") and msg in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in r.stderr


def test_seed_minus_one_means_random() -> None:
    # llama.cpp's convention: -1 asks for a random seed (SamplingParams.seed None)
    assert build_parser().parse_args([*RUN, "--seed", "-1"]).seed is None
    assert build_parser().parse_args([*RUN, "--seed", "0"]).seed == 0
    assert build_parser().parse_args([*RUN, "--temp", "0"]).temp == 0.0


def test_load_flags_identical_everywhere() -> None:
    """Every command that loads a model takes the same LOAD flags with the same parsing."""
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "command").choices
    for cmd in ("run", "perplexity", "serve", "chat"):
        actions = {a.dest: a for a in sub[cmd]._actions if a.help != argparse.SUPPRESS}
        for key in LOAD:
            a = actions[key]
            assert tuple(a.option_strings) == FLAGS[key].names, (cmd, key)
            assert a.type is FLAGS[key].kwargs.get("type"), (cmd, key)


def test_plan_old_spellings_still_work(capsys: pytest.CaptureFixture[str]) -> None:
    a = build_parser().parse_args(["plan", "-m", "x", "--vram-budget-gb", "2", "-ot", "ffn=cpu",
                                   "--override", "attn=gpu"])
    assert a.vram_budget == 2.0 and a.override == ["ffn=cpu", "attn=gpu"]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["plan", "--help"])
    assert "--vram-budget-gb" not in capsys.readouterr().out  # hidden from --help


def test_version_from_package_metadata() -> None:
    r = edgerun("--version", timeout=60)
    assert r.returncode == 0
    assert r.stdout.strip() == f"edgerun {version('edgerun')}"


def test_missing_optional_package_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import edgerun.cli.list as list_cmd

    def needs_cupy(args: object) -> int:
        raise ModuleNotFoundError("No module named 'cupy'", name="cupy")

    monkeypatch.setattr(list_cmd, "run", needs_cupy)
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("edgerun: error: 'edgerun list' needs the Python package 'cupy', which is not installed "
                   "(pip install 'edgerun[cuda]')")


def test_own_import_errors_are_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    import edgerun.cli.list as list_cmd

    def broken(args: object) -> int:
        raise ModuleNotFoundError("No module named 'edgerun.nothing'", name="edgerun.nothing")

    monkeypatch.setattr(list_cmd, "run", broken)
    with pytest.raises(ModuleNotFoundError, match="edgerun.nothing"):
        main(["list"])


# ----------------------------------------------------------------------------- the runner factory


def test_factory_parses_the_file_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgerun.quant import gguf_file
    from edgerun.runtime.factory import RunnerOptions, make_runner
    from tests.synth import bench_gpu_module

    bench = bench_gpu_module()  # its synthetic files carry a tokenizer, which a Runner needs
    shape = bench.Shape("f", "qwen2", 2, 128, 256, 4, 2, 600, qkv_bias=True, tied=True, ctx=256)
    path = bench.write_synthetic_gguf(tmp_path / "m.gguf", shape, qtype=8, seed=1)
    opened: list[Path] = []
    init = gguf_file.GGUFFile.__init__

    def counting(self: gguf_file.GGUFFile, p: str | os.PathLike) -> None:
        opened.append(Path(p))
        init(self, p)

    monkeypatch.setattr(gguf_file.GGUFFile, "__init__", counting)
    # auto placement plans (no GPU here: the plan keeps everything on the CPU) and then loads
    r = make_runner(path, RunnerOptions(n_ctx=64, n_threads=1, backend="reference"), vram_bytes=0)
    assert opened == [path]
    assert r.gguf.path == path and r.n_ctx == 64
    with pytest.raises(TypeError):
        make_runner(path, bogus=1)


# ----------------------------------------------------------------------------- Ctrl+C


def _popen(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgerun.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _interrupted(p: subprocess.Popen) -> str:
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert err.strip().splitlines()[-1] == "edgerun: interrupted" and "Traceback" not in err, err
    return out


def _wait_mapped(p: subprocess.Popen, path: Path) -> None:
    """Until the child maps the model file: it is parsing and loading it."""
    maps = Path(f"/proc/{p.pid}/maps")
    for _ in range(6000):
        if p.poll() is not None:
            raise AssertionError(p.stderr.read() if p.stderr else "exited")
        try:
            if str(path) in maps.read_text():
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise AssertionError("the model file was never mapped")


@pytest.mark.real
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc/PID/maps")
def test_ctrl_c_during_load_exits_130(qwen05_path: Path) -> None:
    p = _popen("run", "-m", str(qwen05_path), "-p", "1, 2, 3,", "-n", "4000", "--temp", "0")
    _wait_mapped(p, qwen05_path)
    assert _interrupted(p) == ""  # nothing generated yet


@pytest.mark.real
def test_ctrl_c_during_generation_exits_130(gemma_path: Path) -> None:
    p = _popen("run", "-m", str(gemma_path), "-p", "1, 2, 3, 4,", "-n", "4000", "--temp", "0",
               "--threads", "2")
    assert p.stdout is not None
    first = p.stdout.read(1)  # generation has begun
    assert first
    _interrupted(p)


@pytest.mark.real
def test_ctrl_c_during_server_start_exits_130(gemma_path: Path) -> None:
    p = _popen("serve", "-m", str(gemma_path), "--port", "18473", "--ctx", "256", "--threads", "2")
    assert p.stdout is not None
    assert p.stdout.readline().startswith("edgerun: serving")  # loaded; uvicorn starts next
    _interrupted(p)
