#pragma once
// CUDA twin of ops/conv.hpp: 2-D convolution (groups = 1) through cuDNN's forward, backward-data and
// backward-filter kernels, with the bias added and its gradient summed by our own kernels.
//
// - Layout: NCHW, the layout of every tensor in this library (cuDNN converts internally where its tensor-core
//   kernels want NHWC; the choice is cuDNN's and invisible here).
// - Padding: cuDNN pads symmetrically. A convolution with different padding per side (the VAE encoder's
//   downsampling pads right and bottom only) pads its input explicitly and runs without padding; the backward
//   crops the data gradient back.
// - Algorithms: chosen once per (shape, type, direction) and cached: cuDNN's heuristics by default
//   (cudnnGetConvolution*Algorithm_v7), or measured (cudnnFind*AlgorithmEx) after cuda::set_conv_benchmark(true),
//   like torch.backends.cudnn.benchmark. The workspace comes from the caching allocator.
// - Precision: float32 uses FMA math (no TF32) unless cuda::set_allow_tf32(true); half / bfloat16 use tensor
//   cores with float32 accumulation (cuDNN's PSEUDO_HALF / PSEUDO_BFLOAT16 configurations).
#include <map>
#include <mutex>
#include <tuple>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/ops/conv.hpp"
#include "adabldm/ops/cuda/elementwise.cuh"

namespace adabldm {
namespace cuda {
namespace detail {
inline std::atomic<bool>& conv_benchmark_slot() {
  static std::atomic<bool> on{false};
  return on;
}
}  // namespace detail
/// Measure the convolution algorithms on first use of each shape (slower first call, faster steady state).
inline void set_conv_benchmark(bool on) noexcept { detail::conv_benchmark_slot().store(on); }
inline bool conv_benchmark() noexcept { return detail::conv_benchmark_slot().load(); }
/// Upper bound of the scratch memory a convolution algorithm may use.
inline constexpr std::size_t kConvWorkspaceLimit = std::size_t{1} << 30;
}  // namespace cuda

namespace ops {
namespace cuda_detail {

template <class T>
constexpr cudnnDataType_t cudnn_data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDNN_DATA_FLOAT;
  else if constexpr (std::is_same_v<T, half>) return CUDNN_DATA_HALF;
  else return CUDNN_DATA_BFLOAT16;
}

/// The descriptors of one convolution (symmetric padding), destroyed with it.
struct ConvDescriptors {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnMathType_t default_math = CUDNN_DEFAULT_MATH;

  ConvDescriptors(cudnnDataType_t type, const Shape& xs, const Shape& ws, const Shape& ys, int pad_h, int pad_w,
                  int stride) {
    auto i32 = [](int64_t v) {
      check(v <= INT32_MAX, "conv2d: dimension ", v, " beyond cuDNN's 32-bit range");
      return static_cast<int>(v);
    };
    ADABLDM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    ADABLDM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    ADABLDM_CUDNN_CHECK(cudnnCreateTensorDescriptor(&bias));
    ADABLDM_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    ADABLDM_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    ADABLDM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NCHW, type, i32(xs[0]), i32(xs[1]), i32(xs[2]), i32(xs[3])));
    ADABLDM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NCHW, type, i32(ys[0]), i32(ys[1]), i32(ys[2]), i32(ys[3])));
    ADABLDM_CUDNN_CHECK(cudnnSetTensor4dDescriptor(bias, CUDNN_TENSOR_NCHW, type, 1, i32(ys[1]), 1, 1));
    ADABLDM_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, type, CUDNN_TENSOR_NCHW, i32(ws[0]), i32(ws[1]), i32(ws[2]), i32(ws[3])));
    ADABLDM_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, pad_h, pad_w, stride, stride, 1, 1,
                                                        CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    if (type == CUDNN_DATA_FLOAT) default_math = cuda::allow_tf32() ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
    else default_math = CUDNN_TENSOR_OP_MATH;
    ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, default_math));
  }
  ~ConvDescriptors() {
    if (conv) (void)cudnnDestroyConvolutionDescriptor(conv);
    if (w) (void)cudnnDestroyFilterDescriptor(w);
    if (bias) (void)cudnnDestroyTensorDescriptor(bias);
    if (y) (void)cudnnDestroyTensorDescriptor(y);
    if (x) (void)cudnnDestroyTensorDescriptor(x);
  }
  ConvDescriptors(const ConvDescriptors&) = delete;
  ConvDescriptors& operator=(const ConvDescriptors&) = delete;
};

