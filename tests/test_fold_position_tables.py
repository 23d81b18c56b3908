"""fold-position-tables: rotary and position-embedding tables become slices of one precomputed table."""
import pytest
import torch

from fxopt.passes.fold_position_tables import PositionTableOptions
from fxopt.testing import check_pass, filecheck

SEQ = {"seq": (1, 64)}


class Rotary(torch.nn.Module):
    """Llama's rotary embedding, applied to its input."""

    def __init__(self, dim=8):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim))

    def forward(self, x):
        positions = torch.arange(x.shape[1]).float()
        freqs = positions[:, None] * self.inv_freq[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * emb.cos() + rotated * emb.sin()


class NormalizedPositions(torch.nn.Module):
    """arange(seq) / seq: not the first rows of its value at the longest length."""

    def forward(self, x):
        return x * (torch.arange(x.shape[1]) / x.shape[1])[:, None]


def test_rotary_tables_golden():
    result = check_pass("fold-position-tables", Rotary(), torch.randn(2, 10, 8), dims=SEQ)
    assert result.stats == {"tables": 2}
    filecheck(result.after, """
        CHECK-NOT: aten.arange(
        CHECK: %_fxopt_cos_table = const : f32[64, 8]
        CHECK-NEXT: %slice_tensor = aten.slice.Tensor(%_fxopt_cos_table, 0, 0, %sym_size_int_3) : f32[seq, 8]
        CHECK-NEXT: aten.mul.Tensor(%x, %slice_tensor) : f32[batch, seq, 8]
        CHECK-NEXT: %_fxopt_sin_table = const : f32[64, 8]
        CHECK-NEXT: %slice_tensor_1 = aten.slice.Tensor(%_fxopt_sin_table, 0, 0, %sym_size_int_3) : f32[seq, 8]
        CHECK-NOT: aten.cos(
        CHECK-NOT: aten.sin(
    """)


def test_tables_stay_correct_at_other_lengths():
    from fxopt import compile
    model = Rotary()
    compiled = compile(model, torch.randn(2, 10, 8), dims=SEQ, passes="fold-position-tables", backend="eager")
    for seq in (1, 7, 64):
        x = torch.randn(3, seq, 8)
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-6, atol=1e-6)


def test_a_value_that_is_not_a_prefix_is_checked_and_kept():
    result = check_pass("fold-position-tables", NormalizedPositions(), torch.randn(2, 10, 3), dims=SEQ)
    assert result.stats == {"not a prefix": 1} and not result.changed
    assert any("is not the first rows of its table" in d for d in result.diagnostics), result.diagnostics


def test_size_cap():
    result = check_pass("fold-position-tables", Rotary(), torch.randn(2, 10, 8), dims=SEQ,
                        options=PositionTableOptions(max_bytes=1024))
    assert result.stats == {"over size cap": 2} and not result.changed
    assert any("would take" in d and "at seq=64" in d for d in result.diagnostics), result.diagnostics


def test_static_shapes_leave_it_to_fold_constants():
    result = check_pass("fold-position-tables", Rotary(), torch.randn(2, 10, 8), dynamic=False)
    assert not result.changed


def test_real_models(minilm_compiled):
    # MiniLM: the position-embedding lookup; its padding-mask prefix is an all-true table
    stats = minilm_compiled.report.pipeline.record("fold-position-tables").stats
    assert stats == {"tables": 2}


class InPlaceBuckets(torch.nn.Module):
    """MPNet's relative buckets build a position table and then add into it in place (``ret += …``)."""

    def forward(self, x):
        positions = torch.arange(x.shape[1])
        buckets = (positions[None, :] - positions[:, None]).abs()
        buckets += 1  # in place: the table must not be a shared constant
        return x + buckets.float().sum(-1)


def test_a_table_written_in_place_is_not_folded():
    import fxopt

    model = InPlaceBuckets()
    compiled = fxopt.compile(model, torch.randn(2, 10), dims=SEQ, backend="eager")
    record = compiled.report.pipeline.record("fold-position-tables")
    assert any("written in place" in d for d in record.diagnostics), record.diagnostics
    x = torch.randn(2, 10)
    for _ in range(3):  # a folded table would grow by one per call
        torch.testing.assert_close(compiled(x), model(x))


def test_verify_names_a_pass_that_leaves_a_constant_written_in_place():
    from fxopt.errors import VerificationError
    from fxopt.ir import capture, verify

    gm = capture(InPlaceBuckets(), (torch.randn(2, 10),), dims=SEQ).graph_module
    add_ = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.add_.Tensor)
    gm.register_buffer("_fxopt_table", torch.zeros(10, 10, dtype=torch.long))
    with gm.graph.inserting_before(add_):
        const = gm.graph.get_attr("_fxopt_table")
    const.meta["val"] = add_.args[0].meta["val"]
    add_.args = (const, *add_.args[1:])
    with pytest.raises(VerificationError, match="written in place"):
        verify(gm)
