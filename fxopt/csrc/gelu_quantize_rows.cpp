// The epilogue of a dynamic int8 linear, its GELU and the per-token quantization of the next int8 linear's input,
// in one pass over each row (fxopt.passes.fuse_gelu_quantize_rows):
//
//   y[r, j] = (acc[r, j] - zero_point[r] · colsum[j]) · scale[r] + bias[j]
//   g[r, j] = y / 2 · (1 + erf(y / √2))
//   (q, scale', zero_point') = quantize_row(g[r, :])                           (quantize_row.h)
//
// acc: fp32 [rows, cols], what onednn.qlinear_pointwise returns (Σ q_x · q_w · s_w); zero_point, scale: fp32
// [rows, 1], the input rows' quantization; colsum, bias: fp32 [cols]. Unfused, Inductor's loop reads acc and writes
// g in fp32, and fxopt::quantize_rows reads g again; here g lives in a row buffer in L1 and only the uint8 codes
// are written. erf is a rational approximation on [-4, 4] (the one Eigen and XLA use; beyond it erf is ±1 in fp32),
// within 5e-7 of erf, where ATen's is within 1e-7 (without AVX-512, and for a row's last cols % 16 values, std::erf):
// the codes can differ from the unfused graph's by one step where a value falls on a rounding boundary.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "quantize_row.h"

namespace {

#ifdef FXOPT_AVX512
inline __m512 erf16(__m512 a) {
  const __m512 x = _mm512_max_ps(_mm512_min_ps(a, _mm512_set1_ps(4.0f)), _mm512_set1_ps(-4.0f));
  const __m512 x2 = _mm512_mul_ps(x, x);
  __m512 p = _mm512_fmadd_ps(x2, _mm512_set1_ps(-2.72614225801306e-10f), _mm512_set1_ps(2.77068142495902e-08f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.10102402082508e-06f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-5.69250639462346e-05f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-7.34990630326855e-04f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-2.95459980854025e-03f));
  p = _mm512_fmadd_ps(x2, p, _mm512_set1_ps(-1.60960333262415e-02f));
  p = _mm512_mul_ps(x, p);
  __m512 q = _mm512_fmadd_ps(x2, _mm512_set1_ps(-1.45660718464996e-05f), _mm512_set1_ps(-2.13374055278905e-04f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.68282697438203e-03f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-7.37332916720468e-03f));
  q = _mm512_fmadd_ps(x2, q, _mm512_set1_ps(-1.42647390514189e-02f));
  __m512 r = _mm512_rcp14_ps(q);  // 1/q to 14 bits, then one Newton step: to fp32 rounding, without a division
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0f)));
  return _mm512_mul_ps(p, r);
}
#endif

inline float gelu(float y) { return 0.5f * y * (1.0f + std::erf(y * 0.70710678118654752f)); }

// g = GELU((acc - zero_point · colsum) · scale + bias) for one row
inline void dequantize_gelu_row(const float* acc, float zero_point, float scale, const float* colsum,
                                const float* bias, int64_t n, float* g) {
  int64_t j = 0;
#ifdef FXOPT_AVX512
  const __m512 vzero = _mm512_set1_ps(zero_point), vscale = _mm512_set1_ps(scale);
  const __m512 half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 rsqrt2 = _mm512_set1_ps(0.70710678118654752f);
  for (; j + 16 <= n; j += 16) {
    __m512 y = _mm512_sub_ps(_mm512_loadu_ps(acc + j), _mm512_mul_ps(vzero, _mm512_loadu_ps(colsum + j)));
    y = _mm512_mul_ps(y, vscale);
    if (bias != nullptr) y = _mm512_add_ps(y, _mm512_loadu_ps(bias + j));
    _mm512_storeu_ps(g + j, _mm512_mul_ps(_mm512_mul_ps(half, y), _mm512_add_ps(one, erf16(_mm512_mul_ps(y, rsqrt2)))));
  }
#endif
  for (; j < n; ++j) {
    float y = (acc[j] - zero_point * colsum[j]) * scale;
    if (bias != nullptr) y += bias[j];
    g[j] = gelu(y);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gelu_quantize_rows(
    const at::Tensor& acc_in, const at::Tensor& zero_point_in, const at::Tensor& scale_in,
    const at::Tensor& colsum_in, const c10::optional<at::Tensor>& bias_in) {
  TORCH_CHECK(acc_in.dim() == 2 && acc_in.scalar_type() == at::kFloat,
              "fxopt::gelu_quantize_rows takes fp32 [rows, cols] accumulators");
  const at::Tensor acc = acc_in.contiguous();
  const int64_t rows = acc.size(0), cols = acc.size(1);
  const at::Tensor zero_in = zero_point_in.contiguous(), row_scale = scale_in.contiguous();
  const at::Tensor colsum = colsum_in.contiguous();
  TORCH_CHECK(zero_in.numel() == rows && row_scale.numel() == rows && colsum.numel() == cols,
              "fxopt::gelu_quantize_rows: a zero point and a scale per row, a column sum per column");
  at::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->contiguous();
    TORCH_CHECK(bias.numel() == cols && bias.scalar_type() == at::kFloat, "fxopt::gelu_quantize_rows: fp32 bias [cols]");
  }
  at::Tensor q = at::empty({rows, cols}, acc.options().dtype(at::kByte));
  at::Tensor scale = at::empty({rows, 1}, acc.options());
  at::Tensor zero = at::empty({rows, 1}, acc.options());
  const float* ap = acc.data_ptr<float>();
  const float* zin = zero_in.data_ptr<float>();
  const float* sin = row_scale.data_ptr<float>();
  const float* cp = colsum.data_ptr<float>();
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  uint8_t* qp = q.data_ptr<uint8_t>();
  float* sp = scale.data_ptr<float>();
  float* zp = zero.data_ptr<float>();
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(cols, 1));
  at::parallel_for(0, rows, grain, [&](int64_t r0, int64_t r1) {
    std::vector<float> g(cols);  // one row of GELU outputs, in L1 while it is quantized
    for (int64_t r = r0; r < r1; ++r) {
      dequantize_gelu_row(ap + r * cols, zin[r], sin[r], cp, bp, cols, g.data());
      fxopt::quantize_row(g.data(), cols, qp + r * cols, sp + r, zp + r);
    }
  });
  return {q, scale, zero};
}

}  // namespace

TORCH_LIBRARY_IMPL(fxopt, CPU, m) { m.impl("gelu_quantize_rows", &gelu_quantize_rows); }