enum class ConvDirection { Forward, BackwardData, BackwardFilter };

/// A chosen algorithm: its id (the enum of its direction), math type and workspace size.
struct ConvChoice {
  int algo = 0;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
  std::size_t workspace = 0;
};

using ConvKey = std::tuple<int, int, int, bool, bool, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int, int, int>;  // device, direction, type, tf32, benchmark, N C H W O kh kw, pads, stride

inline std::mutex& conv_cache_mutex() {
  static std::mutex m;
  return m;
}
inline std::map<ConvKey, ConvChoice>& conv_cache() {
  static auto* cache = new std::map<ConvKey, ConvChoice>();  // leaked: used until the process ends
  return *cache;
}

/// Whether a reported algorithm may be used: it works, fits the workspace limit and honours the TF32 switch.
template <class Perf>
bool acceptable(const Perf& p, cudnnDataType_t type) {
  if (p.status != CUDNN_STATUS_SUCCESS || p.memory > cuda::kConvWorkspaceLimit) return false;
  if (type == CUDNN_DATA_FLOAT && !cuda::allow_tf32()) return p.mathType == CUDNN_FMA_MATH;
  return true;
}
template <class Perf>
ConvChoice pick(const Perf* perf, int count, cudnnDataType_t type, const char* what) {
  // Deterministic algorithms first (BWD_DATA_ALGO_0, BWD_FILTER_ALGO_0 / _3 accumulate with atomics).
  for (int deterministic_only = 1; deterministic_only >= 0; --deterministic_only)
    for (int i = 0; i < count; ++i)
      if (acceptable(perf[i], type) && (!deterministic_only || perf[i].determinism == CUDNN_DETERMINISTIC))
        return ConvChoice{static_cast<int>(perf[i].algo), perf[i].mathType, perf[i].memory};
  // No result reported FMA math for float32 without TF32: take the first working algorithm and force FMA math
  // (cuDNN then runs it without tensor cores, or refuses the call with an error naming it).
  if (type == CUDNN_DATA_FLOAT && !cuda::allow_tf32())
    for (int i = 0; i < count; ++i)
      if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= cuda::kConvWorkspaceLimit)
        return ConvChoice{static_cast<int>(perf[i].algo), CUDNN_FMA_MATH, perf[i].memory};
  throw CudaError(std::string("conv2d: cuDNN offers no usable ") + what + " algorithm");
}

