"""smooth-activations: outlier channels divided out of the norm or the gate/up rows and multiplied into the
weights — exact in fp32, flatter activations for int8, and producers with other users left alone."""
import torch
import torch.nn.functional as F

import fxopt
from fxopt.ir.printer import format_graph
from fxopt.testing import filecheck


class SwiGLUBlock(torch.nn.Module):
    """Llama's MLP behind its RMSNorm; the residual reads the input, not the norm."""

    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(64)
        self.gate = torch.nn.Linear(64, 128, bias=False)
        self.up = torch.nn.Linear(64, 128, bias=False)
        self.down = torch.nn.Linear(128, 64, bias=False)

    def forward(self, x):
        h = self.norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class PostNormBlock(torch.nn.Module):
    """BERT's shape: the LayerNorm's output feeds the next linear *and* a residual add."""

    def __init__(self):
        super().__init__()
        self.ln = torch.nn.LayerNorm(64)
        self.fc = torch.nn.Linear(64, 64)

    def forward(self, x):
        h = self.ln(x)
        return h + self.fc(h)


def _inputs():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64)
    x[..., 3] *= 40  # an outlier channel, as real models have
    return x


BASE = "eliminate-dead-nodes,fuse-layer-norm,fuse-rms-norm,fuse-sibling-linears"


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_norm_and_swiglu_are_smoothed_exactly_and_int8_gets_more_accurate():
    torch.manual_seed(0)
    model, x = SwiGLUBlock().eval(), _inputs()
    smoothed = fxopt.compile(model, x, passes=BASE + ",smooth-activations", backend="eager")  # numeric check: 1e-4
    record = smoothed.report.pipeline.record("smooth-activations")
    assert record.stats == {"inputs smoothed": 2, "linears": 2}  # the norm → gate/up, and silu(gate)·up → down
    graph = format_graph(smoothed.graph_module)
    filecheck(graph, """
        CHECK: %_fxopt_rms_norm_smoothed = const : f32[64]
        CHECK: aten.rms_norm(%x, [64], %_fxopt_rms_norm_smoothed
        CHECK: aten.silu
        CHECK: aten.mul.Tensor
    """)
    assert "%down.weight" not in graph and "%norm.weight" not in graph
    plain = fxopt.compile(model, x, passes=BASE + ",quantize-dynamic-int8")
    smooth_int8 = fxopt.compile(model, x, passes=BASE + ",smooth-activations,quantize-dynamic-int8")
    y = model(x)
    assert _rel(smooth_int8(x), y) < 0.7 * _rel(plain(x), y)  # the outlier channel no longer crushes the rest


def test_a_norm_that_feeds_a_residual_is_left_alone():
    model, x = PostNormBlock().eval(), _inputs()
    compiled = fxopt.compile(model, x, passes=BASE + ",smooth-activations", backend="eager")
    record = compiled.report.pipeline.record("smooth-activations")
    assert record.stats == {"inputs left alone": 1}
    assert any("users besides the linears" in d for d in record.diagnostics)
