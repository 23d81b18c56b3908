"""The fxopt command: bad arguments give one clear line and a non-zero exit; the bench measures."""
import json
import subprocess
import sys

import pytest


def fxopt_cli(*args):
    return subprocess.run([sys.executable, "-m", "fxopt.tools.cli", *args], capture_output=True, text=True)


def test_passes_lists_the_default_pipeline():
    proc = fxopt_cli("passes")
    assert proc.returncode == 0
    assert "eliminate-dead-nodes" in proc.stdout and "# in default" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (("optimize", "gpt5"), "unknown model 'gpt5'"),
    (("bench", "--models", "gpt5"), "unknown model 'gpt5'"),
    (("bench", "--configs", "tvm"), "unknown configuration(s) ['tvm']"),
    (("bench", "--reps", "0"), "--reps: must be at least 1, got 0"),
    (("bench", "--processes", "0"), "--processes: must be at least 1, got 0"),
    (("bench", "--configs", "fxopt --passes"), "needs --passes SPEC"),
    (("bench", "--passes", "fuse-attention{nope=1}"), "--passes: bad options for pass 'fuse-attention'"),
    (("bench", "--plot", "/nonexistent/dir/p.png"), "--plot:"),
    (("optimize", "minilm", "--batch", "0"), "--batch: must be at least 1, got 0"),
    (("bench", "--warm-start", "--models", "gpt5"), "unknown model(s) ['gpt5']"),
    (("bench", "--warm-start", "--modes", "fp32,int9"), "unknown mode(s) ['int9']: choose from fp32, int8"),
    (("optimize", "minilm", "--reps", "0"), "--reps must be at least 1"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
    (("generate", "smollm2", "hi", "--max-new-tokens", "0"), "--max-new-tokens must be at least 1"),
    (("generate", "smollm2", "hi", "--decode-precision", "int3"), "invalid choice: 'int3'"),
    (("bench", "--generate", "--configs", "vllm"), "unknown configuration ['vllm']"),
    (("optimize", "minilm", "--save", "/nonexistent/dir/m.fxopt"), "--save: the folder /nonexistent/dir does not"),
    (("optimize", "minilm", "--save", "README.md"), "--save: README.md exists and is not an fxopt artifact"),
    (("bench", "--artifact", "--models", "gpt5"), "unknown model(s) ['gpt5']"),
    (("embed", "x.fxopt", "docs.txt", "--out", "e.csv"), "--out must end in .npy or .parquet"),
])
def test_bad_arguments(args, message):
    proc = fxopt_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_pass_in_optimize_is_one_line():
    proc = fxopt_cli("optimize", "minilm", "--passes", "eliminate-dead-nodez", "--reps", "1")
    assert proc.returncode == 1
    assert "fxopt: error: unknown pass 'eliminate-dead-nodez'; did you mean eliminate-dead-nodes" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bench_measures_fxopt_against_eager_in_one_process():
    from fxopt.tools.bench import measure, table

    m = measure("minilm", "fxopt", reps=3, warmup=1)
    assert m.eager_ms > 0 and m.candidate_ms > 0
    assert m.accuracy["min_cosine"] > 0.99999 and m.accuracy["max_rel_err"] < 1e-4
    assert "eliminate-dead-nodes" in m.extra
    assert set(m.host_rates) == {"fp32", "bf16"} and "host GEMM rate vs peak" in table([m])
    assert "minilm" in table([m]) and "speed vs eager" in table([m])


@pytest.mark.slow
def test_generate_streams_an_answer_and_reports_speed():
    proc = fxopt_cli("generate", "smollm2", "What is the capital of France?", "--max-new-tokens", "12")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Paris" in proc.stdout
    assert "tokens/s" in proc.stderr and "first token after" in proc.stderr


def test_bench_configuration_names_survive_the_comma_separated_flag():
    from fxopt.tools import bench, bench_generate
    for module in (bench, bench_generate):
        assert all("," not in name for name in module.CONFIGS) and set(module.DEFAULT_CONFIGS) <= set(module.CONFIGS)


def test_output_paths_are_checked_before_any_work(tmp_path, capsys):
    from fxopt.tools.cli import main
    assert main(["dump", "minilm", "--out", "/nonexistent/dir/x.txt"]) == 2
    assert "--out: the folder /nonexistent/dir does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--write", str(tmp_path)])
    assert f"--write: {tmp_path} is a directory" in capsys.readouterr().err


def test_cache_list_and_clear(tmp_path, monkeypatch, capsys):
    from fxopt.tools.cli import main
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "fxopt").mkdir()
    (tmp_path / "fxopt" / "gemm-abc.json").write_text("{}")
    assert main(["cache"]) == 0 and "gemm-abc.json" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0 and "removed 1 cached" in capsys.readouterr().out
    assert not list((tmp_path / "fxopt").glob("*.json"))


def test_host_spells_rejects_bad_arguments_before_any_work(capsys):
    from fxopt.tools import host_spells
    with pytest.raises(SystemExit):
        host_spells.main(["--modes", "int9"])
    assert "--modes: unknown mode(s) ['int9']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        host_spells.main(["--seconds", "-1"])
    assert "--seconds: must be at least 0" in capsys.readouterr().err


@pytest.mark.slow
def test_host_spells_takes_rounds_and_groups_them_by_the_bf16_rate(tmp_path, capsys):
    """One round at least (``--seconds 0``): each mode's and eager's seconds and both rates, in the JSON and a band."""
    from fxopt.tools import host_spells
    assert host_spells.main(["--modes", "bf16", "--seconds", "0", "--json", str(tmp_path / "r.json")]) == 0
    rounds = json.loads((tmp_path / "r.json").read_text())["rounds"]
    assert len(rounds) >= 1 and set(rounds[0]) == {"eager", "bf16", "rate_fp32", "rate_bf16"}
    assert "rounds; bf16" in capsys.readouterr().out
