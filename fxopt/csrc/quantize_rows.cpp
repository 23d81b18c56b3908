// fxopt's per-token activation quantization to uint8, for the int8 linears of quantize-dynamic-int8.
//
//   low = min(min_j x[r, j], 0)    high = max(max_j x[r, j], 0)    scale[r] = max((high - low) / 255, 1e-10)
//   zero_point[r] = round(-low / scale[r])    q[r, j] = clamp(round(x[r, j] · (1 / scale[r])) + zero_point[r], 0, 255)
//
// x: fp32 [rows, cols], contiguous (NaN gives unspecified codes, as in the aten form). The same arithmetic, in the
// same order, as fxopt.calibration.quantize_per_token (round half to even, IEEE products and quotients), so the
// result is bit for bit its; what differs is the work: one parallel task per block of rows reads each row twice
// while it is in L1, and as an extern op it makes Inductor store its input once, where Inductor's own fused loop
// recomputes whatever produced x (a GELU's erf) once for the range and again for the quantization.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>

#if defined(__AVX512F__)
#include <immintrin.h>
#define FXOPT_AVX512 1
#endif

namespace {

inline void quantize_row(const float* x, int64_t n, uint8_t* q, float* scale_out, float* zero_out) {
  float low = 0.0f, high = 0.0f;  // the range always includes 0: clamp_max(amin, 0), clamp_min(amax, 0)
  int64_t j = 0;
#ifdef FXOPT_AVX512
  __m512 vlow = _mm512_setzero_ps(), vhigh = _mm512_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    const __m512 v = _mm512_loadu_ps(x + j);
    vlow = _mm512_min_ps(vlow, v);
    vhigh = _mm512_max_ps(vhigh, v);
  }
  low = _mm512_reduce_min_ps(vlow);
  high = _mm512_reduce_max_ps(vhigh);
#endif
  for (; j < n; ++j) {
    low = std::min(low, x[j]);
    high = std::max(high, x[j]);
  }
  const float scale = std::max((high - low) / 255.0f, 1e-10f);
  const float inverse = 1.0f / scale;
  const float zero = std::nearbyint(-low / scale);
  *scale_out = scale;
  *zero_out = zero;
  j = 0;
#ifdef FXOPT_AVX512
  const __m512 vinverse = _mm512_set1_ps(inverse), vzero = _mm512_set1_ps(zero);
  const __m512 vmin = _mm512_setzero_ps(), vmax = _mm512_set1_ps(255.0f);
  for (; j + 16 <= n; j += 16) {
    __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + j), vinverse);
    v = _mm512_add_ps(_mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), vzero);
    v = _mm512_min_ps(_mm512_max_ps(v, vmin), vmax);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + j), _mm512_cvtusepi32_epi8(_mm512_cvtps_epu32(v)));
  }
#endif
  for (; j < n; ++j) {
    const float v = std::nearbyint(x[j] * inverse) + zero;
    q[j] = static_cast<uint8_t>(std::min(std::max(v, 0.0f), 255.0f));
  }
}

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
    for (int64_t r = r0; r < r1; ++r) quantize_row(xp + r * cols, cols, qp + r * cols, sp + r, zp + r);
  });
  return {q, scale, zero};
}

}  // namespace

TORCH_LIBRARY_IMPL(fxopt, CPU, m) { m.impl("quantize_rows", &quantize_rows); }
