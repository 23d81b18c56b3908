"""Golden tests of the canonical printer (shared by tests, errors and the dump tool)."""
import torch

import fxopt
from fxopt.ir import capture, format_graph


class TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_printer_golden_with_named_dynamic_batch():
    torch.manual_seed(0)
    captured = capture(TwoLayer(), (torch.randn(3, 8),))
    assert format_graph(captured.graph_module) == (
        "%fc1.weight = const : f32[16, 8]\n"
        "%fc1.bias = const : f32[16]\n"
        "%fc2.weight = const : f32[4, 16]\n"
        "%fc2.bias = const : f32[4]\n"
        "%x = input : f32[batch, 8]\n"
        "%linear = aten.linear(%x, %fc1.weight, %fc1.bias) : f32[batch, 16]\n"
        "%relu = aten.relu(%linear) : f32[batch, 16]\n"
        "%linear_1 = aten.linear(%relu, %fc2.weight, %fc2.bias) : f32[batch, 4]\n"
        "return (%linear_1,)\n"
    )


def test_printer_without_constants_and_static_shapes():
    captured = capture(TwoLayer(), (torch.randn(3, 8),), dynamic=False)
    text = format_graph(captured.graph_module, constants=False)
    assert text.splitlines()[0] == "%x = input : f32[3, 8]"
    assert "const" not in text
    assert text.endswith("return (%linear_1,)\n")


def test_printer_is_deterministic_across_captures():
    model = TwoLayer()
    a = format_graph(capture(model, (torch.randn(2, 8),)).graph_module)
    b = format_graph(capture(model, (torch.randn(5, 8),)).graph_module)
    assert a == b
    assert fxopt.ir.format_node is not None
