"""Running a precision plan without compiling it: the graph interpreted with each planned linear computed as its
kernel computes it.

The precision planner (:mod:`fxopt.quant_planner`) scores every candidate plan end to end on the calibration
batches. Compiling each candidate would take minutes, so :class:`PlanSimulator` interprets the fp32 graph and
computes each planned linear as the precision passes will:

* **int8** (``quantize-dynamic-int8``): each input row quantized to uint8 with its own scale and zero point, the
  int8 GEMM, then ``(acc − z · Σ_k q_w · s_w) · s_x``;
* **int8-static** (``quantize-static-int8``): the input quantized with the calibrated range, the int8 GEMM with
  that scale, zero point and the bias;
* **bf16** (``cast-linears-bf16``): bf16 operands, fp32 accumulation.

Where this torch has oneDNN's int8 linear (x86 builds with mkldnn: :func:`fxopt.onednn_int8.available`), int8
and int8-static linears call **the kernel the compiled graph calls**, ``onednn.qlinear_pointwise``, on the same
prepacked int8 weight and the same uint8 activations: the int32 sums are exact, so a simulated linear and a
compiled one differ only in how Inductor orders the fp32 arithmetic around them. Elsewhere they run an fp32 GEMM
on the dequantized weight — the same values, summed in another order. Measured on SmolLM2's shapes (256 rows,
Intel Xeon host, 2 threads), a simulated per-token int8 linear took 0.51–0.67× the time with the kernel that it
takes with the dequantized fp32 GEMM (the LM head, 576 → 49,152: 0.54×), and the int8 weights it holds are a
quarter of the dequantized ones' bytes.

``record`` keeps each linear's input instead of simulating (the planner's sensitivity step); ``noise_seed`` moves
each quantized linear's input by relative noise of ``noise`` first (the planner's robustness check:
:data:`fxopt.quant_planner.NOISE`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx

from fxopt import calibration, onednn_int8
from fxopt.calibration import ActivationRange
from fxopt.passes.quantize_dynamic_int8 import quantize_per_token, scaled_row_sums
from fxopt.passes.quantize_weights_int8 import quantize_per_channel

aten = torch.ops.aten


@dataclass
class Int8Weight:
    """A weight as the int8 kernels hold it: int8 per output channel and its fp32 scales, the scaled row sums that
    remove a per-token zero point, and oneDNN's packed form (None without oneDNN int8)."""
    q: torch.Tensor
    scales: torch.Tensor
    row_sums: torch.Tensor
    packed: torch.Tensor | None
    _dequantized: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def of(cls, weight: torch.Tensor, use_kernel: bool) -> "Int8Weight":
        q, scales = quantize_per_channel(weight)
        scales = scales.float()
        packed = torch.ops.onednn.qlinear_prepack(q, None) if use_kernel else None
        return cls(q, scales, scaled_row_sums(q, scales), packed)

    def dequantized(self) -> torch.Tensor:
        """``q · s`` in fp32: the GEMM operand where oneDNN's int8 kernel is missing (built once)."""
        if self._dequantized is None:
            self._dequantized = self.q.float() * self.scales[:, None]
        return self._dequantized


class Int8Weights:
    """Each linear's :class:`Int8Weight`, built once per plan search (keyed by the linear's node name);
    ``use_kernel``: run oneDNN's int8 kernel (default: where this torch has it)."""

    def __init__(self, use_kernel: bool | None = None):
        self.use_kernel = onednn_int8.available() if use_kernel is None else use_kernel
        self._by_key: dict[str, Int8Weight] = {}
        self._scratch: dict[torch.Size, torch.Tensor] = {}

    def get(self, key: str, weight: torch.Tensor) -> Int8Weight:
        if key not in self._by_key:
            self._by_key[key] = Int8Weight.of(weight, self.use_kernel)
        return self._by_key[key]

    def scratch(self, shape: torch.Size) -> torch.Tensor:
        """An fp32 buffer of ``shape`` for a temporary, reused by every linear with outputs of that shape."""
        if shape not in self._scratch:
            self._scratch[shape] = torch.empty(shape)
        return self._scratch[shape]


