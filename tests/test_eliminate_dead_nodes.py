"""eliminate-dead-nodes: golden text, stats, and numerics on the real models."""
import torch

import fxopt
from fxopt.ir import capture, format_graph, verify


class Noisy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.drop = torch.nn.Dropout(0.2)

    def forward(self, x):
        y = self.drop(self.fc(x)).to(torch.float32)
        return (y * 1).reshape(x.shape[0], 8) + 0


def test_golden_before_after():
    cap = capture(Noisy().eval(), (torch.randn(3, 8),))
    before = format_graph(cap.graph_module, constants=False)
    assert "aten.dropout" in before and "aten.mul.Tensor(%" in before
    result = fxopt.passes.eliminate_dead_nodes(cap.graph_module)
    verify(cap.graph_module)
    assert format_graph(cap.graph_module, constants=False) == (
        "%x = input : f32[batch, 8]\n"
        "%linear = aten.linear(%x, %fc.weight, %fc.bias) : f32[batch, 8]\n"
        "return (%linear,)\n"
    )
    assert result.changed
    assert result.stats["dropout"] == 1 and result.stats["arithmetic identities"] == 2


def test_second_run_changes_nothing():
    cap = capture(Noisy().eval(), (torch.randn(3, 8),))
    fxopt.passes.eliminate_dead_nodes(cap.graph_module)
    again = fxopt.passes.eliminate_dead_nodes(cap.graph_module)
    assert not again.changed and again.stats == {}


def test_numerics_on_minilm(minilm):
    inputs = minilm.inputs(4, 32)
    cap = capture(minilm.model, (), inputs)
    reference = cap.graph_module(*cap.example_inputs)
    result = fxopt.passes.eliminate_dead_nodes(cap.graph_module)
    verify(cap.graph_module)
    out = cap.graph_module(*cap.example_inputs)
    assert result.stats["dropout"] == 13
    for a, b in zip(out, reference):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # dropping identities is bit-exact
    with torch.no_grad():
        eager = minilm.model(**inputs).last_hidden_state
    torch.testing.assert_close(out[0], eager, rtol=1e-5, atol=1e-5)
