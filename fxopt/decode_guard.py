"""The accuracy guard of a lossy decode precision: the decode graph's next tokens against the fp32 model's.

``decode_precision="int8-weight-only"`` (or ``"int4-weight-only"``, ``"bf16"``) makes the decode graph read weights
that differ from the model's; the prefill graph stays fp32. Before ``generate()`` uses the graphs, the guard
teacher-forces the example prompt through them: the prefill graph takes its first token, then the decode graph
takes the others one per step, each from the cache the previous steps filled, exactly as generation does. At
every position it compares the decode graph's top-1 next token with the one of the model itself (eager, fp32,
one forward over the whole prompt)::

    prompt  t0  t1  t2 … t63
    fp32    model(prompt).logits[:, i].argmax()          for i = 1 … 63
    decode  decode(t_i, cache of t0 … t_{i-1}).argmax()  one step each
    agreement = the fraction of the 63 positions where they are the same token

An agreement under ``decode_accuracy_budget`` (default 0.9: issue 13's "90% of greedy tokens identical to fp32")
is an :class:`fxopt.AccuracyBudgetError` that names what was measured and what to do, never a silently worse
model. What it measured is ``compiled.generator.accuracy`` (``fxopt bench --generate`` prints it). On SmolLM2 int8 (groups of
32) agreed on 100% of a 64-token example; a tiny random model's logits are near ties, where a budget of 0
(measure, do not enforce) is what its tests use.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fxopt.errors import AccuracyBudgetError

#: The least fraction of teacher-forced next tokens identical to fp32's a lossy decode graph may have.
DEFAULT_DECODE_ACCURACY_BUDGET = 0.9
#: Positions of the example prompt the guard compares at most (each is one decode step).
MAX_POSITIONS = 64


@dataclass(frozen=True)
class DecodeAccuracy:
    """What the guard measured."""

    precision: str
    agreement: float  # fraction of positions whose top-1 token equals fp32's
    positions: int
    budget: float

    def describe(self) -> str:
        return (f"decode graph in {self.precision}: {self.agreement:.0%} of {self.positions} teacher-forced next "
                f"tokens identical to the fp32 model's (budget ≥ {self.budget:.0%})")


def example_prompt(args: tuple, kwargs: dict) -> torch.Tensor | None:
    """The first row of a compile example's token ids (``input_ids=`` or the first positional tensor) without
    its padding, as ``[1, tokens]``; None where the example has no token ids."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if not (isinstance(ids, torch.Tensor) and ids.dim() == 2 and ids.dtype == torch.long and ids.shape[0] > 0):
        return None
    mask = kwargs.get("attention_mask")
    row = ids[0]
    if isinstance(mask, torch.Tensor) and mask.shape == ids.shape:
        row = row[mask[0].bool()]
    return row.reshape(1, -1).clone()


def teacher_forced_agreement(model: torch.nn.Module, graphs, input_ids: torch.Tensor) -> tuple[float, int]:
    """Top-1 agreement of ``graphs``' decode steps with ``model``'s fp32 logits over the first row of
    ``input_ids`` (see the module docstring); returns (agreement, positions compared)."""
    layout = graphs.layout
    ids = input_ids[:1, :min(input_ids.shape[1], MAX_POSITIONS, layout.max_cache_len)].contiguous()
    length = ids.shape[1]
    if length < 2:
        return 1.0, 0
    with torch.no_grad():
        reference = model(input_ids=ids, use_cache=False).logits[0, 1:].argmax(-1)
        keys, values = layout.allocate(1)
        mask = torch.zeros(1, layout.max_cache_len, dtype=torch.long)
        mask[:, 0] = 1
        graphs.prefill(ids[:, :1], torch.zeros(1, 1, dtype=torch.long), mask, torch.tensor(0), *keys, *values)
        chosen = []
        for i in range(1, length):
            mask[:, i] = 1
            logits = graphs.decode(ids[:, i:i + 1].clone(), torch.tensor([[i]]), mask, torch.tensor(i), *keys, *values)[0]
            chosen.append(int(logits[0].argmax()))
    agreement = (torch.tensor(chosen) == reference).float().mean().item()
    return agreement, length - 1


def guard(model: torch.nn.Module, graphs, input_ids: torch.Tensor | None, precision: str,
          budget: float) -> DecodeAccuracy | None:
    """Measure a lossy decode graph on ``input_ids`` and raise :class:`AccuracyBudgetError` below ``budget``;
    None for fp32 or without an example prompt."""
    if precision == "fp32" or input_ids is None:
        return None
    agreement, positions = teacher_forced_agreement(model, graphs, input_ids)
    measured = DecodeAccuracy(precision, agreement, positions, budget)
    if agreement < budget:
        raise AccuracyBudgetError(
            f"{measured.describe()}: under the budget. Use decode_precision='bf16' or 'fp32', or accept it with "
            f"decode_accuracy_budget={agreement:.2f} (fxopt.compile, fxopt.compile_generator)")
    return measured