def _qlinear(rows: torch.Tensor, weight: Int8Weight, x_scale: float, x_zero_point: int, bias) -> torch.Tensor:
    return torch.ops.onednn.qlinear_pointwise(rows, float(x_scale), int(x_zero_point), weight.packed, weight.scales,
                                              None, bias, 1.0, 0, torch.float32, "none", [], "")


def simulate_linear(mode: str, x: torch.Tensor, w: torch.Tensor, bias, weights: Int8Weights, key: str,
                    static: ActivationRange | None = None) -> torch.Tensor:
    """``linear(x, w, bias)`` as the kernel of ``mode`` (int8, int8-static, bf16) computes it."""
    if mode == "bf16":
        # bf16 operands, fp32 accumulation and result: what oneDNN's bf16 GEMM returns once Inductor fuses the cast
        out = torch.nn.functional.linear(x.to(torch.bfloat16).float(), w.to(torch.bfloat16).float())
        return out + bias if bias is not None else out
    rows = x.reshape(-1, x.shape[-1])
    shape = (*x.shape[:-1], w.shape[0])
    if mode == "int8-static":
        scale, zero_point = calibration.static_qparams(static.low, static.high)
        if not weights.use_kernel:
            out = torch.nn.functional.linear(calibration.fake_quantize(x, static.low, static.high),
                                             weights.get(key, w).dequantized())
            return out + bias if bias is not None else out
        q = calibration.quantize(rows, scale, zero_point)
        return _qlinear(q, weights.get(key, w), scale, zero_point, bias).view(shape)
    q, scale, zero_point = quantize_per_token(rows)
    if weights.use_kernel:
        int8 = weights.get(key, w)
        # Σ q_x · q_w · s_w in int32, then the zero point's correction and the row scale: the quantized graph's ops,
        # in place and into a reused buffer (SmolLM2's LM head writes 50 MB per batch: fresh temporaries cost more
        # than its GEMM)
        out = _qlinear(q, int8, 1.0, 0, None)
        out.sub_(torch.mul(zero_point, int8.row_sums, out=weights.scratch(out.shape))).mul_(scale)
    else:
        out = torch.nn.functional.linear((q.float() - zero_point) * scale, weights.get(key, w).dequantized())
    out = out.view(shape)
    return out + bias if bias is not None else out


class PlanSimulator(torch.fx.Interpreter):
    """Runs the graph with the linears named in ``precision`` computed by :func:`simulate_linear` (``ranges``: each
    int8-static linear's calibrated input range); ``record`` keeps each linear's input instead; ``noise_seed``
    moves each quantized linear's input by relative noise of ``noise`` first."""

    def __init__(self, gm: torch.fx.GraphModule, precision: dict[str, str] | None = None,
                 record: dict[str, list[torch.Tensor]] | None = None, weights: Int8Weights | None = None,
                 ranges: dict[str, ActivationRange] | None = None, noise_seed: int | None = None,
                 noise: float = 0.0):
        super().__init__(gm)
        self.precision = precision or {}
        self.record = record
        self.weights = weights if weights is not None else Int8Weights()
        self.ranges = ranges or {}
        self.noise = noise
        self.generator = torch.Generator().manual_seed(noise_seed) if noise_seed is not None else None

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op != "call_function" or n.target is not aten.linear.default:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        if self.record is not None and n.name in self.record:
            self.record[n.name].append(args[0].detach())
        mode = self.precision.get(n.name, "fp32")
        if mode == "fp32":
            return aten.linear.default(*args, **kwargs)
        x = args[0]
        if self.generator is not None:  # fp32-sized differences, as another summation order makes them
            x = x * (1 + self.noise * torch.randn(x.shape, generator=self.generator, dtype=x.dtype))
        return simulate_linear(mode, x, args[1], args[2] if len(args) > 2 else None,
                               self.weights, n.name, self.ranges.get(n.name))
