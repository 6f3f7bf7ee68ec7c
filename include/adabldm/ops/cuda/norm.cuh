#pragma once
// CUDA twins of ops/norm.hpp: group norm (with a fused activation) and layer norm, forward and backward.
// Statistics are float32 (the CPU accumulates in double): Welford / Chan merges in a fixed tree, so the results
// are deterministic and the variance does not cancel. The forward saves [mean, rstd] per group / row in a float
// tensor for the backward (the CPU twin keeps a std::vector<double>).
//
// Group norm forward: (1) partial moments of fixed chunks of each (sample, group) range in parallel blocks,
// (2) one thread per group merges its chunks in order, (3) one element-wise pass applies scale, shift and the
// activation. Layer norm: one block per row.
#include "adabldm/core/autograd_record.hpp"
#include "adabldm/ops/cuda/activation.cuh"
#include "adabldm/ops/cuda/reduce.cuh"
#include "adabldm/ops/norm.hpp"

namespace adabldm::ops {

namespace cuda_detail {

inline constexpr int64_t kGroupChunk = 16384;  // elements of one group per partial-moments block

template <class T>
__global__ void group_moments_kernel(const T* x, float* partial, int64_t group_size, int64_t chunks) {
  __shared__ float scratch[96];
  const int64_t ng = blockIdx.x / chunks, chunk = blockIdx.x % chunks;  // 1-D grid: no 65535 limit on N * groups
  const int64_t begin = chunk * kGroupChunk, end = min(group_size, begin + kGroupChunk);
  const T* xg = x + ng * group_size;
  cuda::detail::Moments m;
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) m.add(cuda::detail::ld(xg, i));
  m = cuda::detail::block_moments(m, scratch);
  if (threadIdx.x == 0) {
    float* out = partial + (ng * chunks + chunk) * 3;
    out[0] = m.n;
    out[1] = m.mean;
    out[2] = m.m2;
  }
}
/// stats[g] = [mean, 1 / sqrt(var + eps)] from the chunks' moments, merged in order. (A template only so that
/// the header can be included by several translation units.)
template <class Unused = void>
__global__ void finish_moments_kernel(const float* partial, float* stats, int64_t groups, int64_t chunks,
                                             float eps) {
  ADABLDM_GRID_STRIDE(g, groups) {
    cuda::detail::Moments m;
    for (int64_t c = 0; c < chunks; ++c) {
      const float* p = partial + (g * chunks + c) * 3;
      cuda::detail::Moments part;
      part.n = p[0];
      part.mean = p[1];
      part.m2 = p[2];
      m.merge(part);
    }
    const float var = m.n > 0 ? m.m2 / m.n : 0.0f;
    stats[2 * g] = m.mean;
    stats[2 * g + 1] = 1.0f / sqrtf(var + eps);
  }
}
template <class T>
__global__ void group_norm_apply_kernel(const T* x, const float* stats, const T* gamma, const T* beta, T* y,
                                        Activation act, int64_t C, int64_t cpg, int64_t spatial, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const int64_t nc = i / spatial, c = nc % C, ng = nc / cpg;
    const float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
    const float g = gamma ? cuda::detail::ld(gamma, c) : 1.0f, b = beta ? cuda::detail::ld(beta, c) : 0.0f;
    const float scale = rstd * g, shift = b - mean * rstd * g;
    cuda::detail::st(y, i, activate_f(act, cuda::detail::ld(x, i) * scale + shift));
  }
}

