"""Inductor's C++ wrapper: taken for graphs of aten and oneDNN float ops (fp32, bf16), left out for graphs with
oneDNN's int8 linear or fxopt's native ops, whose first call failed under it; FXOPT_CPP_WRAPPER=0 turns it off."""
import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from conftest import MLP, rel_err
from fxopt.cpp_wrapper import cpp_wrapper_fits
from fxopt.ir.capture import capture

CPP_ENTRY = "inductor_entry_impl"  # the C++ function Inductor's C++ wrapper defines


def _code(model, x, **options):
    compiled, (code, *_) = run_and_get_code(lambda: fxopt.compile(model, x, **options)(x))
    return compiled, code


@pytest.mark.parametrize("quantize", [None, "bf16"])
def test_float_graphs_run_under_the_cpp_wrapper(quantize):
    torch.manual_seed(0)
    model, x = MLP(torch.nn.functional.gelu).eval(), torch.randn(8, 64)
    out, code = _code(model, x, quantize=quantize)
    assert CPP_ENTRY in code
    assert rel_err(out, model(x)) < (2e-2 if quantize else 1e-5)


def test_int8_graphs_keep_the_python_wrapper(int8_start):
    torch.manual_seed(0)
    model, x = MLP(torch.nn.functional.gelu).eval(), torch.randn(8, 64)
    out, code = _code(model, x, quantize="int8", accuracy_budget=0.99)
    assert "onednn.qlinear_pointwise" in code and CPP_ENTRY not in code
    assert rel_err(out, model(x)) < 0.1


def test_which_graphs_fit(monkeypatch):
    gm = capture(MLP().eval(), (torch.randn(4, 64),), {}).graph_module
    assert cpp_wrapper_fits(gm)
    monkeypatch.setenv("FXOPT_CPP_WRAPPER", "0")
    assert not cpp_wrapper_fits(gm)
    monkeypatch.delenv("FXOPT_CPP_WRAPPER")
    linear = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.linear.default)
    with gm.graph.inserting_before(linear):
        gm.graph.call_function(torch.ops.onednn.qlinear_prepack.default, (linear.args[1], None))
    assert not cpp_wrapper_fits(gm)
