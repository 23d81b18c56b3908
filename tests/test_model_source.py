"""Any model, from every command: a local Hugging Face checkpoint, a config.json, module:factory; and one clear
line for each way a checkpoint can be broken."""
import json
import subprocess
import sys

import pytest
import torch
import transformers as tf

from fxopt.model_source import ModelSourceError, load_source


def _tiny_llama():
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                              num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=64)).eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "tiny-llama"
    torch.manual_seed(0)
    _tiny_llama().save_pretrained(path)
    return path


FACTORY = '''
import torch
import fxopt

class Swish(torch.nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * x


def tiny(batch=2, seq=8):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), Swish(), torch.nn.Linear(32, 16)).eval()
    return model, (torch.randn(batch * seq, 16),)

def hand_written_silu(x):
    return x * torch.sigmoid(x)

fuse_silu = fxopt.register_pass(fxopt.pattern_pass("fuse-my-silu", hand_written_silu,
                                                   lambda x: torch.ops.aten.silu.default(x),
                                                   example_inputs=(torch.randn(4, 8),)), default=False)

def not_a_pair():
    return 42
'''


@pytest.fixture
def factory_dir(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_a_checkpoint_loads_with_its_architecture_class(checkpoint):
    source = load_source(str(checkpoint))
    assert type(source.model).__name__ == "LlamaForCausalLM" and source.kind == "checkpoint"
    inputs = source.inputs(3, 10)
    assert inputs["input_ids"].shape == (3, 10) and int(inputs["input_ids"].max()) < 128


def test_a_config_alone_gives_random_weights(checkpoint, tmp_path, capsys):
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    source = load_source(str(tmp_path / "config.json"))
    assert type(source.model).__name__ == "LlamaForCausalLM" and source.kind == "config"
    assert "random weights" in capsys.readouterr().err


def test_a_factory_takes_batch_and_seq(factory_dir):
    source = load_source("my_models:tiny")
    assert source.inputs(3, 5)[0].shape == (15, 16)


@pytest.mark.parametrize("spec, message", [
    ("my_models:nothing", "has no function 'nothing'"),
    ("my_models:not_a_pair", "must return (model, example_inputs)"),
    ("no_such_module:f", "cannot import module 'no_such_module'"),
    ("nonsense", "unknown model 'nonsense'"),
])
def test_bad_factories_are_one_clear_line(factory_dir, spec, message):
    with pytest.raises(ModelSourceError) as e:
        load_source(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("breakage, message", [
    ("truncate", "model.safetensors: truncated"),
    ("garbage", "model.safetensors: corrupt or truncated"),
    ("bad json", "config.json: not valid JSON"),
    ("no model_type", "config.json: no 'model_type'"),
    ("unknown model_type", "config.json:"),
])
def test_broken_checkpoints_are_one_line_naming_the_file(checkpoint, tmp_path, breakage, message):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoint.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    weights, config = broken / "model.safetensors", broken / "config.json"
    if breakage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif breakage == "garbage":
        weights.write_bytes(b"\xff" * 64)
    elif breakage == "bad json":
        config.write_text(config.read_text()[:-10])
    elif breakage == "no model_type":
        config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model_type"}))
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "no-such-arch"}))
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "optimize", str(broken)], capture_output=True,
                          text=True)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[fxopt]")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_optimize_and_dump_take_a_checkpoint(checkpoint):
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "optimize", str(checkpoint), "--batch", "2",
                           "--seq", "16", "--reps", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "batch 2 × 16 tokens" in proc.stdout and "speed vs eager" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "dump", str(checkpoint), "--format", "summary",
                           "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0 and "rms_norm" in proc.stdout, proc.stderr


@pytest.mark.slow
def test_bench_ab_of_a_registered_pass_on_a_factory_with_json_and_plot(factory_dir):
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "bench", "--models", "my_models:tiny",
                           "--passes", "eliminate-dead-nodes,canonicalize,fuse-my-silu", "--reps", "2",
                           "--json", "out.json", "--plot", "out.png"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((factory_dir / "out.json").read_text())["results"]
    assert [r["config"] for r in rows] == ["fxopt", "fxopt --passes"]
    assert all(r["speedup"] > 0 and not r["failed"] for r in rows), rows
    assert "fuse-my-silu=1" in rows[1]["extra"]  # the per-pass table of the custom pipeline: it fired
    assert (factory_dir / "out.png").read_bytes()[:4] == b"\x89PNG"


def test_dump_shows_a_pass_the_factory_module_registers(factory_dir):
    proc = subprocess.run([sys.executable, "-m", "fxopt.tools.cli", "dump", "my_models:tiny", "--quiet",
                           "--passes", "eliminate-dead-nodes,canonicalize,fuse-my-silu"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "aten.silu" in proc.stdout and "sigmoid" not in proc.stdout
