"""Saved artifacts (fxopt.save / fxopt.load): real MiniLM and a small Llama round-trip without the Python model or
a recompile, with the same outputs, input checks and generate(); byte-wise corrupted, truncated, incomplete or
foreign artifacts fail with an ArtifactError that names the problem; loading never unpickles; the compiled and the
loaded module give every one of 8 threads the right answer."""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
import threading

import pytest
import torch

import fxopt
from fxopt import native_kernels
from fxopt.artifact import MANIFEST
from fxopt.errors import ArtifactError, InputError


@pytest.fixture(scope="module")
def minilm_loaded(minilm_artifact):
    return fxopt.load(minilm_artifact)


def test_loaded_minilm_matches_the_compiled_module(minilm, minilm_compiled, minilm_loaded):
    for batch, seq in [(8, 128), (3, 57), (1, 5)]:
        inputs = minilm.inputs(batch, seq)
        got, want = minilm_loaded(**inputs), minilm_compiled(**inputs)
        assert type(got) is type(want)
        # the in-process compile may pick MKL for some GEMMs (its target stage); the artifact's freezing picks
        # oneDNN: the same arithmetic up to fp32 rounding
        for a, b in zip(got.to_tuple(), want.to_tuple()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got.last_hidden_state, minilm.model(**inputs).last_hidden_state,
                                   rtol=1e-4, atol=1e-4)
    assert isinstance(minilm_loaded(**minilm.inputs(2, 9), return_dict=False), tuple)


def test_loaded_module_keeps_the_call_contract(minilm, minilm_loaded):
    inputs = minilm.inputs(2, 16)
    with pytest.raises(InputError, match="dtype"):
        minilm_loaded(**{**inputs, "input_ids": inputs["input_ids"].int()})
    with pytest.raises(InputError, match="outside the compiled range"):
        minilm_loaded(**minilm.inputs(1, 600))
    with pytest.raises(InputError, match="outside the table"):
        minilm_loaded(**{**inputs, "input_ids": inputs["input_ids"] + 10**6})
    assert "input_ids: int64[batch, seq]" in repr(minilm_loaded)


def test_manifest_records_what_was_compiled_and_where(minilm_artifact, minilm_loaded):
    manifest = json.loads((minilm_artifact / MANIFEST).read_text())
    assert manifest["torch"] == torch.__version__ and manifest["fxopt"] == fxopt.__version__
    assert manifest["machine"]["cpu"] and "threads" in manifest["machine"]
    assert manifest["call"]["dims"] == {"batch": [1, 256], "seq": [1, 512]}
    assert "fuse-attention" in manifest["pipeline"]["spec"]
    assert manifest["packages"]["forward"]["sha256"] and manifest["tokenizer"]
    assert "BertModel" in minilm_loaded.report and minilm_loaded.notes == []
    assert minilm_loaded.tokenizer("a sentence")["input_ids"][0] == 101


