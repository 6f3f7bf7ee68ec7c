#pragma once
// CUDA twins of ops/elementwise.hpp: broadcasting add / sub / mul (and add_ in place), affine, scale, clamp,
// concat, nearest upsampling, sum_to_shape (the reverse of broadcasting), with their backward kernels; every
// public op records itself on the autograd tape exactly like its CPU twin. Arithmetic is in float for every
// storage type; for float tensors every kernel here performs the same operations in the same order as the CPU
// op, so results agree to the last bit unless the compilers contract a*x+b into an FMA differently.
#include <algorithm>
#include <cmath>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/cuda/tensor.cuh"
#include "adabldm/ops/elementwise.hpp"

namespace adabldm::ops {

namespace cuda_detail {
using cuda::detail::grid_for;
using cuda::detail::kThreads;
using cuda::detail::ld;
using cuda::detail::st;
using cuda::detail::Strided;
using cuda::detail::strided_of;
using cuda::detail::strided_offset;

enum class BinaryOp { Add, Sub, Mul };

template <BinaryOp Op>
__device__ __forceinline__ float apply(float x, float y) {
  if constexpr (Op == BinaryOp::Add) return x + y;
  else if constexpr (Op == BinaryOp::Sub) return x - y;
  else return x * y;
}

template <class T, BinaryOp Op>
__global__ void binary_same_kernel(const T* a, const T* b, T* out, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) st(out, i, apply<Op>(ld(a, i), ld(b, i)));
}
/// out[i] = a[sa(i)] op b[sb(i)]; sa / sb carry the output's shape with the inputs' broadcast strides.
/// `out` may alias `a` when sa is contiguous (add_ in place): element i reads a[i] before writing out[i].
template <class T, BinaryOp Op>
__global__ void binary_broadcast_kernel(const T* a, Strided sa, const T* b, Strided sb, T* out, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) st(out, i, apply<Op>(ld(a, strided_offset(sa, i)), ld(b, strided_offset(sb, i))));
}

