"""oneDNN's int8 linear, as fxopt's int8 passes emit it into the graph.

``onednn.qlinear_pointwise`` is the x86 int8 GEMM that PT2E's Q/DQ form turns into under Inductor with freezing.
fxopt calls it directly, because the activation forms it needs (per-token scales) have no Q/DQ spelling that
Inductor lowers. Its weight comes from ``onednn.qlinear_prepack`` applied to a constant: the graph stays runnable
eagerly (the pass manager's numeric check packs on every call), and the lowering packs once. By default
(``freezing="auto"``) :func:`fxopt.unfrozen_lowering.lift_weights` packs each weight and passes the packed tensor
to the compiled code as an input, so Inductor's caches serve the next compile; with ``freezing=True`` Inductor's
freezing folds the packing into a constant of its code.

Two facts decide the form, both measured (a 1024 × 384 → 1536 linear, AMD EPYC with AVX-512 VNNI):

- activations must be **uint8**: with int8 activations oneDNN falls back to its reference kernel, 6,360 ms
  against 1.5–2.6 ms for uint8 (fp32 MKL: 8.1 ms). The passes therefore quantize activations to uint8 with a
  zero point, never to int8.
- ``qlinear_prepack`` has no fake (meta) implementation in torch, so ``torch.export``-style fake propagation and
  Inductor's tracing cannot see through it; :func:`register_fake_prepack` adds one (the packed tensor reports
  shape ``(in, out)``, as the real opaque one does).
"""
from __future__ import annotations

import torch

onednn = torch.ops.onednn
_registered = False


def register_fake_prepack() -> None:
    """Give ``onednn.qlinear_prepack`` a fake implementation (once per process)."""
    global _registered
    if _registered:
        return
    try:
        @torch.library.register_fake("onednn::qlinear_prepack")
        def _fake_prepack(weight, x_shape):
            return weight.new_empty((weight.shape[1], weight.shape[0]))
    except RuntimeError as e:  # a future torch may ship its own
        if "already" not in str(e):
            raise
    _registered = True


def available() -> bool:
    """Whether this torch build has oneDNN's int8 linear (x86 builds with mkldnn do)."""
    return torch.backends.mkldnn.is_available() and hasattr(onednn, "qlinear_pointwise")


def emit_qlinear(rw, q_rows, weight_int8, weight_scales, before, *, x_scale: float = 1.0, x_zero_point: int = 0,
                 bias=None, post_op: str = "none", output: tuple[float, int] | None = None):
    """``((q_rows - x_zero_point) · x_scale) @ (weight_int8 · weight_scales)ᵀ (+ bias)`` in fp32, for uint8
    ``q_rows`` and a constant int8 ``weight_int8`` (out × in). With the defaults (scale 1, zero point 0) it is the
    raw ``Σ q_x · q_w · s_w``, for callers that apply per-row scales and zero points themselves. ``post_op="gelu"``
    applies the exact GELU in oneDNN's epilogue; ``output=(scale, zero_point)`` returns uint8 in that
    quantization instead of fp32."""
    register_fake_prepack()
    packed = rw.call(onednn.qlinear_prepack.default, (weight_int8, None), before=before)
    out_scale, out_zero_point = output if output is not None else (1.0, 0)
    return rw.call(onednn.qlinear_pointwise.default,
                   (q_rows, float(x_scale), int(x_zero_point), packed, weight_scales, None, bias, float(out_scale),
                    int(out_zero_point), torch.uint8 if output is not None else torch.float32, post_op, [],
                    "none" if post_op == "gelu" else ""), before=before)