def test_loading_never_unpickles(minilm_artifact, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("fxopt.load unpickled something")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    loaded = fxopt.load(minilm_artifact)
    assert loaded(input_ids=torch.tensor([[101, 2023, 102]]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                  token_type_ids=torch.zeros(1, 3, dtype=torch.long)).last_hidden_state.shape == (1, 3, 384)


def _copy(artifact, tmp_path):
    target = tmp_path / "copy.fxopt"
    shutil.copytree(artifact, target)
    return target


def _edit_manifest(path, edit):
    manifest = json.loads((path / MANIFEST).read_text())
    edit(manifest)
    (path / MANIFEST).write_text(json.dumps(manifest))


def _flip_byte(file, at):
    data = bytearray(file.read_bytes())
    data[at] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (lambda p: (p / "forward.pt2").write_bytes((p / "forward.pt2").read_bytes()[:10_000]), "truncated"),
    (lambda p: _flip_byte(p / "forward.pt2", 5_000_000), "checksum"),
    (lambda p: _flip_byte(p / "forward.pt2", 100), "checksum"),
    (lambda p: (p / "forward.pt2").unlink(), "missing"),
    (lambda p: (p / "tokenizer" / "tokenizer.json").write_text("{}"), "tokenizer.json"),
    (lambda p: (p / MANIFEST).write_bytes((p / MANIFEST).read_bytes()[:200]), "not valid JSON"),
    (lambda p: (p / MANIFEST).write_bytes(b"\x00\xff" * 100), "not valid JSON"),
    (lambda p: (p / MANIFEST).unlink(), "not an fxopt artifact"),
    (lambda p: _edit_manifest(p, lambda m: m.update(torch="2.99.0")), "torch 2.99.0"),
    (lambda p: _edit_manifest(p, lambda m: m.update(fxopt="9.9")), "fxopt 9.9"),
    (lambda p: _edit_manifest(p, lambda m: m.update(format_version=99)), "format version 99"),
    (lambda p: _edit_manifest(p, lambda m: m["machine"]["isa"].append("avx10_512")), "lacks"),
    (lambda p: _edit_manifest(p, lambda m: m["packages"]["forward"].update(file="../../etc/passwd")), "outside"),
    (lambda p: _edit_manifest(p, lambda m: m["call"].pop("slots")), "malformed"),
    (lambda p: _edit_manifest(p, lambda m: m["call"]["slots"][0].update(dtype="evil")), "unknown dtype"),
    (lambda p: _edit_manifest(p, lambda m: m.pop("packages")), "lacks packages"),
    (lambda p: _edit_manifest(p, lambda m: m["packages"].update(forward=[1, 2])), "malformed"),
    (lambda p: _edit_manifest(p, lambda m: m.update(machine="x86")), "malformed"),
    (lambda p: _edit_manifest(p, lambda m: m["packages"]["forward"].update(native_ops=["fxopt.nope.default"])),
     "no native kernel 'fxopt.nope.default'"),
])
def test_damaged_artifacts_fail_with_a_clear_error(minilm_artifact, tmp_path, damage, message):
    path = _copy(minilm_artifact, tmp_path)
    damage(path)
    with pytest.raises(ArtifactError, match=message) as error:
        fxopt.load(path)  # the tokenizer's files are checked here too, not when .tokenizer is first read
    assert "recompile" in str(error.value) or "copy the artifact again" in str(error.value)


def test_another_cpu_with_the_same_isa_loads_and_says_so(minilm_artifact, tmp_path):
    path = _copy(minilm_artifact, tmp_path)
    _edit_manifest(path, lambda m: m["machine"].update(cpu="Some Other CPU", threads=64))
    loaded = fxopt.load(path)
    assert any("Some Other CPU" in n for n in loaded.notes) and any("64 intra-op threads" in n for n in loaded.notes)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="no artifact"):
        fxopt.load(tmp_path / "missing.fxopt")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ArtifactError, match="exists and is not an fxopt artifact"):
        fxopt.save(object(), tmp_path / "file.txt")
    with pytest.raises(ArtifactError, match="does not exist"):
        fxopt.save(object(), tmp_path / "no" / "dir" / "x.fxopt")


def test_saving_a_loaded_artifact_copies_it(minilm_loaded, tmp_path):
    path = fxopt.save(minilm_loaded, tmp_path / "again.fxopt")
    assert fxopt.load(path).manifest["packages"] == minilm_loaded.manifest["packages"]


