"""cast-attention-bf16: attention runs on bf16 queries, keys and values; its softmax and the rest stay fp32.

With the linears in bf16 (``cast-linears-bf16``) on a CPU with AMX or AVX512-BF16, fp32 attention is a large part
of a transformer's call: profiled on MiniLM (Intel Xeon with AMX), six attentions took 17.4 ms beside 36.5 ms of
bf16 GEMMs. ATen's CPU flash attention takes bf16 Q/K/V, multiplies them on the bf16 units
and keeps its softmax statistics (running max and sum) and accumulators in fp32; only its inputs and its output
are rounded to bf16. The mask is left as it is: an fp32 additive mask is added to the fp32 scores (no large
negative value rounds to ``-inf``), a boolean one is unchanged. The casts sit at the attention's boundaries and
fuse into the kernels that produce Q/K/V (the linear's bias and the head transpose) and consume the output.

Measured on an Intel Xeon with AMX (2 threads, ``quantize="bf16"`` without and with this pass, same process,
interleaved): MiniLM 8 × 128 31.0 → 27.8 ms (min pooled cosine 0.99998 both), SmolLM2 prefill 1 × 256
135.0 → 115.4 ms (held-out perplexity +0.39% → +0.25%); BENCHMARKS.md, "Quantization on an Intel Xeon host with
AMX". Where bf16 is emulated (no AVX512-BF16 or AMX) it is slower than fp32, so
``quantize="bf16"`` and ``quantize="auto"`` add this pass only where this machine's measured bf16 rate beats its
fp32 rate (:func:`fxopt.quantize.precision_pipeline`), before the precision planner, whose simulations then run
attention in bf16 too.

Lossy (``tolerance="budget"``): the bf16 mode's budget is checked on the compiled model.

Before::

    %scaled_dot_product_attention = aten.scaled_dot_product_attention(%q, %k, %v, %mask, scale=0.5) : f32[batch, 4, 6, 8]

After::

    %_to_copy_default = aten._to_copy(%q, dtype=bfloat16) : bf16[batch, 4, 6, 8]
    %_to_copy_default_1 = aten._to_copy(%k, dtype=bfloat16) : bf16[batch, 4, 6, 8]
    %_to_copy_default_2 = aten._to_copy(%v, dtype=bfloat16) : bf16[batch, 4, 6, 8]
    %scaled_dot_product_attention_default = aten.scaled_dot_product_attention(%_to_copy_default, %_to_copy_default_1, %_to_copy_default_2, %mask, scale=0.5) : bf16[batch, 4, 6, 8]
    %_to_copy_default_3 = aten._to_copy(%scaled_dot_product_attention_default, dtype=float32) : f32[batch, 4, 6, 8]
"""
from __future__ import annotations

import torch

from fxopt.graph_pass import PassContext, PassResult, graph_pass
from fxopt.rewriter import Rewriter

aten = torch.ops.aten


@graph_pass("cast-attention-bf16", level=2, tolerance="budget",
            after=("fuse-attention", "single-query-attention"), before=("plan-precision", "select-gemm-backend"))
def cast_attention_bf16(gm: torch.fx.GraphModule, ctx: PassContext) -> PassResult:
    """fp32 attention → attention on bf16 Q/K/V with fp32 softmax statistics, its output cast back to fp32."""
    rw = Rewriter(gm)
    for node in list(gm.graph.find_nodes(op="call_function", target=aten.scaled_dot_product_attention.default)):
        q, k, v, *rest = node.args
        if any(t.meta["val"].dtype != torch.float32 for t in (q, k, v)):
            rw.count("left alone (not fp32)")
            continue
        q16, k16, v16 = (rw.call(aten._to_copy.default, (t,), {"dtype": torch.bfloat16}, before=node)
                         for t in (q, k, v))
        attention = rw.call(aten.scaled_dot_product_attention.default, (q16, k16, v16, *rest), dict(node.kwargs),
                            before=node)
        rw.replace(node, rw.call(aten._to_copy.default, (attention,), {"dtype": torch.float32}, before=node))
        rw.count("attentions")
    rw.remove_unused()
    return rw.result()