/// Per (sample, channel): s1 = sum dpre, s2 = sum dpre * xhat, where dpre = dy * act'(pre).
template <class T>
__global__ void group_norm_channel_sums_kernel(const T* dy, const T* x, const float* stats, const T* gamma,
                                               const T* beta, Activation act, int64_t C, int64_t cpg, int64_t spatial,
                                               float* s1, float* s2) {
  __shared__ float scratch[32];
  const int64_t nc = blockIdx.x, c = nc % C, ng = nc / cpg;
  const float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
  const float g = gamma ? cuda::detail::ld(gamma, c) : 1.0f, b = beta ? cuda::detail::ld(beta, c) : 0.0f;
  const float scale = rstd * g, shift = b - mean * rstd * g;
  const T* xs = x + nc * spatial;
  const T* gs = dy + nc * spatial;
  float a1 = 0.0f, a2 = 0.0f;
  for (int64_t i = threadIdx.x; i < spatial; i += blockDim.x) {
    const float xv = cuda::detail::ld(xs, i);
    const float dpre = cuda::detail::ld(gs, i) * activation_derivative_f(act, xv * scale + shift);
    a1 += dpre;
    a2 += dpre * (xv - mean) * rstd;
  }
  a1 = cuda::detail::block_sum(a1, scratch);
  a2 = cuda::detail::block_sum(a2, scratch);
  if (threadIdx.x == 0) {
    s1[nc] = a1;
    s2[nc] = a2;
  }
}
/// Per (sample, group): coef = [mean over the group of dxhat, mean of dxhat * xhat] (dxhat = dpre * gamma).
template <class T>
__global__ void group_norm_coefficients_kernel(const float* s1, const float* s2, const T* gamma, float* coef,
                                               int64_t NG, int64_t groups, int64_t C, int64_t cpg, float count) {
  ADABLDM_GRID_STRIDE(ng, NG) {
    const int64_t n = ng / groups, c0 = ng % groups * cpg;
    float a = 0.0f, b = 0.0f;
    for (int64_t cc = 0; cc < cpg; ++cc) {
      const int64_t c = c0 + cc;
      const float g = gamma ? cuda::detail::ld(gamma, c) : 1.0f;
      a += s1[n * C + c] * g;
      b += s2[n * C + c] * g;
    }
    coef[2 * ng] = a / count;
    coef[2 * ng + 1] = b / count;
  }
}
template <class T>
__global__ void group_norm_dx_kernel(const T* dy, const T* x, const float* stats, const float* coef, const T* gamma,
                                     const T* beta, T* dx, Activation act, int64_t C, int64_t cpg, int64_t spatial,
                                     int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {
    const int64_t nc = i / spatial, c = nc % C, ng = nc / cpg;
    const float mean = stats[2 * ng], rstd = stats[2 * ng + 1];
    const float g = gamma ? cuda::detail::ld(gamma, c) : 1.0f, b = beta ? cuda::detail::ld(beta, c) : 0.0f;
    const float scale = rstd * g, shift = b - mean * rstd * g;
    const float xv = cuda::detail::ld(x, i);
    const float dpre = cuda::detail::ld(dy, i) * activation_derivative_f(act, xv * scale + shift);
    const float xhat = (xv - mean) * rstd;
    cuda::detail::st(dx, i, rstd * (dpre * g - coef[2 * ng] - xhat * coef[2 * ng + 1]));
  }
}

/// out[c] = sum over n of v[n * C + c] (in order).
template <class T>
__global__ void sum_over_batch_kernel(const float* v, T* out, int64_t N, int64_t C) {
  ADABLDM_GRID_STRIDE(c, C) {
    float s = 0.0f;
    for (int64_t n = 0; n < N; ++n) s += v[n * C + c];
    cuda::detail::st(out, c, s);
  }
}

template <class T>
__global__ void layer_norm_kernel(const T* x, const T* gamma, const T* beta, T* y, float* stats, int64_t D, float eps) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const T* xr = x + r * D;
  float s = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) s += cuda::detail::ld(xr, i);
  const float mean = cuda::detail::block_sum(s, scratch) / static_cast<float>(D);
  float v = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float d = cuda::detail::ld(xr, i) - mean;
    v += d * d;
  }
  const float rstd = 1.0f / sqrtf(cuda::detail::block_sum(v, scratch) / static_cast<float>(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float xhat = (cuda::detail::ld(xr, i) - mean) * rstd;
    const float g = gamma ? cuda::detail::ld(gamma, i) : 1.0f, b = beta ? cuda::detail::ld(beta, i) : 0.0f;
    cuda::detail::st(y, r * D + i, xhat * g + b);
  }
  if (stats && threadIdx.x == 0) {
    stats[2 * r] = mean;
    stats[2 * r + 1] = rstd;
  }
}
template <class T>
__global__ void layer_norm_dx_kernel(const T* dy, const T* x, const T* gamma, const float* stats, T* dx, int64_t D) {
  __shared__ float scratch[32];
  const int64_t r = blockIdx.x;
  const float mean = stats[2 * r], rstd = stats[2 * r + 1];
  float a = 0.0f, b = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float dxhat = cuda::detail::ld(dy, r * D + i) * (gamma ? cuda::detail::ld(gamma, i) : 1.0f);
    a += dxhat;
    b += dxhat * (cuda::detail::ld(x, r * D + i) - mean) * rstd;
  }
  a = cuda::detail::block_sum(a, scratch) / static_cast<float>(D);
  b = cuda::detail::block_sum(b, scratch) / static_cast<float>(D);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) {
    const float xhat = (cuda::detail::ld(x, r * D + i) - mean) * rstd;
    const float dxhat = cuda::detail::ld(dy, r * D + i) * (gamma ? cuda::detail::ld(gamma, i) : 1.0f);
    cuda::detail::st(dx, r * D + i, rstd * (dxhat - a - xhat * b));
  }
}
/// dy * xhat at (row, column), for dgamma's column sums.
template <class T>
struct DyXhat {
  const T *dy, *x;
  const float* stats;
  int64_t D;
  __device__ float operator()(int64_t r, int64_t c) const {
    return cuda::detail::ld(dy, r * D + c) * ((cuda::detail::ld(x, r * D + c) - stats[2 * r]) * stats[2 * r + 1]);
  }
};