@pytest.mark.parametrize("which", ["compiled", "loaded"])
def test_eight_threads_calling_at_once_get_the_right_answers(minilm, minilm_compiled, minilm_loaded, which):
    module = {"compiled": minilm_compiled, "loaded": minilm_loaded}[which]
    cases = [minilm.inputs(b, s) for b, s in [(1, 7), (2, 33), (4, 16), (3, 64)]]
    with torch.no_grad():
        eager = [minilm.model(**c).last_hidden_state for c in cases]
        alone = [module(**c).last_hidden_state for c in cases]
    failures = []

    def worker(index):
        try:
            for step in range(12):
                case = (index + step) % len(cases)
                got = module(**cases[case]).last_hidden_state
                if not torch.equal(got, alone[case]) or not torch.allclose(got, eager[case], rtol=1e-4, atol=1e-4):
                    failures.append((index, step, case))
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append((index, repr(e)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def _in_a_new_process(script: str) -> str:
    """Run ``script`` in a fresh Python (nothing of this process loaded); its stdout."""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout


# -- an int8 model: its artifact calls fxopt's quantizer ------------------------------------------------------------
@pytest.mark.slow
def test_int8_artifact_runs_in_a_new_process(tmp_path):
    """A per-token int8 graph calls ``fxopt::quantize_rows`` and, after the GELU, ``fxopt::gelu_quantize_rows``: the
    manifest names them, and a new process that loads the artifact builds or loads fxopt's native kernels first
    and gives the compiled module's outputs."""
    from conftest import MLP

    torch.manual_seed(0)
    model, x = MLP(act=torch.nn.functional.gelu).eval(), torch.randn(4, 10, 64)
    compiled = fxopt.compile(model, x, quantize="int8")
    path = fxopt.save(compiled, tmp_path / "mlp-int8.fxopt", verbose=False)
    if native_kernels.available():
        manifest = json.loads((path / MANIFEST).read_text())
        assert sorted(manifest["packages"]["forward"]["native_ops"]) == ["fxopt.gelu_quantize_rows.default",
                                                                         "fxopt.quantize_rows.default"]
    torch.save(x, tmp_path / "x.pt")
    _in_a_new_process(f"import torch, fxopt; x = torch.load({str(tmp_path / 'x.pt')!r}); "
                      f"torch.save(fxopt.load({str(path)!r})(x), {str(tmp_path / 'out.pt')!r})")
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), compiled(x), rtol=1e-4, atol=1e-4)


# -- a causal LM: forward and generate() from the artifact -------------------------------------------------------
@pytest.mark.slow
def test_causal_lm_artifact_generates_like_eager(tiny_llama, tmp_path):
    compiled = fxopt.compile(tiny_llama, {"input_ids": torch.randint(4, 128, (1, 10))}, max_cache_len=48, max_batch=4)
    path = fxopt.save(compiled, tmp_path / "tiny.fxopt", verbose=False)
    assert sorted(p.name for p in path.glob("*.pt2")) == ["decode.pt2", "forward.pt2", "prefill.pt2"]
    loaded = fxopt.load(path)
    ids = torch.randint(4, 128, (2, 12))
    torch.testing.assert_close(loaded(input_ids=ids).logits, tiny_llama(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    want = tiny_llama.generate(ids, max_new_tokens=20, do_sample=False, min_new_tokens=20)
    assert torch.equal(loaded.generate(ids, max_new_tokens=20, min_new_tokens=20), want)
    if native_kernels.available():  # the decode package calls fxopt's attention kernel: a new process loads it first
        manifest = json.loads((path / "manifest.json").read_text())
        assert manifest["packages"]["decode"]["native_ops"] == ["fxopt.decode_attention.default"]
        torch.save(ids, tmp_path / "ids.pt")
        out = _in_a_new_process(
            f"import torch, fxopt; ids = torch.load({str(tmp_path / 'ids.pt')!r}); "
            f"print(fxopt.load({str(path)!r}).generate(ids, max_new_tokens=20, min_new_tokens=20).tolist())")
        assert json.loads(out.strip().splitlines()[-1]) == want.tolist()
    with pytest.raises(InputError, match="max_cache_len=48"):
        loaded.generate(ids, max_new_tokens=40)
    encoder_only = fxopt.save(compiled, tmp_path / "forward-only.fxopt", generation=False, verbose=False)
    with pytest.raises(AttributeError, match="no generation graphs"):
        fxopt.load(encoder_only).generate(ids, max_new_tokens=2)