template <class T, BinaryOp Op>
Tensor<T, Cuda> binary(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  const auto a = a_in.contiguous();
  const auto b = b_in.contiguous();
  cudaStream_t stream = cuda::current_stream();
  if (a.shape() == b.shape()) {
    auto out = Tensor<T, Cuda>::empty(a.shape());
    if (out.numel() > 0) {
      binary_same_kernel<T, Op><<<grid_for(out.numel()), kThreads, 0, stream>>>(a.data(), b.data(), out.data(),
                                                                                  out.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
    return out;
  }
  const Shape os = broadcast_shape(a.shape(), b.shape());
  auto out = Tensor<T, Cuda>::empty(os);
  if (out.numel() > 0) {
    binary_broadcast_kernel<T, Op><<<grid_for(out.numel()), kThreads, 0, stream>>>(
        a.data(), strided_of(os, detail::broadcast_strides(a.shape(), os)), b.data(),
        strided_of(os, detail::broadcast_strides(b.shape(), os)), out.data(), out.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return out;
}

/// What sum_to_shape reduces: the kept dimensions (the output's, in order) and the summed ones, with g's strides.
struct Reduction {
  int64_t keep_size[Shape::kMaxRank], keep_stride[Shape::kMaxRank];
  int64_t red_size[Shape::kMaxRank], red_stride[Shape::kMaxRank];
  int nk, nr;
  int64_t red_total;
};
__device__ __forceinline__ int64_t reduction_base(const Reduction& r, int64_t e) {
  int64_t base = 0;
  for (int k = r.nk - 1; k >= 0; --k) {
    base += e % r.keep_size[k] * r.keep_stride[k];
    e /= r.keep_size[k];
  }
  return base;
}
__device__ __forceinline__ int64_t reduction_offset(const Reduction& r, int64_t j) {
  int64_t at = 0;
  for (int k = r.nr - 1; k >= 0; --k) {
    at += j % r.red_size[k] * r.red_stride[k];
    j /= r.red_size[k];
  }
  return at;
}
/// One thread per output element, summing in the CPU's order (identical float results).
template <class T>
__global__ void sum_to_shape_thread_kernel(const T* g, Reduction r, T* out, int64_t n) {
  ADABLDM_GRID_STRIDE(e, n) {
    const int64_t base = reduction_base(r, e);
    float s = 0.0f;
    for (int64_t j = 0; j < r.red_total; ++j) s += ld(g, base + reduction_offset(r, j));
    st(out, e, s);
  }
}
/// One block per output element (long reductions over inner dimensions: coalesced reads, a tree sum).
template <class T>
__global__ void sum_to_shape_block_kernel(const T* g, Reduction r, T* out) {
  __shared__ float scratch[32];
  const int64_t e = blockIdx.x;
  const int64_t base = reduction_base(r, e);
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < r.red_total; j += blockDim.x) s += ld(g, base + reduction_offset(r, j));
  s = cuda::detail::block_sum(s, scratch);
  if (threadIdx.x == 0) st(out, e, s);
}

template <class T>
__global__ void affine_kernel(const T* x, T* y, float alpha, float beta, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) st(y, i, alpha * ld(x, i) + beta);
}
/// torch.clamp's comparisons in std::min / std::max order (a NaN input stays NaN).
template <class T>
__global__ void clamp_kernel(const T* x, T* y, float lo, float hi, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    float v = ld(x, i);
    v = v < lo ? lo : v;  // std::max(v, lo)
    v = hi < v ? hi : v;  // std::min(v, hi)
    st(y, i, v);
  }
}
template <class T>
__global__ void clamp_backward_kernel(const T* g, const T* x, T* dx, float lo, float hi, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const float v = ld(x, i);
    st(dx, i, v >= lo && v <= hi ? ld(g, i) : 0.0f);
  }
}
/// dst[o * dst_row + r] = src[o * run + r] for o < outer, r < run.
template <class T>
__global__ void concat_kernel(const T* src, T* dst, int64_t outer, int64_t run, int64_t dst_row) {
  ADABLDM_GRID_STRIDE(i, outer * run) {
    const int64_t o = i / run, r = i % run;
    dst[o * dst_row + r] = src[i];
  }
}
template <class T>
__global__ void upsample2x_kernel(const T* x, T* y, int64_t H, int64_t W, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {  // i over the output [NC, 2H, 2W]
    const int64_t ox = i % (2 * W), oy = i / (2 * W) % (2 * H), plane = i / (4 * H * W);
    y[i] = x[(plane * H + oy / 2) * W + ox / 2];
  }
}
template <class T>
__global__ void upsample2x_backward_kernel(const T* g, T* dx, int64_t H, int64_t W, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {  // i over the input [NC, H, W]
    const int64_t ix = i % W, row = i / W;  // row = plane * H + iy
    const T* g0 = g + row * 4 * W;          // output rows 2*iy and 2*iy+1 are adjacent
    const T* g1 = g0 + 2 * W;
    st(dx, i, (ld(g0, 2 * ix) + ld(g0, 2 * ix + 1)) + (ld(g1, 2 * ix) + ld(g1, 2 * ix + 1)));
  }
}
template <class T>
__global__ void upsample_nearest_kernel(const T* x, T* y, const int64_t* sy, const int64_t* sx, int64_t H,
                                        int64_t W, int64_t out_h, int64_t out_w, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const int64_t j = i % out_w, r = i / out_w % out_h, plane = i / (out_w * out_h);
    y[i] = x[(plane * H + sy[r]) * W + sx[j]];
  }
}
/// dx[plane, y, x] = sum of g[plane, i, j] over the output rows i in [row_start[y], row_start[y + 1]) and columns
/// j in [col_start[x], col_start[x + 1]) (the nearest maps are monotone), in the CPU scatter's order.
template <class T>
__global__ void upsample_nearest_backward_kernel(const T* g, T* dx, const int64_t* row_start,
                                                 const int64_t* col_start, int64_t H, int64_t W, int64_t out_h,
                                                 int64_t out_w, int64_t n) {
  ADABLDM_GRID_STRIDE(e, n) {
    const int64_t x = e % W, y = e / W % H, plane = e / (W * H);
    float s = 0.0f;
    for (int64_t i = row_start[y]; i < row_start[y + 1]; ++i)
      for (int64_t j = col_start[x]; j < col_start[x + 1]; ++j) s += ld(g, (plane * out_h + i) * out_w + j);
    st(dx, e, s);
  }
}

