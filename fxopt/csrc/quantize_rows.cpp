// fxopt's per-token activation quantization to uint8, for the int8 linears of quantize-dynamic-int8: each row of
// x (fp32 [rows, cols], contiguous; NaN gives unspecified codes, as in the aten form) quantized by
// fxopt::quantize_row (quantize_row.h, which states the arithmetic), bit for bit the aten form's codes. What differs
// is the work: one parallel task per block of rows reads each row twice while it is in L1, and as an extern op it
// makes Inductor store its input once, where Inductor's own fused loop recomputes whatever produced x (a GELU's
// erf) once for the range and again for the quantization.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "quantize_row.h"

namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_rows(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.dim() == 2 && x_in.scalar_type() == at::kFloat, "fxopt::quantize_rows takes fp32 [rows, cols]");
  const at::Tensor x = x_in.contiguous();
  const int64_t rows = x.size(0), cols = x.size(1);
  at::Tensor q = at::empty({rows, cols}, x.options().dtype(at::kByte));
  at::Tensor scale = at::empty({rows, 1}, x.options());
  at::Tensor zero = at::empty({rows, 1}, x.options());
  const float* xp = x.data_ptr<float>();
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = scale.data_ptr<float>();
  float* zp = zero.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) fxopt::quantize_row(xp + r * cols, cols, qp + r * cols, sp + r, zp + r);
  });
  return {q, scale, zero};
}

}  // namespace

TORCH_LIBRARY_IMPL(fxopt, CPU, m) { m.impl("quantize_rows", &quantize_rows); }