/// The algorithm for one direction of a convolution, from the cache or chosen now. Pointers are needed only in
/// benchmark mode (cudnnFind* runs the candidates on them, overwriting the output).
inline ConvChoice choose(ConvDirection dir, cudnnDataType_t type, ConvDescriptors& d, const Shape& xs, const Shape& ws,
                         int pad_h, int pad_w, int stride, const void* x, const void* w, const void* y, void* out) {
  const bool bench = cuda::conv_benchmark();
  const ConvKey key{cuda::current_device(), static_cast<int>(dir), static_cast<int>(type), cuda::allow_tf32(), bench,
                    xs[0], xs[1], xs[2], xs[3], ws[0], ws[2], ws[3], pad_h, pad_w, stride};
  {
    std::lock_guard<std::mutex> lock(conv_cache_mutex());
    auto it = conv_cache().find(key);
    if (it != conv_cache().end()) return it->second;
  }
  cudnnHandle_t h = cuda::cudnn_handle();
  // The descriptor may carry the math type chosen for another direction: query with the default one, so that the
  // choice does not depend on which direction was chosen first.
  ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, d.default_math));
  constexpr int kMax = 16;
  int returned = 0;
  ConvChoice c;
  if (!bench) {
    if (dir == ConvDirection::Forward) {
      cudnnConvolutionFwdAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, d.x, d.w, d.conv, d.y, kMax, &returned, perf));
      c = pick(perf, returned, type, "forward");
    } else if (dir == ConvDirection::BackwardData) {
      cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d.w, d.y, d.conv, d.x, kMax, &returned, perf));
      c = pick(perf, returned, type, "backward-data");
    } else {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d.x, d.y, d.conv, d.w, kMax, &returned, perf));
      c = pick(perf, returned, type, "backward-filter");
    }
  } else {
    auto workspace = Tensor<uint8_t, Cuda>::empty({static_cast<int64_t>(cuda::kConvWorkspaceLimit)});
    if (dir == ConvDirection::Forward) {
      cudnnConvolutionFwdAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(h, d.x, x, d.w, w, d.conv, d.y, out, kMax, &returned,
                                                                 perf, workspace.data(), cuda::kConvWorkspaceLimit));
      c = pick(perf, returned, type, "forward");
    } else if (dir == ConvDirection::BackwardData) {
      cudnnConvolutionBwdDataAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(h, d.w, w, d.y, y, d.conv, d.x, out, kMax,
                                                                      &returned, perf, workspace.data(),
                                                                      cuda::kConvWorkspaceLimit));
      c = pick(perf, returned, type, "backward-data");
    } else {
      cudnnConvolutionBwdFilterAlgoPerf_t perf[kMax];
      ADABLDM_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d.x, x, d.y, y, d.conv, d.w, out, kMax,
                                                                        &returned, perf, workspace.data(),
                                                                        cuda::kConvWorkspaceLimit));
      c = pick(perf, returned, type, "backward-filter");
    }
  }
  // The reported size is for the reported math type; pick() may have forced FMA math, so ask again with it.
  ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
  std::size_t bytes = 0;
  if (dir == ConvDirection::Forward)
    ADABLDM_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, d.x, d.w, d.conv, d.y,
                                                                static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), &bytes));
  else if (dir == ConvDirection::BackwardData)
    ADABLDM_CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
        h, d.w, d.y, d.conv, d.x, static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo), &bytes));
  else
    ADABLDM_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
        h, d.x, d.y, d.conv, d.w, static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo), &bytes));
  c.workspace = std::max(c.workspace, bytes);
  std::lock_guard<std::mutex> lock(conv_cache_mutex());
  conv_cache()[key] = c;
  return c;
}

/// out[n, o, ...] += bias[o] for a contiguous [N, O, spatial] tensor (float arithmetic, one rounding).
template <class T>
__global__ void add_channel_bias_kernel(T* out, const T* bias, int64_t O, int64_t spatial, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) cuda::detail::st(out, i, cuda::detail::ld(out, i) + cuda::detail::ld(bias, i / spatial % O));
}

inline bool symmetric(const Conv2dParams& p) { return p.pad_top == p.pad_bottom && p.pad_left == p.pad_right; }

/// x zero-padded per side (for cuDNN, which pads symmetrically only).
template <class T>
Tensor<T, Cuda> pad_input(const Tensor<T, Cuda>& x, const Conv2dParams& p) {
  const int64_t H = x.dim(2), W = x.dim(3);
  auto xp = cuda::zeros<T>({x.dim(0), x.dim(1), H + p.pad_top + p.pad_bottom, W + p.pad_left + p.pad_right});
  cuda::copy_into(xp.narrow(2, p.pad_top, H).narrow(3, p.pad_left, W), x);
  return xp;
}

}  // namespace cuda_detail

