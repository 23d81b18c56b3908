// fxopt's weight-streaming int8 GEMV with grouped scales, for decode steps (see fxopt/native_gemv.py).
//
//   out[r, o] = sum_j s[o, j] * sum_i q[o, j, i] * x[r, j, i]  +  sum_j z[o, j] * sum_i x[r, j, i]  (+ bias[o])
//
// q: int8 [out, in]; s, z: fp32 [out, in / g]; x: fp32 [..., in], contiguous. Activations stay fp32: each int8
// weight is widened to fp32 in registers and multiplied into one of ROWS independent accumulators (one per
// output channel of a block), and each group's sum is scaled once, so the loop issues three vector instructions
// per 16 weights and reads every weight once, prefetching the next block's. Built by fxopt on the machine that runs it (-march=native); the
// AVX-512 path is the fast one, the portable path is exact and slow (fxopt measures before choosing it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>
#define FXOPT_AVX512 1
#endif

namespace {

constexpr int ROWS = 4;  // output channels per block: independent accumulators, one read of x per group

#ifdef FXOPT_AVX512
// sum_j a[j] * b[j] over n floats, vectorized with a masked tail
inline __m512 dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 m = n - j >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (n - j)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + j), _mm512_maskz_loadu_ps(m, b + j), acc);
  }
  return acc;
}

template <int R>
inline void block(const float* x, const int8_t* q, const float* s, const float* z, const float* xs, int64_t k,
                  int64_t g, int64_t groups, float* out) {
  __m512 acc[R];
  for (int u = 0; u < R; ++u) acc[u] = z ? dot(z + u * groups, xs, groups) : _mm512_setzero_ps();
  for (int64_t j = 0; j < groups; ++j) {
    __m512 part[R];
    for (int u = 0; u < R; ++u) part[u] = _mm512_setzero_ps();
    // the next block's rows at this group: with the hardware prefetcher alone SmolLM2's decode linears streamed
    // at 11 GB/s, with this at 16 GB/s (Intel Xeon, 2 threads; a prefetch past the end never faults)
    for (int u = 0; u < R; ++u) _mm_prefetch(reinterpret_cast<const char*>(q + (u + R) * k + j * g), _MM_HINT_T0);
    for (int64_t t = 0; t < g; t += 16) {
      const __m512 xv = _mm512_loadu_ps(x + j * g + t);
      for (int u = 0; u < R; ++u) {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + u * k + j * g + t));
        part[u] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)), xv, part[u]);
      }
    }
    for (int u = 0; u < R; ++u) acc[u] = _mm512_fmadd_ps(part[u], _mm512_set1_ps(s[u * groups + j]), acc[u]);
  }
  for (int u = 0; u < R; ++u) out[u] = _mm512_reduce_add_ps(acc[u]);
}
#else
template <int R>
inline void block(const float* x, const int8_t* q, const float* s, const float* z, const float* xs, int64_t k,
                  int64_t g, int64_t groups, float* out) {
  for (int u = 0; u < R; ++u) {
    float r = 0.f;
    for (int64_t j = 0; j < groups; ++j) {
      float p = 0.f;
      for (int64_t i = 0; i < g; ++i) p += float(q[u * k + j * g + i]) * x[j * g + i];
      r += p * s[u * groups + j] + (z ? z[u * groups + j] * xs[j] : 0.f);
    }
    out[u] = r;
  }
}
#endif

at::Tensor gemv_int8_grouped(const at::Tensor& x, const at::Tensor& q, const at::Tensor& scales,
                             const std::optional<at::Tensor>& zeros, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(q.dim() == 2 && q.scalar_type() == at::kChar && q.is_contiguous(), "q: contiguous int8 [out, in]");
  const int64_t n = q.size(0), k = q.size(1);
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == n && scales.scalar_type() == at::kFloat &&
              scales.is_contiguous() && scales.size(1) > 0 && k % scales.size(1) == 0,
              "scales: contiguous fp32 [out, groups], groups dividing in");
  const int64_t groups = scales.size(1), g = k / groups;
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.size(-1) == k, "x: fp32 [..., in]");
#ifdef FXOPT_AVX512
  TORCH_CHECK(g % 16 == 0, "group size must be a multiple of 16");
#endif
  if (zeros) TORCH_CHECK(zeros->sizes() == scales.sizes() && zeros->scalar_type() == at::kFloat && zeros->is_contiguous());
  if (bias) TORCH_CHECK(bias->numel() == n && bias->scalar_type() == at::kFloat && bias->is_contiguous());
  const at::Tensor xc = x.contiguous();
  const int64_t rows = xc.numel() / k;
  std::vector<int64_t> sizes = x.sizes().vec();
  sizes.back() = n;
  at::Tensor out = at::empty(sizes, x.options());
  const float* xp = xc.const_data_ptr<float>();
  const int8_t* qp = q.const_data_ptr<int8_t>();
  const float* sp = scales.const_data_ptr<float>();
  const float* zp = zeros ? zeros->const_data_ptr<float>() : nullptr;
  const float* bp = bias ? bias->const_data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  std::vector<float> xs(zp ? rows * groups : 0);  // each group's sum of x, which the zeros multiply
  for (int64_t r = 0; zp && r < rows; ++r)
    for (int64_t j = 0; j < groups; ++j) {
      float a = 0.f;
      for (int64_t i = 0; i < g; ++i) a += xp[r * k + j * g + i];
      xs[r * groups + j] = a;
    }
  at::parallel_for(0, (n + ROWS - 1) / ROWS, 16, [&](int64_t b0, int64_t b1) {
    float tmp[ROWS];
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t o = b * ROWS;
      for (int64_t r = 0; r < rows; ++r) {  // the block's weights stay in L1 while every row uses them
        const float* xr = xp + r * k;
        const float* xsr = zp ? xs.data() + r * groups : nullptr;
        float* dst = op + r * n + o;
        if (o + ROWS <= n) {
          block<ROWS>(xr, qp + o * k, sp + o * groups, zp ? zp + o * groups : nullptr, xsr, k, g, groups, tmp);
          for (int u = 0; u < ROWS; ++u) dst[u] = tmp[u] + (bp ? bp[o + u] : 0.f);
        } else {
          for (int64_t u = 0; o + u < n; ++u) {
            block<1>(xr, qp + (o + u) * k, sp + (o + u) * groups, zp ? zp + (o + u) * groups : nullptr, xsr, k,
                     g, groups, tmp);
            dst[u] = tmp[0] + (bp ? bp[o + u] : 0.f);
          }
        }
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fxopt, CPU, m) { m.impl("gemv_int8_grouped", &gemv_int8_grouped); }
