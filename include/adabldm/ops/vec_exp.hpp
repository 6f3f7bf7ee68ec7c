#pragma once
// exp over a span of floats, vectorised: y[i] = exp(a * x[i] + b). The activations (SiLU, QuickGELU, GELU's
// derivative) and attention's softmax call it; scalar std::exp per element took a tenth of an SD UNet step.
// AVX-512: n = round((a x + b) / ln 2), r = a x + b - n ln 2 (in two parts, Cody-Waite), exp(r) by Cephes' degree-6
// polynomial (within 2 ulp of std::exp on [-87, 88]), times 2^n with VSCALEFPS, which gives inf above the range and
// 0 (through denormals) below it; NaN stays NaN. Elsewhere a scalar loop of std::exp.
#include <cmath>
#include <cstdint>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace adabldm::ops::detail {

#if defined(__AVX512F__)
inline __m512 exp512(__m512 x) {
  // min / max return their second operand when either is NaN: the constant goes first, so NaN passes through.
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}
#endif

/// y[i] = exp(a * x[i] + b) for i < n (y may be x).
inline void exp_span(const float* x, float* y, int64_t n, float a = 1.0f, float b = 0.0f) {
  int64_t i = 0;
#if defined(__AVX512F__)
  const __m512 va = _mm512_set1_ps(a), vb = _mm512_set1_ps(b);
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, exp512(_mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), vb)));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1);
    _mm512_mask_storeu_ps(y + i, m, exp512(_mm512_fmadd_ps(va, _mm512_maskz_loadu_ps(m, x + i), vb)));
    return;
  }
#endif
  for (; i < n; ++i) y[i] = std::exp(a * x[i] + b);
}

}  // namespace adabldm::ops::detail