/// The nearest-neighbour source index of every output index (F.interpolate, exactly the CPU op's float maths).
inline std::vector<int64_t> nearest_map(int64_t in, int64_t out) {
  const float scale = static_cast<float>(in) / static_cast<float>(out);
  std::vector<int64_t> m(static_cast<std::size_t>(out));
  for (int64_t j = 0; j < out; ++j)
    m[static_cast<std::size_t>(j)] = std::min<int64_t>(static_cast<int64_t>(std::floor(j * scale)), in - 1);
  return m;
}
/// For a monotone map out -> in: start[v] = the first output index mapped to v or beyond (size in + 1).
inline std::vector<int64_t> nearest_starts(const std::vector<int64_t>& map, int64_t in) {
  std::vector<int64_t> start(static_cast<std::size_t>(in + 1), static_cast<int64_t>(map.size()));
  for (int64_t v = 0, j = 0; v <= in; ++v) {
    while (j < static_cast<int64_t>(map.size()) && map[static_cast<std::size_t>(j)] < v) ++j;
    start[static_cast<std::size_t>(v)] = j;
  }
  return start;
}
inline Tensor<int64_t, Cuda> upload_indices(const std::vector<int64_t>& v) {
  return cuda::to_device(Tensor<int64_t, Cpu>::from_vector(v, {static_cast<int64_t>(v.size())}));
}

template <class T>
void launch_affine(const Tensor<T, Cuda>& x, Tensor<T, Cuda>& y, float alpha, float beta) {
  if (x.numel() == 0) return;
  affine_kernel<T><<<grid_for(x.numel()), kThreads, 0, cuda::current_stream()>>>(x.data(), y.data(), alpha, beta,
                                                                                   x.numel());
  ADABLDM_CUDA_CHECK_LAUNCH();
}
}  // namespace cuda_detail

/// g (of a broadcast shape) summed down to `shape` (see the CPU sum_to_shape).
template <class T>
Tensor<T, Cuda> sum_to_shape(const Tensor<T, Cuda>& g_in, const Shape& shape) {
  if (g_in.shape() == shape) return g_in;
  const auto g = g_in.contiguous();
  const Shape& gs = g.shape();
  const int r = gs.rank(), off = r - shape.rank();
  check<ShapeError>(off >= 0, "sum_to_shape: ", gs.str(), " has fewer dimensions than ", shape.str());
  const Shape gst = contiguous_strides(gs);
  cuda_detail::Reduction red{};
  red.red_total = 1;
  bool inner_reduced = false;
  for (int d = 0; d < r; ++d) {
    const bool kept = d >= off && shape[d - off] == gs[d];
    check<ShapeError>(kept || d < off || shape[d - off] == 1, "sum_to_shape: ", gs.str(), " does not broadcast from ",
                      shape.str());
    if (kept) {
      red.keep_size[red.nk] = gs[d];
      red.keep_stride[red.nk++] = gst[d];
    } else {
      red.red_size[red.nr] = gs[d];
      red.red_stride[red.nr++] = gst[d];
      red.red_total *= gs[d];
      if (d == r - 1) inner_reduced = true;
    }
  }
  auto out = Tensor<T, Cuda>::empty(shape);
  const int64_t n = out.numel();
  if (n == 0) return out;
  cudaStream_t stream = cuda::current_stream();
  if (inner_reduced && red.red_total >= 1024 && n <= (int64_t{1} << 20)) {
    cuda_detail::sum_to_shape_block_kernel<T><<<static_cast<unsigned>(n), cuda_detail::kThreads, 0, stream>>>(
        g.data(), red, out.data());
  } else {
    cuda_detail::sum_to_shape_thread_kernel<T><<<cuda_detail::grid_for(n), cuda_detail::kThreads, 0, stream>>>(
        g.data(), red, out.data(), n);
  }
  ADABLDM_CUDA_CHECK_LAUNCH();
  return out;
}

