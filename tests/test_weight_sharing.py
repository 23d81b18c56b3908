"""Fused weights held once: the model's tensors become views of the concatenation (fxopt.weight_sharing)."""
import torch

from fxopt.weight_sharing import adjacent_rows, concat_rows


def _weights():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, 8)) for n in (8, 4, 4)]


def test_concat_rows_points_the_sources_at_their_rows():
    ws = _weights()
    values = [w.detach().clone() for w in ws]
    fused = concat_rows(ws)
    assert torch.equal(fused, torch.cat(values, 0))
    for w, value, start in zip(ws, values, (0, 8, 12)):
        assert isinstance(w, torch.nn.Parameter) and torch.equal(w, value)  # same object, same values
        assert w.untyped_storage().data_ptr() == fused.untyped_storage().data_ptr()
        assert w.storage_offset() == start * 8


def test_a_second_concatenation_is_a_view_not_a_copy():
    ws = _weights()
    fused = concat_rows(ws)
    again = concat_rows(ws)
    assert again.data_ptr() == fused.data_ptr() and torch.equal(again, fused)


def test_share_false_leaves_the_sources_alone():
    ws = _weights()
    before = [w.data_ptr() for w in ws]
    fused = concat_rows(ws, share=False)
    assert [w.data_ptr() for w in ws] == before and fused.data_ptr() not in before


def test_rows_that_are_not_adjacent_are_not_a_view():
    base = torch.randn(20, 8)
    assert adjacent_rows([base[0:4], base[4:10]]).data_ptr() == base.data_ptr()
    assert adjacent_rows([base[0:4], base[5:10]]) is None  # a gap
    assert adjacent_rows([base[4:10], base[0:4]]) is None  # out of order
    assert adjacent_rows([base[:, :4], base[:, 4:]]) is None  # columns, not rows
    assert adjacent_rows([torch.randn(4, 8), torch.randn(4, 8)]) is None  # two storages