/// The gradients of conv2d given dy [N, O, Ho, Wo] (see the CPU conv2d_backward): dx when need_dx (needs w), dw
/// when need_dw (needs x), db when need_db. Outputs not wanted stay undefined.
template <class T>
void conv2d_backward(const Tensor<T, Cuda>& dy_in, const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& w_in,
                     const Shape& x_shape, const Shape& w_shape, const Conv2dParams& p, bool need_dx, bool need_dw,
                     bool need_db, Tensor<T, Cuda>& dx, Tensor<T, Cuda>& dw, Tensor<T, Cuda>& db) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  const auto dy = dy_in.contiguous();
  if (need_db) db = sum_to_shape(dy, Shape{1, w_shape[0], 1, 1}).reshape({w_shape[0]});
  if (!need_dx && !need_dw) return;
  const bool sym = cuda_detail::symmetric(p);
  const int pad_h = sym ? p.pad_top : 0, pad_w = sym ? p.pad_left : 0;
  const Shape xs = sym ? x_shape
                       : Shape{x_shape[0], x_shape[1], x_shape[2] + p.pad_top + p.pad_bottom,
                               x_shape[3] + p.pad_left + p.pad_right};
  const cudnnDataType_t type = cuda_detail::cudnn_data_type<T>();
  cuda_detail::ConvDescriptors d(type, xs, w_shape, dy.shape(), pad_h, pad_w, p.stride);
  cudnnHandle_t h = cuda::cudnn_handle();
  const float one = 1.0f, zero = 0.0f;
  if (need_dx) {
    const auto w = w_in.contiguous();
    auto dxp = Tensor<T, Cuda>::empty(xs);
    const auto c = cuda_detail::choose(cuda_detail::ConvDirection::BackwardData, type, d, xs, w_shape, pad_h, pad_w,
                                       p.stride, nullptr, w.data(), dy.data(), dxp.data());
    ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
    auto workspace = Tensor<uint8_t, Cuda>::empty({static_cast<int64_t>(std::max<std::size_t>(1, c.workspace))});
    ADABLDM_CUDNN_CHECK(cudnnConvolutionBackwardData(h, &one, d.w, w.data(), d.y, dy.data(), d.conv,
                                                     static_cast<cudnnConvolutionBwdDataAlgo_t>(c.algo),
                                                     workspace.data(), c.workspace, &zero, d.x, dxp.data()));
    dx = sym ? dxp : dxp.narrow(2, p.pad_top, x_shape[2]).narrow(3, p.pad_left, x_shape[3]).contiguous();
  }
  if (need_dw) {
    const auto x = sym ? x_in.contiguous() : cuda_detail::pad_input(x_in.contiguous(), p);
    dw = Tensor<T, Cuda>::empty(w_shape);
    const auto c = cuda_detail::choose(cuda_detail::ConvDirection::BackwardFilter, type, d, xs, w_shape, pad_h, pad_w,
                                       p.stride, x.data(), nullptr, dy.data(), dw.data());
    ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
    auto workspace = Tensor<uint8_t, Cuda>::empty({static_cast<int64_t>(std::max<std::size_t>(1, c.workspace))});
    ADABLDM_CUDNN_CHECK(cudnnConvolutionBackwardFilter(h, &one, d.x, x.data(), d.y, dy.data(), d.conv,
                                                       static_cast<cudnnConvolutionBwdFilterAlgo_t>(c.algo),
                                                       workspace.data(), c.workspace, &zero, d.w, dw.data()));
  }
}

