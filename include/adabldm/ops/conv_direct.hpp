#pragma once
// 3x3 convolutions with stride 1 and one pixel of zero padding, computed directly instead of im2col + GEMM.
// With few channels (the detector's 16-128) a GEMM is mostly packing and the im2col copy is 9x the input; here
// each block of 8 output channels x 32 output pixels of one row keeps 16 AVX-512 accumulators in registers while it
// reads the 9 shifted rows of every input channel once: 2-3x the im2col path on those shapes (bench_ops
// BM_Conv3x3Small). The input gradient of such a convolution is the same convolution of the output gradient with
// the weights flipped and transposed, so conv2d_backward uses it too.
// Compiled only with AVX-512 (__AVX512F__); elsewhere conv2d keeps im2col + GEMM. tests/test_ops.cpp compares the
// two paths with each other and with a double-precision reference.
#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "adabldm/core/device.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/threads.hpp"

namespace adabldm::ops::detail {

#if defined(__AVX512F__)
inline constexpr bool kHasDirectConv3x3 = true;
#else
inline constexpr bool kHasDirectConv3x3 = false;
#endif

namespace direct {
constexpr int kOutBlock = 8;  // output channels per register block

#if defined(__AVX512F__)
/// One row segment of a block of 8 output channels: NV vectors of 16 pixels starting at x0, the last one masked by
/// `last`. xp: this image's padded input [C, H + 2, W + 2] at row y (its top padding row is row 0), wp: the block's
/// packed weights [C][9][8], bias8: 8 values (zeros when there is no bias). Writes rows o < o_count of out.
template <int NV>
inline void row_tile(const float* xp, int64_t plane, int64_t Wp, int64_t C, const float* wp, const float* bias8,
                     float* out, int64_t HW, int o_count, __mmask16 last) {
  __m512 acc[kOutBlock][NV];
  for (int i = 0; i < kOutBlock; ++i)
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_set1_ps(bias8[i]);
  for (int64_t c = 0; c < C; ++c) {
    const float* src = xp + c * plane;
    const float* wc = wp + c * 9 * kOutBlock;
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx) {
        const float* s = src + ky * Wp + kx;
        const float* wk = wc + (ky * 3 + kx) * kOutBlock;
        __m512 in[NV];
        for (int v = 0; v + 1 < NV; ++v) in[v] = _mm512_loadu_ps(s + 16 * v);
        in[NV - 1] = _mm512_maskz_loadu_ps(last, s + 16 * (NV - 1));
        for (int i = 0; i < kOutBlock; ++i) {
          const __m512 wv = _mm512_set1_ps(wk[i]);
          for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_fmadd_ps(wv, in[v], acc[i][v]);
        }
      }
  }
  for (int i = 0; i < o_count; ++i) {
    for (int v = 0; v + 1 < NV; ++v) _mm512_storeu_ps(out + i * HW + 16 * v, acc[i][v]);
    _mm512_mask_storeu_ps(out + i * HW + 16 * (NV - 1), last, acc[i][NV - 1]);
  }
}
#endif
}  // namespace direct

/// out[N, O, H, W] = conv(x[N, C, H, W], w[O, C, 3, 3]) (+ bias[O], may be null) with stride 1, padding 1.
/// flip_transpose: use w as [C, O, 3, 3] rotated by 180 degrees, i.e. out = the input gradient of a convolution
/// whose weight is w [C, O, 3, 3], given its output gradient x (then O = w.dim(1)). Needs kHasDirectConv3x3.
inline void conv3x3_direct(const float* x, int64_t N, int64_t C, int64_t H, int64_t W, const float* w, int64_t O,
                           const float* bias, float* out, bool flip_transpose = false) {
#if defined(__AVX512F__)
  using direct::kOutBlock;
  const int64_t blocks = (O + kOutBlock - 1) / kOutBlock, Hp = H + 2, Wp = W + 2, plane = Hp * Wp, HW = H * W;
  // Weights packed per block of 8 outputs: [block][c][ky*3 + kx][8], zero rows past O.
  std::vector<float> wp(static_cast<std::size_t>(blocks * C * 9 * kOutBlock), 0.0f);
  std::vector<float> bias_p(static_cast<std::size_t>(blocks * kOutBlock), 0.0f);
  for (int64_t o = 0; o < O; ++o) {
    if (bias) bias_p[static_cast<std::size_t>(o)] = bias[o];
    for (int64_t c = 0; c < C; ++c)
      for (int k = 0; k < 9; ++k) {
        const float v = flip_transpose ? w[(c * O + o) * 9 + (8 - k)] : w[(o * C + c) * 9 + k];
        wp[static_cast<std::size_t>((((o / kOutBlock) * C + c) * 9 + k) * kOutBlock + o % kOutBlock)] = v;
      }
  }
  // Zero-padded input, one plane per (image, channel).
  // (From the host buffer cache, not a std::vector: no zeroing pass, and no fresh pages to fault in each call.)
  const auto xp_buffer = Cpu::allocate(static_cast<std::size_t>(N * C * plane) * sizeof(float));
  float* const xp = static_cast<float*>(xp_buffer.get());
  parallel_for(N * C, [&](int64_t nc) {
    float* d = xp + nc * plane;
    const float* s = x + nc * HW;
    std::fill(d, d + Wp, 0.0f);
    for (int64_t y = 0; y < H; ++y) {
      float* row = d + (y + 1) * Wp;
      row[0] = 0.0f;
      std::memcpy(row + 1, s + y * W, static_cast<std::size_t>(W) * sizeof(float));
      row[W + 1] = 0.0f;
    }
    std::fill(d + (H + 1) * Wp, d + plane, 0.0f);
  }, grain_for(HW));
  // Work items: (image, block of outputs, row).
  parallel_for(N * blocks * H, [&](int64_t item) {
    const int64_t y = item % H, b = item / H % blocks, n = item / H / blocks;
    const float* xrow = xp + n * C * plane + y * Wp;
    const float* wb = wp.data() + b * C * 9 * kOutBlock;
    const float* bb = bias_p.data() + b * kOutBlock;
    float* orow = out + (n * O + b * kOutBlock) * HW + y * W;
    const int o_count = static_cast<int>(std::min<int64_t>(kOutBlock, O - b * kOutBlock));
    int64_t x0 = 0;
    for (; x0 + 32 <= W; x0 += 32)
      direct::row_tile<2>(xrow + x0, plane, Wp, C, wb, bb, orow + x0, HW, o_count, 0xFFFF);
    const int64_t rest = W - x0;
    if (rest > 16) {
      direct::row_tile<2>(xrow + x0, plane, Wp, C, wb, bb, orow + x0, HW, o_count,
                          static_cast<__mmask16>((1u << (rest - 16)) - 1));
    } else if (rest > 0) {
      direct::row_tile<1>(xrow + x0, plane, Wp, C, wb, bb, orow + x0, HW, o_count,
                          static_cast<__mmask16>(rest == 16 ? 0xFFFFu : (1u << rest) - 1));
    }
  }, grain_for(W * C * 9 * kOutBlock));
#else
  (void)x, (void)N, (void)C, (void)H, (void)W, (void)w, (void)O, (void)bias, (void)out, (void)flip_transpose;
  throw Error("conv3x3_direct: built without AVX-512");
#endif
}

}  // namespace adabldm::ops::detail
