// fxopt's attention of one query per sequence over a static KV cache, for decode steps (see fxopt/native_kernels.py).
//
//   out[b, h, 0, :] = softmax_l(scale * q[b, h, 0, :] . k[b, h / G, l, :]  (masked)) @ v[b, h / G, l, :]
//
// q: fp32 [B, H, 1, D]; keys, values: fp32 [B, Hkv, L, D] with contiguous rows (the cache); G = H / Hkv query heads
// share each K/V head, read in place (no repeated copy). mask: bool (true attends) or fp32 (added), broadcastable
// to [B, H, 1, L]. One task per (sequence, query head), in parallel; a row with every slot masked gives zeros.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#define FXOPT_AVX512 1
#endif

namespace {

inline float dot(const float* a, const float* b, int64_t n) {
#ifdef FXOPT_AVX512
  if (n % 16 == 0) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    return _mm512_reduce_add_ps(acc);
  }
#endif
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// the dot products of a with four rows b, b + stride, ...: four independent accumulators
inline void dot4(const float* a, const float* b, int64_t stride, int64_t n, float* out) {
#ifdef FXOPT_AVX512
  if (n % 16 == 0) {
    __m512 c0 = _mm512_setzero_ps(), c1 = _mm512_setzero_ps(), c2 = _mm512_setzero_ps(), c3 = _mm512_setzero_ps();
    for (int64_t i = 0; i < n; i += 16) {
      const __m512 av = _mm512_loadu_ps(a + i);
      c0 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b + i), c0);
      c1 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b + stride + i), c1);
      c2 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b + 2 * stride + i), c2);
      c3 = _mm512_fmadd_ps(av, _mm512_loadu_ps(b + 3 * stride + i), c3);
    }
    out[0] = _mm512_reduce_add_ps(c0); out[1] = _mm512_reduce_add_ps(c1);
    out[2] = _mm512_reduce_add_ps(c2); out[3] = _mm512_reduce_add_ps(c3);
    return;
  }
#endif
  for (int u = 0; u < 4; ++u) out[u] = dot(a, b + u * stride, n);
}

inline void axpy(float alpha, const float* x, float* y, int64_t n) {  // y += alpha * x
#ifdef FXOPT_AVX512
  if (n % 16 == 0) {
    const __m512 a = _mm512_set1_ps(alpha);
    for (int64_t i = 0; i < n; i += 16)
      _mm512_storeu_ps(y + i, _mm512_fmadd_ps(a, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& values,
                            const std::optional<at::Tensor>& mask, double scale) {
  TORCH_CHECK(q.dim() == 4 && q.size(2) == 1 && q.scalar_type() == at::kFloat, "q: fp32 [batch, heads, 1, dim]");
  TORCH_CHECK(keys.dim() == 4 && keys.sizes() == values.sizes() && keys.scalar_type() == at::kFloat &&
              values.scalar_type() == at::kFloat, "keys, values: fp32 [batch, kv_heads, slots, dim]");
  const int64_t B = q.size(0), H = q.size(1), D = q.size(3), Hkv = keys.size(1), L = keys.size(2);
  TORCH_CHECK(keys.size(0) == B && keys.size(3) == D && Hkv > 0 && H % Hkv == 0, "q and the cache disagree");
  TORCH_CHECK(keys.stride(3) == 1 && values.stride(3) == 1, "the cache's rows must be contiguous");
  const int64_t G = H / Hkv;
  const at::Tensor qc = q.contiguous();
  at::Tensor m;
  bool boolean = false;
  if (mask) {
    TORCH_CHECK(mask->scalar_type() == at::kBool || mask->scalar_type() == at::kFloat, "mask: bool or fp32");
    boolean = mask->scalar_type() == at::kBool;
    m = mask->expand({B, H, 1, L});
  }
  at::Tensor out = at::empty({B, H, 1, D}, q.options());
  const float* qp = qc.const_data_ptr<float>();
  const float* kp = keys.const_data_ptr<float>();
  const float* vp = values.const_data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t kb = keys.stride(0), kh = keys.stride(1), kl = keys.stride(2);
  const int64_t vb = values.stride(0), vh = values.stride(1), vl = values.stride(2);
  const int64_t mb = mask ? m.stride(0) : 0, mh = mask ? m.stride(1) : 0, ml = mask ? m.stride(3) : 0;
  const bool* mbool = mask && boolean ? m.const_data_ptr<bool>() : nullptr;
  const float* mfloat = mask && !boolean ? m.const_data_ptr<float>() : nullptr;
  const float ninf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, B * H, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> p(L);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / H, h = t % H, g = h / G;
      const float* qv = qp + t * D;
      const float* kbase = kp + b * kb + g * kh;
      const float* vbase = vp + b * vb + g * vh;
      const float sc = static_cast<float>(scale);
      int64_t l = 0;
      for (; l + 4 <= L; l += 4) dot4(qv, kbase + l * kl, kl, D, p.data() + l);
      for (; l < L; ++l) p[l] = dot(qv, kbase + l * kl, D);
      float hi = ninf;
      for (l = 0; l < L; ++l) {
        const int64_t mi = b * mb + h * mh + l * ml;
        float s = (mbool && !mbool[mi]) ? ninf : p[l] * sc + (mfloat ? mfloat[mi] : 0.f);
        p[l] = s;
        hi = s > hi ? s : hi;
      }
      float* o = op + t * D;
      for (int64_t d = 0; d < D; ++d) o[d] = 0.f;
      if (hi == ninf) continue;  // every slot masked
      using Vec = at::vec::Vectorized<float>;
      const Vec hv(hi);
      at::vec::map([&](Vec x) { return (x - hv).exp(); }, p.data(), p.data(), L);
      const float sum = at::vec::reduce_all<float>([](Vec& x, Vec& y) { return x + y; }, p.data(), L);
      for (l = 0; l < L; ++l)
        if (p[l] != 0.f) axpy(p[l], vbase + l * vl, o, D);
      const float inv = 1.f / sum;
      for (int64_t d = 0; d < D; ++d) o[d] *= inv;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fxopt, CPU, m) { m.impl("decode_attention", &decode_attention); }