/// x[N, C, H, W] * weight[O, C, kh, kw] (+ bias[O]) -> [N, O, Ho, Wo]. bias may be undefined.
template <class T>
Tensor<T, Cuda> conv2d(const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& weight_in, const Tensor<T, Cuda>& bias,
                       const Conv2dParams& p) {
  static_assert(cuda::is_cuda_float_v<T>, "CUDA ops: float, half or bfloat16 tensors");
  check<ShapeError>(x_in.rank() == 4, "conv2d: input must be [N, C, H, W], got ", x_in.shape().str());
  check<ShapeError>(weight_in.rank() == 4, "conv2d: weight must be [O, C, kh, kw], got ", weight_in.shape().str());
  check<ShapeError>(x_in.dim(1) == weight_in.dim(1), "conv2d: input ", x_in.shape().str(), " has ", x_in.dim(1),
                    " channels, weight ", weight_in.shape().str(), " expects ", weight_in.dim(1));
  check<ShapeError>(p.stride >= 1 && p.pad_top >= 0 && p.pad_bottom >= 0 && p.pad_left >= 0 && p.pad_right >= 0,
                    "conv2d: stride must be >= 1 and padding >= 0");
  const auto x = x_in.contiguous();
  const auto w = weight_in.contiguous();
  const int64_t N = x.dim(0), H = x.dim(2), W = x.dim(3), O = w.dim(0);
  const int kh = static_cast<int>(w.dim(2)), kw = static_cast<int>(w.dim(3));
  const int64_t Ho = detail::conv_out_size(H, kh, p.pad_top, p.pad_bottom, p.stride);
  const int64_t Wo = detail::conv_out_size(W, kw, p.pad_left, p.pad_right, p.stride);
  check<ShapeError>(Ho > 0 && Wo > 0, "conv2d: kernel ", kh, "x", kw, " larger than padded input ", x.shape().str());
  if (bias.defined())
    check<ShapeError>(bias.numel() == O, "conv2d: bias ", bias.shape().str(), " does not match ", O, " outputs");
  auto out = Tensor<T, Cuda>::empty({N, O, Ho, Wo});
  if (out.numel() > 0) {
    const bool sym = cuda_detail::symmetric(p);
    const auto xin = sym ? x : cuda_detail::pad_input(x, p);
    const int pad_h = sym ? p.pad_top : 0, pad_w = sym ? p.pad_left : 0;
    const cudnnDataType_t type = cuda_detail::cudnn_data_type<T>();
    cuda_detail::ConvDescriptors d(type, xin.shape(), w.shape(), out.shape(), pad_h, pad_w, p.stride);
    const auto c = cuda_detail::choose(cuda_detail::ConvDirection::Forward, type, d, xin.shape(), w.shape(), pad_h,
                                       pad_w, p.stride, xin.data(), w.data(), nullptr, out.data());
    ADABLDM_CUDNN_CHECK(cudnnSetConvolutionMathType(d.conv, c.math));
    auto workspace = Tensor<uint8_t, Cuda>::empty({static_cast<int64_t>(std::max<std::size_t>(1, c.workspace))});
    cudnnHandle_t h = cuda::cudnn_handle();
    const float one = 1.0f, zero = 0.0f;
    ADABLDM_CUDNN_CHECK(cudnnConvolutionForward(h, &one, d.x, xin.data(), d.w, w.data(), d.conv,
                                                static_cast<cudnnConvolutionFwdAlgo_t>(c.algo), workspace.data(),
                                                c.workspace, &zero, d.y, out.data()));
    if (bias.defined()) {
      // Our kernel, not cudnnAddTensor (deprecated in cuDNN 9, bfloat16 support not documented).
      const auto b = bias.contiguous();
      cuda_detail::add_channel_bias_kernel<T><<<cuda::detail::grid_for(out.numel()), cuda::detail::kThreads, 0,
                                                cuda::current_stream()>>>(out.data(), b.data(), O, Ho * Wo,
                                                                          out.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
  }
  const auto b = bias.defined() ? bias.contiguous() : Tensor<T, Cuda>{};
  if (autograd::should_record(x, w, b)) {
    autograd::record("conv2d", out, [sx = autograd::slot(x), sw = autograd::slot(w), sb = autograd::slot(b), p,
                                     x_saved = w.requires_grad() ? x.detach() : Tensor<T, Cuda>{},
                                     w_saved = x.requires_grad() ? w.detach() : Tensor<T, Cuda>{}](const Tensor<T, Cuda>& g) {
      Tensor<T, Cuda> dx, dw, db;
      conv2d_backward(g, x_saved, w_saved, sx.shape(), sw ? sw.shape() : w_saved.shape(), p, bool(sx), bool(sw),
                      bool(sb), dx, dw, db);
      if (sx) sx.add(dx);
      if (sw) sw.add(dw);
      if (sb) sb.add(db.reshape(sb.shape()));
    });
  }
  return out;
}

}  // namespace ops
}  // namespace adabldm
