"""Accuracy metrics: how far a compiled (quantized) model's outputs are from the fp32 model's.

Three metrics, each a plain function of outputs (so the planner, the tests and ``fxopt bench`` share them):

* ``min_cosine`` — encoders: the cosine between the fp32 and the candidate mean-pooled embeddings (padding
  masked out), the *minimum* over the batch: one badly embedded sentence is not averaged away.
* ``perplexity`` — causal LMs: ``exp`` of the mean next-token negative log-likelihood of a text; a budget is a
  *relative increase* over the fp32 model's perplexity (``0.02`` = +2%).
* ``next_token_agreement`` — causal LMs: the fraction of positions whose top-1 next token matches fp32's.

:func:`decisive_positions` picks the positions where fp32 itself is sure of its top-1 token. Where it is not (its
top two logits within a fraction of a logit), any lossy mode flips the choice at random from host to host: on
SmolLM2, fp32's first answer to "What is the capital of France?" is "The" by 0.08 logits over "L" (which goes on
"L'Étoile, …"), so whether a quantized model's free-running answer names Paris is a coin flip on that token.

Accuracy is measured on text the calibration never saw. Calibration and compile examples come from
``fxopt/data/sample_text.txt``; :func:`evaluation_text` is an English text that ships with every Python
(its ``LICENSE.txt``) and :func:`evaluation_sentences` splits it into sentences.
"""
from __future__ import annotations

import math
import re
import sysconfig
from pathlib import Path
from typing import Callable

import torch

from fxopt.errors import FxoptError

#: metric name → (direction, what a budget bound means)
METRICS = {
    "min_cosine": ("higher", "the lowest cosine allowed (e.g. 0.995)"),
    "perplexity": ("lower", "the largest relative increase allowed (e.g. 0.02 for +2%)"),
    "next_token_agreement": ("higher", "the lowest fraction of identical top-1 tokens allowed (e.g. 0.9)"),
}


class MetricError(FxoptError, ValueError):
    """An unknown metric or a budget that cannot be read."""


def check_metric(name: str) -> str:
    if name not in METRICS:
        raise MetricError(f"unknown accuracy metric {name!r}; choose one of {', '.join(METRICS)}")
    return name


def evaluation_text() -> str:
    """An English text for held-out accuracy: the Python license shipped with this interpreter (≈ 3,800 tokens
    for SmolLM2). It is never used for calibration."""
    path = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"
    if not path.exists():  # some distributions strip it; Debian's base-files always has this one
        path = Path("/usr/share/common-licenses/GPL-3")
    return path.read_text()


def evaluation_sentences(n: int = 64, min_words: int = 6) -> list[str]:
    """``n`` distinct sentences of :func:`evaluation_text` with at least ``min_words`` words each."""
    text = " ".join(evaluation_text().split())
    seen, out = set(), []
    for s in re.split(r"(?<=[.;:])\s+", text):
        if len(s.split()) >= min_words and s not in seen:
            seen.add(s)
            out.append(s)
        if len(out) == n:
            break
    return out


def calibration_sentences(n: int = 256, min_words: int = 6) -> list[str]:
    """``n`` English sentences for calibration, never for evaluation: Python's reference documentation as it ships
    with the interpreter (``pydoc_data.topics``), a different text from :func:`evaluation_text`."""
    from pydoc_data.topics import topics

    text = " ".join(" ".join(topics.values()).split())
    out = [s for s in re.split(r"(?<=[.])\s+", text) if min_words <= len(s.split()) <= 60 and ">>>" not in s]
    return out[:n]


def pooled(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over the sequence axis of ``hidden`` (batch, seq, dim), padding excluded."""
    hidden = hidden.float()
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def min_cosine(reference: torch.Tensor, candidate: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """The smallest per-row cosine between the pooled ``reference`` and ``candidate`` (batch, seq, dim) outputs."""
    a, b = pooled(reference, mask), pooled(candidate, mask)
    return torch.nn.functional.cosine_similarity(a, b, dim=-1).min().item()


def nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[float, int]:
    """Sum of next-token negative log-likelihoods of ``input_ids`` under ``logits`` and the number of predicted
    tokens (positions whose target is padding excluded)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    target = input_ids[:, 1:]
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    keep = mask[:, 1:].bool() if mask is not None else torch.ones_like(target, dtype=torch.bool)
    return nll[keep].sum().item(), int(keep.sum())


def perplexity(logits_fn: Callable[[torch.Tensor], torch.Tensor], tokenizer, text: str | None = None,
               window: int = 256, max_tokens: int = 2048) -> float:
    """Perplexity of ``text`` (default :func:`evaluation_text`) under ``logits_fn(input_ids) -> logits``, in
    non-overlapping windows of ``window`` tokens, over the first ``max_tokens`` tokens."""
    ids = tokenizer(text or evaluation_text(), add_special_tokens=False, return_tensors="pt",
                    verbose=False)["input_ids"][0][:max_tokens]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel() - 1, window):
            chunk = ids[start:start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                break
            s, n = nll_sum(logits_fn(chunk), chunk)
            total, count = total + s, count + n
    return math.exp(total / count)


def next_token_agreement(reference_logits: torch.Tensor, candidate_logits: torch.Tensor) -> float:
    """Fraction of positions where both logits pick the same top-1 token."""
    return (reference_logits.argmax(-1) == candidate_logits.argmax(-1)).float().mean().item()


def decisive_positions(reference_logits: torch.Tensor, min_margin: float = 1.0) -> torch.Tensor:
    """Boolean mask of the positions where the reference's top-1 logit leads its second by ``min_margin`` or more."""
    top2 = reference_logits.float().topk(2, dim=-1).values
    return (top2[..., 0] - top2[..., 1]) >= min_margin


def within(metric: str, value: float, bound: float, reference: float | None = None) -> bool:
    """Whether ``value`` of ``metric`` holds ``bound`` (perplexity: relative to ``reference``)."""
    if metric == "perplexity":
        return value <= reference * (1 + bound)
    return value >= bound


def describe(metric: str, value: float, reference: float | None = None) -> str:
    if metric == "perplexity":
        return f"perplexity {value:.3f} ({(value / reference - 1) * 100:+.2f}% vs fp32 {reference:.3f})"
    if metric == "min_cosine":
        return f"min cosine {value:.5f}"
    return f"next-token agreement {value * 100:.1f}%"
