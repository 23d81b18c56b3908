"""fxopt.parallel_depth: at a batch of 1 (traced as 2), kernels whose outer loop is the batch split their next loops
over the threads too, and the code still runs every batch size."""
import re

import pytest
import torch
from torch._inductor.utils import run_and_get_code

import fxopt
from fxopt.parallel_depth import example_sizes

pytestmark = pytest.mark.usefixtures("python_wrapper")  # they read the code it generates


class Rotary(torch.nn.Module):
    """Heads split out of the rows and rotated: a kernel over (batch, heads, positions, head dim)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("cos", torch.randn(1, 1, 256, 64))
        self.register_buffer("sin", torch.randn(1, 1, 256, 64))

    def forward(self, x):
        b, s, w = x.shape
        q = x.view(b, s, 4, 64).transpose(1, 2)
        rotated = q * self.cos + torch.cat([-q[..., 32:], q[..., :32]], dim=-1) * self.sin
        return rotated.transpose(1, 2).reshape(b, s, w)


def _inputs(batch):
    torch.manual_seed(1)
    return (torch.randn(batch, 256, 256),)


def _omp_loops(at_example: bool, monkeypatch) -> tuple[list[str], object]:
    monkeypatch.setenv("FXOPT_PARALLEL_DEPTH_AT_EXAMPLE", "1" if at_example else "0")
    with torch._inductor.config.patch({"cpp.threads": 2}):  # the depth depends on the thread count: fix it
        compiled, codes = run_and_get_code(lambda: fxopt.compile(Rotary(), _inputs(1)))
    return re.findall(r"#pragma omp for[^\n]*", "\n".join(codes)), compiled


def test_a_batch_of_one_collapses_the_loops_below_the_batch(monkeypatch):
    inductors, _ = _omp_loops(False, monkeypatch)
    ours, compiled = _omp_loops(True, monkeypatch)
    assert inductors and not any("collapse" in loop for loop in inductors)  # the batch loop alone: one thread at 1
    assert ours and all("collapse(2)" in loop for loop in ours), ours
    for batch in (1, 3):  # the schedule changed, not the range the code serves
        x, = _inputs(batch)
        torch.testing.assert_close(compiled(x), Rotary()(x))


def test_example_sizes_name_export_symbols():
    compiled = fxopt.compile(Rotary(), _inputs(1))
    sizes = example_sizes(compiled.graph_module)
    assert sorted(sizes.values()) == [1], sizes  # the batch, given as 1 (traced as 2); the other dims are static
    assert all(re.fullmatch(r"s\d+", name) for name in sizes), sizes
