// The per-token quantization of one fp32 row to uint8, shared by fxopt::quantize_rows (quantize_rows.cpp) and
// fxopt::gelu_quantize_rows (gelu_quantize_rows.cpp):
//
//   low = min(min_j x[j], 0)    high = max(max_j x[j], 0)    scale = max((high - low) / 255, 1e-10)
//   zero_point = round(-low / scale)    q[j] = clamp(round(x[j] · (1 / scale)) + zero_point, 0, 255)
//
// The same arithmetic, in the same order, as fxopt.passes.quantize_dynamic_int8.quantize_per_token's aten form
// (round half to even, IEEE products and quotients), so the codes are bit for bit its. Header-only: each kernel is its own library.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#define FXOPT_AVX512 1
#endif

namespace fxopt {

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

}  // namespace fxopt
