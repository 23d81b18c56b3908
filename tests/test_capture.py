"""Capture and fxopt.compile on plain modules, and the errors users get for bad models and inputs."""
import pytest
import torch

import fxopt
from fxopt.ir import capture


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Dropout(0.1),
                                       torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2)
        self.head = torch.nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return {"logits": self.head(x.mean(dim=(2, 3))), "features": x}


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # branches on a tensor's value: not capturable
            return x * 2
        return x - 1


@pytest.mark.parametrize("backend", ["eager", "inductor"])
def test_mlp_compiles_and_matches_eager_at_several_batches(backend):
    torch.manual_seed(0)
    model = MLP().eval()
    compiled = fxopt.compile(model, torch.randn(4, 32), backend=backend)
    for batch in (1, 4, 17):
        x = torch.randn(batch, 32)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
    assert compiled.report.pipeline.record("eliminate-dead-nodes").stats["dropout"] == 1


def test_convnet_returns_the_same_dict_structure():
    torch.manual_seed(0)
    model = ConvNet().eval()
    compiled = fxopt.compile(model, torch.randn(2, 3, 16, 16))
    x = torch.randn(3, 3, 16, 16)
    out, ref = compiled(x), model(x)
    assert isinstance(out, dict) and set(out) == {"logits", "features"}
    torch.testing.assert_close(out["logits"], ref["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["features"], ref["features"], rtol=1e-4, atol=1e-4)


def test_uncapturable_model_raises_capture_error_naming_the_line():
    with pytest.raises(fxopt.CaptureError) as info:
        fxopt.compile(DataDependent(), torch.randn(2, 4))
    message = str(info.value)
    assert "could not capture DataDependent" in message
    assert "x.sum() > 0" in message  # the model's own line that failed
    assert "data-dependent" in message  # what to do


def test_not_a_module_and_no_tensor_are_capture_errors():
    with pytest.raises(fxopt.CaptureError, match="needs a torch.nn.Module"):
        fxopt.compile(lambda x: x, torch.randn(2))
    with pytest.raises(fxopt.CaptureError, match=r"do not fit MLP.forward\(x\): missing a required argument"):
        fxopt.compile(MLP())
    with pytest.raises(fxopt.CaptureError, match="no example tensor"):
        fxopt.compile(MLP(), example_kwargs={"x": [1.0, 2.0]})


def test_bad_dims_are_capture_errors():
    with pytest.raises(fxopt.CaptureError, match="dims names 'time', which no input has"):
        fxopt.compile(MLP(), torch.randn(2, 32), dims={"time": (1, 8)})
    with pytest.raises(fxopt.CaptureError, match="not a range"):
        fxopt.compile(MLP(), torch.randn(2, 32), dims={"batch": (8, 1)})


def test_batch_of_one_example_stays_dynamic():
    model = MLP().eval()
    captured = capture(model, (torch.randn(1, 32),))
    assert captured.tensor_slots[0].shape == ("batch", 32)
    assert any("repeated to 2" in n for n in captured.notes)


def test_wrong_inputs_at_call_time_are_input_errors():
    model = MLP().eval()
    compiled = fxopt.compile(model, torch.randn(4, 32), dims={"batch": (1, 16)}, backend="eager")
    with pytest.raises(fxopt.InputError, match="dtype torch.float64, compiled for torch.float32"):
        compiled(torch.randn(4, 32, dtype=torch.float64))
    with pytest.raises(fxopt.InputError, match="has 3 dimensions"):
        compiled(torch.randn(4, 32, 1))
    with pytest.raises(fxopt.InputError, match="static size 32"):
        compiled(torch.randn(4, 31))
    with pytest.raises(fxopt.InputError, match=r"outside the compiled range \[1, 16\]"):
        compiled(torch.randn(17, 32))
    with pytest.raises(fxopt.InputError, match="must be a tensor"):
        compiled([1.0] * 32)
    with pytest.raises(fxopt.InputError):
        compiled()


class CacheStep(torch.nn.Module):
    """A decode-step shaped model: one token, a position, and per-layer caches with a cache-length axis."""

    def forward(self, x, position, caches):
        scores = [torch.einsum("bd,bhcd->bhc", x, c).softmax(-1).sum(-1) for c in caches]
        return torch.stack(scores, 0).sum(0) + position.float()


def test_named_dims_at_any_axis_and_extra_tensor_inputs():
    caches = [torch.randn(3, 2, 10, 8) for _ in range(2)]
    args = {"x": torch.randn(3, 8), "position": torch.tensor([4]), "caches": caches}
    cap = capture(CacheStep(), (), args, dims={"cache": (2, 32), "batch": (1, 8)},
                  dim_axes={"x": {0: "batch"}, "position": {}, "caches": {0: "batch", 2: "cache"}})
    shapes = {s.path: s.shape for s in cap.slots}
    assert shapes == {"x": ("batch", 8), "position": (1,), "caches.0": ("batch", 2, "cache", 8),
                      "caches.1": ("batch", 2, "cache", 8)}
    assert set(cap.dims) == {"batch", "cache"} and cap.example_dims() == {"batch": 3, "cache": 10}
    compiled = fxopt.compile(CacheStep(), (), example_kwargs=args, dims={"cache": (2, 32)},
                             dim_axes={"x": {0: "batch"}, "position": {}, "caches": {0: "batch", 2: "cache"}})
    other = {"x": torch.randn(1, 8), "position": torch.tensor([7]), "caches": [torch.randn(1, 2, 31, 8)] * 2}
    torch.testing.assert_close(compiled(**other), CacheStep()(**other))
    with pytest.raises(fxopt.InputError, match=r"cache\) is 40, outside the compiled range \[2, 32\]"):
        compiled(**{**other, "caches": [torch.randn(1, 2, 40, 8)] * 2})


@pytest.mark.parametrize("kwargs, message", [
    ({"dim_axes": {"nope": {0: "batch"}}}, "dim_axes names inputs the call does not have"),
    ({"dim_axes": {"caches": {2: "cache"}}}, "without a range: give dims"),
    ({"dims": {"cache": (2, 32)}, "dim_axes": {"caches": {5: "cache"}}}, "has 4 dimensions"),
    ({"dims": {"cache": (2, 32)}, "dim_axes": {"x": {1: "cache"}, "caches": {2: "cache"}}},
     "disagree on the dimension 'cache'"),
    ({"dims": {"kv": (2, 32)}}, "dims names 'kv', which no input has"),
])
def test_bad_dim_specs_are_clear(kwargs, message):
    args = {"x": torch.randn(3, 8), "position": torch.tensor([4]), "caches": [torch.randn(3, 2, 10, 8)]}
    with pytest.raises(fxopt.CaptureError, match=message):
        capture(CacheStep(), (), args, **kwargs)


DATA_DEPENDENT = '''
import torch, fxopt

class Branchy(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x * 2
        return x - 1

fxopt.compile(Branchy(), torch.randn(4, 8))
'''


def test_a_capture_error_is_a_few_lines_with_the_full_report_on_request(tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "branchy.py"
    script.write_text(DATA_DEPENDENT)
    short = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert short.returncode == 1
    lines = short.stderr.strip().splitlines()
    assert len(lines) <= 15, short.stderr  # was 212: a warning, the graph twice and a chained traceback
    assert "branchy.py:6 in forward: if x.sum() > 0:" in short.stderr and "torch.cond" in lines[-2]
    assert "During handling" not in short.stderr and "def forward" not in short.stderr
    full = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "FXOPT_FULL_ERRORS": "1"})
    assert "direct cause" in full.stderr and len(full.stderr.splitlines()) > len(lines)


class FixedLength(torch.nn.Module):
    """A reshape that holds for one sequence length only (local attention's windows do the like)."""

    def forward(self, x):
        return x.reshape(x.shape[0], 3, 4, x.shape[-1]).sum(2)


def test_a_dim_export_cannot_keep_dynamic_falls_back_to_static_and_says_so():
    model = FixedLength()
    compiled = fxopt.compile(model, torch.randn(2, 12, 8), dim_axes={"x": {0: "batch", 1: "seq"}}, backend="eager")
    assert any(n.startswith("seq is static (12)") for n in compiled.report.notes), compiled.report.notes
    torch.testing.assert_close(compiled(torch.ones(5, 12, 8)), model(torch.ones(5, 12, 8)))  # batch still dynamic
    with pytest.raises(fxopt.InputError):
        compiled(torch.ones(2, 8, 8))
