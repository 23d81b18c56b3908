"""The pattern API's matching rules: number slots, commutative operands, near-miss diagnostics, replacements
that must be operators, and the verifier's rejection of non-operator calls."""
import pytest
import torch

import fxopt
from fxopt.errors import VerificationError
from fxopt.ir import capture, verify
from fxopt.testing import check_pass

aten = torch.ops.aten


def hand_written_silu(x):
    return x * torch.sigmoid(x)


def silu(x):
    return aten.silu.default(x)


fuse_silu = fxopt.pattern_pass("fuse-silu", hand_written_silu, silu, example_inputs=(torch.randn(4, 8),))


def test_a_number_parameter_binds_only_where_the_pattern_uses_it():
    """pow(x, 2) * k with k=2: the 2 of pow is a literal, not k. pow(x, 3) * 3 must not match, even with the
    numeric check off (where a wrong binding would be a silent miscompile)."""

    def square_times(x, k=2):
        return x.pow(2) * k

    def replacement(x, k):
        return aten.mul.Tensor(aten.mul.Tensor(x, x), k)

    p = fxopt.pattern_pass("square-times", square_times, replacement, example_inputs=(torch.randn(4),))

    class Cube(torch.nn.Module):
        def forward(self, x):
            return x.pow(3) * 3

    x = torch.randn(5, 4)
    compiled = fxopt.compile(Cube(), x, passes=["eliminate-dead-nodes", p], check_numerics=False,
                             backend="eager")
    torch.testing.assert_close(compiled(x), x.pow(3) * 3)
    record = compiled.report.pipeline.record("square-times")
    assert record.stats == {}
    assert any("literal 3" in d for d in record.diagnostics), record.diagnostics
    # ... while the parameter itself takes any value
    result = check_pass(p, lambda x: x.pow(2) * 5.0, torch.randn(3, 4))
    assert result.stats == {"square-times": 1}
    assert "aten.mul.Tensor(%mul_tensor, 5.0)" in result.after


def test_commuted_operands_match():
    result = check_pass(fuse_silu, lambda x: torch.sigmoid(x) * x, torch.randn(3, 8))
    assert result.stats == {"fuse-silu": 1}
    assert "aten.silu(%x)" in result.after and "sigmoid" not in result.after


def test_commutative_matching_can_be_turned_off_and_says_so():
    rule = fxopt.PatternRule("strict silu", hand_written_silu, silu, (torch.randn(4, 8),), commutative=False)
    strict = fxopt.pattern_pass("fuse-silu-strict", rules=[rule])
    assert check_pass(strict, lambda x: x * torch.sigmoid(x), torch.randn(3, 8)).stats == {"strict silu": 1}
    result = check_pass(strict, lambda x: torch.sigmoid(x) * x, torch.randn(3, 8))
    assert result.stats == {}
    assert any("swapped" in d and "commutative=False" in d for d in result.diagnostics), result.diagnostics


def test_a_variable_bound_to_two_values_is_a_reported_near_miss():
    result = check_pass(fuse_silu, lambda x, y: x * torch.sigmoid(y), torch.randn(3, 8), torch.randn(3, 8))
    assert result.stats == {}
    assert any("near-match" in d and "x is bound to %x and %y" in d for d in result.diagnostics), result.diagnostics


def test_a_replacement_must_call_operators():
    with pytest.raises(fxopt.PatternError, match="torch.nn.functional.silu, which is not an operator"):
        fxopt.pattern_pass("bad", hand_written_silu, lambda x: torch.nn.functional.silu(x),
                           example_inputs=(torch.randn(4, 8),))
    with pytest.raises(fxopt.PatternError, match="method .sigmoid"):
        fxopt.pattern_pass("bad", hand_written_silu, lambda x: x.sigmoid() * x, example_inputs=(torch.randn(4, 8),))


def test_an_overload_packet_in_a_replacement_becomes_its_overload():
    packet = fxopt.pattern_pass("packet-silu", hand_written_silu, lambda x: aten.silu(x),
                                example_inputs=(torch.randn(4, 8),))
    result = check_pass(packet, hand_written_silu, torch.randn(3, 8))
    assert "aten.silu(%x)" in result.after


def test_a_number_parameter_that_sets_a_shape_is_a_clear_error():
    def mean_over(x, dim=1):
        return x.mean(dim)

    p = fxopt.pattern_pass("mean-over", mean_over, lambda x, dim: aten.mean.dim(x, [dim]),
                           example_inputs=(torch.randn(2, 3),))
    with pytest.raises(fxopt.PatternError, match="distinctive values for its number parameters"):
        check_pass(p, lambda x: x.mean(1), torch.randn(2, 3))


def test_verify_rejects_calls_that_are_not_operators():
    gm = capture(torch.nn.ReLU(), (torch.randn(2, 3),)).graph_module
    relu = next(n for n in gm.graph.nodes if n.op == "call_function")
    relu.target = torch.nn.functional.relu
    with pytest.raises(VerificationError, match="not an operator"):
        verify(gm)