/// alpha * x + beta (a new tensor). The scalars are applied in float.
template <class T>
Tensor<T, Cuda> affine(const Tensor<T, Cuda>& x_in, T alpha, T beta = T(0.0f)) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cuda>::empty(x.shape());
  cuda_detail::launch_affine(x, y, static_cast<float>(alpha), static_cast<float>(beta));
  if (autograd::should_record(x))
    autograd::record("affine", y, [sx = autograd::slot(x), alpha](const Tensor<T, Cuda>& g) {
      auto dx = Tensor<T, Cuda>::empty(g.shape());
      cuda_detail::launch_affine(g, dx, static_cast<float>(alpha), 0.0f);
      sx.add(dx);
    });
  return y;
}
template <class T>
Tensor<T, Cuda> scale(const Tensor<T, Cuda>& x, T alpha) {
  return affine(x, alpha);
}

template <class T>
Tensor<T, Cuda> add(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = cuda_detail::binary<T, cuda_detail::BinaryOp::Add>(a, b);
  if (autograd::should_record(a, b))
    autograd::record("add", out, [sa = autograd::slot(a), sb = autograd::slot(b)](const Tensor<T, Cuda>& g) {
      if (sa) sa.add(sum_to_shape(g, sa.shape()));
      if (sb) sb.add(sum_to_shape(g, sb.shape()));
    });
  return out;
}
template <class T>
Tensor<T, Cuda> sub(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = cuda_detail::binary<T, cuda_detail::BinaryOp::Sub>(a, b);
  if (autograd::should_record(a, b))
    autograd::record("sub", out, [sa = autograd::slot(a), sb = autograd::slot(b)](const Tensor<T, Cuda>& g) {
      if (sa) sa.add(sum_to_shape(g, sa.shape()));
      if (sb) {
        const auto s = sum_to_shape(g, sb.shape());
        auto d = Tensor<T, Cuda>::empty(s.shape());
        cuda_detail::launch_affine(s, d, -1.0f, 0.0f);
        sb.add(d);
      }
    });
  return out;
}
template <class T>
Tensor<T, Cuda> mul(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in) {
  const auto a = a_in.contiguous(), b = b_in.contiguous();
  auto out = cuda_detail::binary<T, cuda_detail::BinaryOp::Mul>(a, b);
  if (autograd::should_record(a, b)) {
    autograd::record("mul", out, [sa = autograd::slot(a), sb = autograd::slot(b),
                                  a_saved = b.requires_grad() ? a.detach() : Tensor<T, Cuda>{},
                                  b_saved = a.requires_grad() ? b.detach() : Tensor<T, Cuda>{}](const Tensor<T, Cuda>& g) {
      using cuda_detail::BinaryOp;
      if (sa) sa.add(sum_to_shape(cuda_detail::binary<T, BinaryOp::Mul>(g, b_saved), sa.shape()));
      if (sb) sb.add(sum_to_shape(cuda_detail::binary<T, BinaryOp::Mul>(g, a_saved), sb.shape()));
    });
  }
  return out;
}

/// a += b in place (b broadcast to a's shape; a contiguous); out of place while a tape records (see the CPU op).
template <class T>
Tensor<T, Cuda>& add_(Tensor<T, Cuda>& a, const Tensor<T, Cuda>& b) {
  check<ShapeError>(a.is_contiguous(), "add_: target must be contiguous");
  check<ShapeError>(broadcast_shape(a.shape(), b.shape()) == a.shape(), "add_: cannot broadcast ", b.shape().str(),
                    " into ", a.shape().str());
  if (autograd::recording()) return a = add(a, b);
  const auto bc = b.contiguous();
  const int64_t n = a.numel();
  if (n == 0) return a;
  cudaStream_t stream = cuda::current_stream();
  using cuda_detail::BinaryOp;
  if (a.shape() == bc.shape()) {
    cuda_detail::binary_same_kernel<T, BinaryOp::Add><<<cuda_detail::grid_for(n), cuda_detail::kThreads, 0, stream>>>(
        a.data(), bc.data(), a.data(), n);
  } else if (const auto pa = reinterpret_cast<uintptr_t>(a.data()), pb = reinterpret_cast<uintptr_t>(bc.data());
             pb < pa + a.nbytes() && pa < pb + bc.nbytes()) {
    // b is a view into a's own storage (e.g. a.narrow(0, 0, 1)): in place, a broadcast read of b would race with
    // the writes to a; add out of place, then copy back (what the CPU twin does).
    const auto s = cuda_detail::binary<T, BinaryOp::Add>(a, bc);
    ADABLDM_CUDA_CHECK(cudaMemcpyAsync(a.data(), s.data(), a.nbytes(), cudaMemcpyDeviceToDevice, stream));
    return a;
  } else {
    const Shape& os = a.shape();
    cuda_detail::binary_broadcast_kernel<T, BinaryOp::Add><<<cuda_detail::grid_for(n), cuda_detail::kThreads, 0, stream>>>(
        a.data(), cuda_detail::strided_of(os, contiguous_strides(os)), bc.data(),
        cuda_detail::strided_of(os, detail::broadcast_strides(bc.shape(), os)), a.data(), n);
  }
  ADABLDM_CUDA_CHECK_LAUNCH();
  return a;
}