inline int row_threads(int64_t D) {
  return static_cast<int>(std::clamp<int64_t>((D + 31) / 32 * 32, 32, 256));
}
template <class T>
const T* data_or_null(const Tensor<T, Cuda>& t) {
  return t.defined() ? t.data() : nullptr;
}

}  // namespace cuda_detail

/// Saved statistics of a CUDA norm: [count, 2] floats (mean, rstd) per group / row.
using NormStats = Tensor<float, Cuda>;

/// The gradients of group_norm given dy (x, gamma, beta as in the forward; stats from group_norm_stats).
template <class T>
void group_norm_backward(const Tensor<T, Cuda>& dy_in, const Tensor<T, Cuda>& x, int64_t groups,
                         const Tensor<T, Cuda>& gamma, const Tensor<T, Cuda>& beta, Activation act,
                         const NormStats& stats, bool need_dx, bool need_dgamma, bool need_dbeta, Tensor<T, Cuda>& dx,
                         Tensor<T, Cuda>& dgamma, Tensor<T, Cuda>& dbeta) {
  const auto dy = dy_in.contiguous();
  const int64_t N = x.dim(0), C = x.dim(1), spatial = x.numel() / std::max<int64_t>(1, N * C), cpg = C / groups;
  cudaStream_t stream = cuda::current_stream();
  const T* gp = cuda_detail::data_or_null(gamma);
  const T* bp = cuda_detail::data_or_null(beta);
  auto s1 = Tensor<float, Cuda>::empty({N * C}), s2 = Tensor<float, Cuda>::empty({N * C});
  if (N * C > 0) {
    cuda_detail::group_norm_channel_sums_kernel<T><<<static_cast<unsigned>(N * C), cuda::detail::kThreads, 0, stream>>>(
        dy.data(), x.data(), stats.data(), gp, bp, act, C, cpg, spatial, s1.data(), s2.data());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (need_dx) {
    auto coef = Tensor<float, Cuda>::empty({N * groups, 2});
    dx = Tensor<T, Cuda>::empty(x.shape());
    if (x.numel() > 0) {
      cuda_detail::group_norm_coefficients_kernel<T><<<cuda::detail::grid_for(N * groups), cuda::detail::kThreads, 0,
                                                       stream>>>(s1.data(), s2.data(), gp, coef.data(), N * groups,
                                                                 groups, C, cpg, static_cast<float>(cpg * spatial));
      ADABLDM_CUDA_CHECK_LAUNCH();
      cuda_detail::group_norm_dx_kernel<T><<<cuda::detail::grid_for(x.numel()), cuda::detail::kThreads, 0, stream>>>(
          dy.data(), x.data(), stats.data(), coef.data(), gp, bp, dx.data(), act, C, cpg, spatial, x.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
  }
  if (need_dgamma || need_dbeta) {
    auto reduce = [&](const Tensor<float, Cuda>& per_nc) {
      auto out = Tensor<T, Cuda>::empty({C});
      if (C > 0) {
        cuda_detail::sum_over_batch_kernel<T><<<cuda::detail::grid_for(C), cuda::detail::kThreads, 0, stream>>>(
            per_nc.data(), out.data(), N, C);
        ADABLDM_CUDA_CHECK_LAUNCH();
      }
      return out;
    };
    if (need_dgamma) dgamma = reduce(s2);
    if (need_dbeta) dbeta = reduce(s1);
  }
}

/// group_norm's forward on a contiguous x, writing [mean, rstd] per (sample, group) into stats ([N * groups, 2]).
template <class T>
Tensor<T, Cuda> group_norm_forward(const Tensor<T, Cuda>& x, int64_t groups, const Tensor<T, Cuda>& gamma,
                                   const Tensor<T, Cuda>& beta, double eps, Activation act, NormStats& stats) {
  const int64_t N = x.dim(0), C = x.dim(1), spatial = x.numel() / std::max<int64_t>(1, N * C), cpg = C / groups;
  const int64_t NG = N * groups, group_size = cpg * spatial;
  auto y = Tensor<T, Cuda>::empty(x.shape());
  stats = Tensor<float, Cuda>::empty({NG, 2});
  if (x.numel() == 0) return y;
  cudaStream_t stream = cuda::current_stream();
  const int64_t chunks = (group_size + cuda_detail::kGroupChunk - 1) / cuda_detail::kGroupChunk;
  check(NG * chunks <= INT32_MAX, "group_norm: ", NG * chunks, " partial-moment blocks exceed the grid");
  auto partial = Tensor<float, Cuda>::empty({NG, chunks, 3});
  cuda_detail::group_moments_kernel<T><<<static_cast<unsigned>(NG * chunks), cuda::detail::kThreads, 0, stream>>>(
      x.data(), partial.data(), group_size, chunks);
  ADABLDM_CUDA_CHECK_LAUNCH();
  cuda_detail::finish_moments_kernel<><<<cuda::detail::grid_for(NG), cuda::detail::kThreads, 0, stream>>>(
      partial.data(), stats.data(), NG, chunks, static_cast<float>(eps));
  ADABLDM_CUDA_CHECK_LAUNCH();
  cuda_detail::group_norm_apply_kernel<T><<<cuda::detail::grid_for(x.numel()), cuda::detail::kThreads, 0, stream>>>(
      x.data(), stats.data(), cuda_detail::data_or_null(gamma), cuda_detail::data_or_null(beta), y.data(), act, C, cpg,
      spatial, x.numel());
  ADABLDM_CUDA_CHECK_LAUNCH();
  return y;
}

/// nn.GroupNorm over x[N, C, ...] with `groups` groups, then `act`; gamma / beta [C] may be undefined.
template <class T>
Tensor<T, Cuda> group_norm(const Tensor<T, Cuda>& x_in, int64_t groups, const Tensor<T, Cuda>& gamma_in,
                           const Tensor<T, Cuda>& beta_in, double eps, Activation act = Activation::Identity) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  check<ShapeError>(x_in.rank() >= 2, "group_norm: input must be [N, C, ...], got ", x_in.shape().str());
  const int64_t C = x_in.dim(1);
  check<ShapeError>(groups > 0 && C % groups == 0, "group_norm: ", C, " channels are not divisible into ", groups,
                    " groups");
  if (gamma_in.defined())
    check<ShapeError>(gamma_in.numel() == C, "group_norm: weight ", gamma_in.shape().str(), " for ", C, " channels");
  if (beta_in.defined())
    check<ShapeError>(beta_in.numel() == C, "group_norm: bias ", beta_in.shape().str(), " for ", C, " channels");
  const auto x = x_in.contiguous();
  const auto gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor<T, Cuda>{};
  const auto beta = beta_in.defined() ? beta_in.contiguous() : Tensor<T, Cuda>{};
  NormStats stats;
  auto y = group_norm_forward(x, groups, gamma, beta, eps, act, stats);
  if (autograd::should_record(x, gamma, beta)) {
    autograd::record("group_norm", y, [sx = autograd::slot(x), sg = autograd::slot(gamma), sb = autograd::slot(beta),
                                       x = x.detach(), gamma = gamma.detach(), beta = beta.detach(), groups, act,
                                       stats](const Tensor<T, Cuda>& g) {
      Tensor<T, Cuda> dx, dgamma, dbeta;
      group_norm_backward(g, x, groups, gamma, beta, act, stats, bool(sx), bool(sg), bool(sb), dx, dgamma, dbeta);
      if (sx) sx.add(dx);
      if (sg) sg.add(dgamma.reshape(sg.shape()));
      if (sb) sb.add(dbeta.reshape(sb.shape()));
    });
  }
  return y;
}

/// The gradients of layer_norm given dy (stats from layer_norm_forward).
template <class T>
void layer_norm_backward(const Tensor<T, Cuda>& dy_in, const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& gamma,
                         const NormStats& stats, bool need_dx, bool need_dgamma, bool need_dbeta, Tensor<T, Cuda>& dx,
                         Tensor<T, Cuda>& dgamma, Tensor<T, Cuda>& dbeta) {
  const auto dy = dy_in.contiguous();
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  cudaStream_t stream = cuda::current_stream();
  if (need_dx) {
    dx = Tensor<T, Cuda>::empty(x.shape());
    if (rows > 0 && D > 0) {
      check(rows <= INT32_MAX, "layer_norm: too many rows");
      cuda_detail::layer_norm_dx_kernel<T><<<static_cast<unsigned>(rows), cuda_detail::row_threads(D), 0, stream>>>(
          dy.data(), x.data(), cuda_detail::data_or_null(gamma), stats.data(), dx.data(), D);
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
  }
  if (need_dgamma) {
    dgamma = Tensor<T, Cuda>::empty({D});
    cuda_detail::column_sums(cuda_detail::DyXhat<T>{dy.data(), x.data(), stats.data(), D}, rows, D, dgamma.data());
  }
  if (need_dbeta) {
    dbeta = Tensor<T, Cuda>::empty({D});
    cuda_detail::column_sums(cuda_detail::ReadMatrix<T>{dy.data(), D}, rows, D, dbeta.data());
  }
}

/// layer_norm's forward on a contiguous x, writing [mean, rstd] per row into stats ([rows, 2]).
template <class T>
Tensor<T, Cuda> layer_norm_forward(const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& gamma, const Tensor<T, Cuda>& beta,
                                   double eps, NormStats& stats) {
  const int64_t D = x.dim(-1), rows = x.numel() / std::max<int64_t>(1, D);
  auto y = Tensor<T, Cuda>::empty(x.shape());
  stats = Tensor<float, Cuda>::empty({rows, 2});
  if (rows == 0 || D == 0) return y;
  check(rows <= INT32_MAX, "layer_norm: too many rows");
  cuda_detail::layer_norm_kernel<T><<<static_cast<unsigned>(rows), cuda_detail::row_threads(D), 0,
                                      cuda::current_stream()>>>(x.data(), cuda_detail::data_or_null(gamma),
                                                                cuda_detail::data_or_null(beta), y.data(), stats.data(),
                                                                D, static_cast<float>(eps));
  ADABLDM_CUDA_CHECK_LAUNCH();
  return y;
}

/// nn.LayerNorm over the last dimension of x; gamma / beta [D] may be undefined.
template <class T>
Tensor<T, Cuda> layer_norm(const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& gamma_in, const Tensor<T, Cuda>& beta_in,
                           double eps) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  check<ShapeError>(x_in.rank() >= 1, "layer_norm: needs rank >= 1");
  const auto x = x_in.contiguous();
  const int64_t D = x.dim(-1);
  if (gamma_in.defined())
    check<ShapeError>(gamma_in.numel() == D, "layer_norm: weight ", gamma_in.shape().str(), " for dim ", D);
  if (beta_in.defined())
    check<ShapeError>(beta_in.numel() == D, "layer_norm: bias ", beta_in.shape().str(), " for dim ", D);
  const auto gamma = gamma_in.defined() ? gamma_in.contiguous() : Tensor<T, Cuda>{};
  const auto beta = beta_in.defined() ? beta_in.contiguous() : Tensor<T, Cuda>{};
  NormStats stats;
  auto y = layer_norm_forward(x, gamma, beta, eps, stats);
  if (autograd::should_record(x, gamma, beta)) {
    autograd::record("layer_norm", y, [sx = autograd::slot(x), sg = autograd::slot(gamma), sb = autograd::slot(beta),
                                       x = x.detach(), gamma = gamma.detach(), stats](const Tensor<T, Cuda>& g) {
      Tensor<T, Cuda> dx, dgamma, dbeta;
      layer_norm_backward(g, x, gamma, stats, bool(sx), bool(sg), bool(sb), dx, dgamma, dbeta);
      if (sx) sx.add(dx);
      if (sg) sg.add(dgamma.reshape(sg.shape()));
      if (sb) sb.add(dbeta.reshape(sb.shape()));
    });
  }
  return y;
}

}  // namespace adabldm::ops