/// dx of clamp: g where lo <= x <= hi, else 0.
template <class T>
Tensor<T, Cuda> clamp_backward(const Tensor<T, Cuda>& g_in, const Tensor<T, Cuda>& x_in, T lo, T hi) {
  check<ShapeError>(g_in.shape() == x_in.shape(), "clamp_backward: ", g_in.shape().str(), " vs ", x_in.shape().str());
  const auto g = g_in.contiguous(), x = x_in.contiguous();
  auto dx = Tensor<T, Cuda>::empty(x.shape());
  if (x.numel() > 0) {
    cuda_detail::clamp_backward_kernel<T><<<cuda_detail::grid_for(x.numel()), cuda_detail::kThreads, 0,
                                            cuda::current_stream()>>>(g.data(), x.data(), dx.data(),
                                                                      static_cast<float>(lo), static_cast<float>(hi),
                                                                      x.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return dx;
}
/// Clamps every element to [lo, hi] (the gradient passes where lo <= x <= hi).
template <class T>
Tensor<T, Cuda> clamp(const Tensor<T, Cuda>& x_in, T lo, T hi) {
  const auto x = x_in.contiguous();
  auto y = Tensor<T, Cuda>::empty(x.shape());
  if (x.numel() > 0) {
    cuda_detail::clamp_kernel<T><<<cuda_detail::grid_for(x.numel()), cuda_detail::kThreads, 0, cuda::current_stream()>>>(
        x.data(), y.data(), static_cast<float>(lo), static_cast<float>(hi), x.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("clamp", y, [sx = autograd::slot(x), x = x.detach(), lo, hi](const Tensor<T, Cuda>& g) {
      sx.add(clamp_backward(g, x, lo, hi));
    });
  return y;
}

/// Concatenation along dimension `dim` (negative counts from the end).
template <class T>
Tensor<T, Cuda> concat(const std::vector<Tensor<T, Cuda>>& parts, int dim) {
  const auto shape = detail::concat_shape(parts, dim);
  const int r = shape.out.rank(), d = shape.dim;
  const Shape& os = shape.out;
  auto out = Tensor<T, Cuda>::empty(os);
  int64_t outer = 1, inner = 1;
  for (int i = 0; i < d; ++i) outer *= os[i];
  for (int i = d + 1; i < r; ++i) inner *= os[i];
  int64_t offset = 0;
  cudaStream_t stream = cuda::current_stream();
  for (const auto& t_in : parts) {
    const auto t = t_in.contiguous();
    const int64_t run = t.shape()[d] * inner;
    if (outer * run > 0) {
      cuda_detail::concat_kernel<T><<<cuda_detail::grid_for(outer * run), cuda_detail::kThreads, 0, stream>>>(
          t.data(), out.data() + offset, outer, run, os[d] * inner);
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
    offset += run;
  }
  detail::record_concat(parts, out, d);
  return out;
}

/// dx of upsample_nearest2x: each input element receives the sum of its 2x2 block.
template <class T>
Tensor<T, Cuda> upsample_nearest2x_backward(const Tensor<T, Cuda>& g_in, const Shape& x_shape) {
  const auto g = g_in.contiguous();
  auto dx = Tensor<T, Cuda>::empty(x_shape);
  if (dx.numel() > 0) {
    cuda_detail::upsample2x_backward_kernel<T><<<cuda_detail::grid_for(dx.numel()), cuda_detail::kThreads, 0,
                                                 cuda::current_stream()>>>(g.data(), dx.data(), x_shape[2],
                                                                           x_shape[3], dx.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  return dx;
}
/// Nearest-neighbour 2x upsampling of x[N, C, H, W] -> [N, C, 2H, 2W].
template <class T>
Tensor<T, Cuda> upsample_nearest2x(const Tensor<T, Cuda>& x_in) {
  check<ShapeError>(x_in.rank() == 4, "upsample_nearest2x: input must be [N, C, H, W], got ", x_in.shape().str());
  const auto x = x_in.contiguous();
  const int64_t H = x.dim(2), W = x.dim(3);
  auto y = Tensor<T, Cuda>::empty({x.dim(0), x.dim(1), 2 * H, 2 * W});
  if (y.numel() > 0) {
    cuda_detail::upsample2x_kernel<T><<<cuda_detail::grid_for(y.numel()), cuda_detail::kThreads, 0,
                                        cuda::current_stream()>>>(x.data(), y.data(), H, W, y.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("upsample_nearest2x", y, [sx = autograd::slot(x)](const Tensor<T, Cuda>& g) {
      sx.add(upsample_nearest2x_backward(g, sx.shape()));
    });
  return y;
}

/// dx of upsample_nearest (x_shape = [N, C, H, W], g = [N, C, out_h, out_w]).
template <class T>
Tensor<T, Cuda> upsample_nearest_backward(const Tensor<T, Cuda>& g_in, const Shape& x_shape) {
  const auto g = g_in.contiguous();
  const int64_t H = x_shape[2], W = x_shape[3], out_h = g.dim(2), out_w = g.dim(3);
  auto dx = Tensor<T, Cuda>::empty(x_shape);
  if (dx.numel() == 0) return dx;
  const auto rows = cuda_detail::upload_indices(cuda_detail::nearest_starts(cuda_detail::nearest_map(H, out_h), H));
  const auto cols = cuda_detail::upload_indices(cuda_detail::nearest_starts(cuda_detail::nearest_map(W, out_w), W));
  cuda_detail::upsample_nearest_backward_kernel<T><<<cuda_detail::grid_for(dx.numel()), cuda_detail::kThreads, 0,
                                                     cuda::current_stream()>>>(
      g.data(), dx.data(), rows.data(), cols.data(), H, W, out_h, out_w, dx.numel());
  ADABLDM_CUDA_CHECK_LAUNCH();
  return dx;
}
/// Nearest-neighbour resize of x[N, C, H, W] to [N, C, out_h, out_w] (F.interpolate(size=..., mode="nearest")).
template <class T>
Tensor<T, Cuda> upsample_nearest(const Tensor<T, Cuda>& x_in, int64_t out_h, int64_t out_w) {
  check<ShapeError>(x_in.rank() == 4 && out_h > 0 && out_w > 0, "upsample_nearest: input must be [N, C, H, W] and "
                    "the size positive, got ", x_in.shape().str(), " -> ", out_h, "x", out_w);
  const auto x = x_in.contiguous();
  const int64_t H = x.dim(2), W = x.dim(3);
  check<ShapeError>(H > 0 && W > 0, "upsample_nearest: empty input plane ", x.shape().str());
  auto y = Tensor<T, Cuda>::empty({x.dim(0), x.dim(1), out_h, out_w});
  if (y.numel() > 0) {
    const auto sy = cuda_detail::upload_indices(cuda_detail::nearest_map(H, out_h));
    const auto sx = cuda_detail::upload_indices(cuda_detail::nearest_map(W, out_w));
    cuda_detail::upsample_nearest_kernel<T><<<cuda_detail::grid_for(y.numel()), cuda_detail::kThreads, 0,
                                              cuda::current_stream()>>>(x.data(), y.data(), sy.data(), sx.data(), H,
                                                                        W, out_h, out_w, y.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(x))
    autograd::record("upsample_nearest", y, [sx = autograd::slot(x)](const Tensor<T, Cuda>& g) {
      sx.add(upsample_nearest_backward(g, sx.shape()));
    });
  return y;
}

}  // namespace adabldm::ops
