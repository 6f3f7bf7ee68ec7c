#pragma once
// CUDA twins of ops/matmul.hpp: GEMM through cuBLAS (cublasGemmEx / cublasGemmStridedBatchedEx), matmul (2-D,
// batched, shared b, transposed b), linear (cuBLASLt with the bias fused as an epilogue, cuBLAS otherwise), and
// their backward kernels. Row-major operands are handed to column-major cuBLAS as their transposes
// (C^T = op(B)^T op(A)^T), so nothing is copied.
//
// Precision: float32 GEMMs use CUBLAS_COMPUTE_32F (true float32 products and sums) unless cuda::set_allow_tf32
// (true); half / bfloat16 GEMMs run on tensor cores with float32 accumulation (CUBLAS_COMPUTE_32F) and round the
// result once to the storage type.
#include <map>
#include <memory>
#include <tuple>
#include <type_traits>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/ops/cuda/elementwise.cuh"
#include "adabldm/ops/cuda/reduce.cuh"
#include "adabldm/ops/matmul.hpp"

namespace adabldm {
namespace cuda {
namespace detail {
inline std::atomic<bool>& use_cublaslt_slot() {
  static std::atomic<bool> use{true};
  return use;
}
}  // namespace detail
/// Whether linear() with a bias uses cuBLASLt's fused bias epilogue (default) or cuBLAS plus a broadcast copy.
inline void set_use_cublaslt(bool use) noexcept { detail::use_cublaslt_slot().store(use); }
inline bool use_cublaslt() noexcept { return detail::use_cublaslt_slot().load(); }
}  // namespace cuda

namespace ops {

namespace cuda_detail {
template <class T>
constexpr cudaDataType_t cuda_data_type() {
  if constexpr (std::is_same_v<T, float>) return CUDA_R_32F;
  else if constexpr (std::is_same_v<T, half>) return CUDA_R_16F;
  else return CUDA_R_16BF;
}
template <class T>
cublasComputeType_t gemm_compute_type() {
  if constexpr (std::is_same_v<T, float>) return cuda::allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  else return CUBLAS_COMPUTE_32F;
}
/// The largest power of two (<= 256) dividing the address: what cuBLASLt may assume about a pointer.
inline uint32_t pointer_alignment(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}
}  // namespace cuda_detail

/// C[M,N] = alpha op(A) op(B) + beta C on the device, row-major with leading dimensions lda / ldb / ldc (the CPU
/// gemm's contract), for `batch` matrices strideA / strideB / strideC elements apart (stride 0: shared).
/// Enqueued on the current stream. beta == 0 ignores C's previous content.
template <class T>
void gemm_device(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const T* A, int64_t lda,
                 const T* B, int64_t ldb, float beta, T* C, int64_t ldc, int64_t batch = 1, int64_t stride_a = 0,
                 int64_t stride_b = 0, int64_t stride_c = 0) {
  static_assert(cuda::is_cuda_float_v<T>, "gemm_device: float, half or bfloat16");
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {  // C = beta C: cuBLAS is not asked about empty products
    for (int64_t b = 0; b < batch; ++b) {
      T* c = C + b * stride_c;
      if (beta == 0.0f) {
        ADABLDM_CUDA_CHECK(cudaMemset2DAsync(c, static_cast<std::size_t>(ldc) * sizeof(T), 0,
                                             static_cast<std::size_t>(N) * sizeof(T), static_cast<std::size_t>(M),
                                             cuda::current_stream()));
      } else {
        for (int64_t r = 0; r < M; ++r) {
          auto row = Tensor<T, Cuda>::wrap(nullptr, c + r * ldc, {N});
          cuda_detail::launch_affine(row, row, beta, 0.0f);
        }
      }
    }
    return;
  }
  check(M <= INT32_MAX && N <= INT32_MAX && K <= INT32_MAX && lda <= INT32_MAX && ldb <= INT32_MAX &&
            ldc <= INT32_MAX && batch <= INT32_MAX,
        "gemm_device: dimensions beyond cuBLAS's 32-bit range");
  cublasHandle_t handle = cuda::cublas_handle();
  const cudaDataType_t type = cuda_detail::cuda_data_type<T>();
  const cublasOperation_t op_b = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, op_a = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const auto m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(K);
  if (batch == 1) {
    ADABLDM_CUBLAS_CHECK(cublasGemmEx(handle, op_b, op_a, m, n, k, &alpha, B, type, static_cast<int>(ldb), A, type,
                                      static_cast<int>(lda), &beta, C, type, static_cast<int>(ldc),
                                      cuda_detail::gemm_compute_type<T>(), CUBLAS_GEMM_DEFAULT));
  } else {
    ADABLDM_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
        handle, op_b, op_a, m, n, k, &alpha, B, type, static_cast<int>(ldb), stride_b, A, type, static_cast<int>(lda),
        stride_a, &beta, C, type, static_cast<int>(ldc), stride_c, static_cast<int>(batch),
        cuda_detail::gemm_compute_type<T>(), CUBLAS_GEMM_DEFAULT));
  }
}

/// The column sums of a row-major [rows, cols] device matrix (a bias gradient) as a [cols] tensor.
template <class T>
Tensor<T, Cuda> sum_rows_device(const T* m, int64_t rows, int64_t cols) {
  auto out = Tensor<T, Cuda>::empty({cols});
  cuda_detail::column_sums(cuda_detail::ReadMatrix<T>{m, cols}, rows, cols, out.data());
  return out;
}

/// dA of C = A @ op(B): dC @ op(B)^T, A's shape.
template <class T>
Tensor<T, Cuda> matmul_backward_a(const Tensor<T, Cuda>& dc_in, const Tensor<T, Cuda>& b_in, bool trans_b) {
  const auto dc = dc_in.contiguous();
  const auto b = b_in.contiguous();
  const int64_t M = dc.dim(-2), N = dc.dim(-1), K = trans_b ? b.dim(-1) : b.dim(-2);
  const int64_t batch = dc.shape().leading_numel(2);
  Shape shape = dc.shape();
  shape[shape.rank() - 1] = K;
  auto da = Tensor<T, Cuda>::empty(shape);
  const int64_t ldb = trans_b ? K : N;
  if (b.rank() == 2)
    gemm_device<T>(false, !trans_b, batch * M, K, N, 1.0f, dc.data(), N, b.data(), ldb, 0.0f, da.data(), K);
  else
    gemm_device<T>(false, !trans_b, M, K, N, 1.0f, dc.data(), N, b.data(), ldb, 0.0f, da.data(), K, batch, M * N,
                   K * N, M * K);
  return da;
}

/// dB of C = A @ op(B): A^T dC ([K, N]) or dC^T A ([N, K]) when trans_b; summed over the batch when B is shared.
template <class T>
Tensor<T, Cuda> matmul_backward_b(const Tensor<T, Cuda>& dc_in, const Tensor<T, Cuda>& a_in, const Shape& b_shape,
                                  bool trans_b) {
  const auto dc = dc_in.contiguous();
  const auto a = a_in.contiguous();
  const int64_t M = dc.dim(-2), N = dc.dim(-1), K = a.dim(-1);
  const int64_t batch = dc.shape().leading_numel(2);
  const bool shared = b_shape.rank() == 2;
  const int64_t rows = shared ? batch * M : M, count = shared ? 1 : batch;
  auto db = Tensor<T, Cuda>::empty(b_shape);
  if (trans_b)
    gemm_device<T>(true, false, N, K, rows, 1.0f, dc.data(), N, a.data(), K, 0.0f, db.data(), K, count, M * N, M * K,
                   K * N);
  else
    gemm_device<T>(true, false, K, N, rows, 1.0f, a.data(), K, dc.data(), N, 0.0f, db.data(), N, count, M * K, M * N,
                   K * N);
  return db;
}

/// a[..., M, K] @ b[..., K, N] -> [..., M, N]; b 2-D (shared by the batch) or batched like a; trans_b reads b as
/// [..., N, K].
template <class T>
Tensor<T, Cuda> matmul(const Tensor<T, Cuda>& a_in, const Tensor<T, Cuda>& b_in, bool trans_b = false) {
  const auto shape = detail::matmul_shape(a_in.shape(), b_in.shape(), trans_b);
  const int64_t M = shape.M, K = shape.K, N = shape.N, batch = shape.batch;
  const bool shared_b = shape.shared_b;
  const Shape& out_shape = shape.out;
  const auto a = a_in.contiguous();
  const auto b = b_in.contiguous();
  auto out = Tensor<T, Cuda>::empty(out_shape);
  if (shared_b)
    gemm_device<T>(false, trans_b, batch * M, N, K, 1.0f, a.data(), K, b.data(), trans_b ? K : N, 0.0f, out.data(), N);
  else
    gemm_device<T>(false, trans_b, M, N, K, 1.0f, a.data(), K, b.data(), trans_b ? K : N, 0.0f, out.data(), N, batch,
                   M * K, K * N, M * N);
  if (autograd::should_record(a, b)) {
    autograd::record("matmul", out, [sa = autograd::slot(a), sb = autograd::slot(b), trans_b,
                                     a_saved = b.requires_grad() ? a.detach() : Tensor<T, Cuda>{},
                                     b_saved = a.requires_grad() ? b.detach() : Tensor<T, Cuda>{}](const Tensor<T, Cuda>& g) {
      if (sa) sa.add(matmul_backward_a(g, b_saved, trans_b));
      if (sb) sb.add(matmul_backward_b(g, a_saved, sb.shape(), trans_b));
    });
  }
  return out;
}

namespace cuda_detail {

template <class T>
__global__ void broadcast_rows_kernel(const T* bias, T* out, int64_t cols, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) out[i] = bias[i % cols];
}

/// RAII for the cuBLASLt descriptors of one call.
struct LtDescriptors {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulPreference_t pref = nullptr;
  ~LtDescriptors() {
    if (pref) (void)cublasLtMatmulPreferenceDestroy(pref);
    if (d) (void)cublasLtMatrixLayoutDestroy(d);
    if (b) (void)cublasLtMatrixLayoutDestroy(b);
    if (a) (void)cublasLtMatrixLayoutDestroy(a);
    if (op) (void)cublasLtMatmulDescDestroy(op);
  }
};

/// A cuBLASLt plan for one linear problem: the descriptors and the algorithm the heuristic chose. Building one costs
/// tens of microseconds (the heuristic query), so plans are kept per thread (the descriptors are not shared) and
/// per problem; only the bias pointer changes between calls.
struct LtPlan {
  LtDescriptors dsc;
  cublasLtMatmulHeuristicResult_t heuristic{};
  bool usable = false;  // false: cuBLASLt has no algorithm; the cuBLAS path is used
};
/// (device, element type, compute type, rows, in, out, alignments of w, x, y, bias).
using LtKey = std::tuple<int, int, int, int64_t, int64_t, int64_t, uint32_t, uint32_t, uint32_t, uint32_t>;

/// Plans built by this thread so far (tests check that a repeated problem reuses its plan).
inline int64_t& lt_plans_built() {
  thread_local int64_t n = 0;
  return n;
}

template <class T>
const LtPlan& linear_cublaslt_plan(const LtKey& key, int64_t rows, int64_t in, int64_t outf, uint32_t align_a,
                                   uint32_t align_b, uint32_t align_d, const T* bias) {
  thread_local std::map<LtKey, std::unique_ptr<LtPlan>> plans;
  if (auto it = plans.find(key); it != plans.end()) return *it->second;
  ++lt_plans_built();
  if (plans.size() >= 4096) plans.clear();  // (a run has a few dozen problems; this bounds pathological ones)
  auto plan = std::make_unique<LtPlan>();
  LtDescriptors& dsc = plan->dsc;
  constexpr std::size_t kWorkspace = std::size_t{32} << 20;
  const cudaDataType_t type = cuda_data_type<T>();
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescCreate(&dsc.op, gemm_compute_type<T>(), CUDA_R_32F));
  // Column-major view: D^T[out, rows] = W^T (w stored [out, in] row-major = [in, out] column-major, transposed)
  // times X^T ([in, rows] column-major, not transposed), plus bias along D^T's rows.
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(dsc.op, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(dsc.op, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(dsc.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
  const cudaDataType_t bias_type = type;
  ADABLDM_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(dsc.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  // The heuristic reads the bias pointer's value to infer its alignment (cublasLt.h): give it a real one.
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(dsc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&dsc.a, type, static_cast<uint64_t>(in), static_cast<uint64_t>(outf), in));
  ADABLDM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&dsc.b, type, static_cast<uint64_t>(in), static_cast<uint64_t>(rows), in));
  ADABLDM_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&dsc.d, type, static_cast<uint64_t>(outf), static_cast<uint64_t>(rows), outf));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&dsc.pref));
  const std::size_t workspace_bytes = kWorkspace;
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                            &workspace_bytes, sizeof(workspace_bytes)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES,
                                                            &align_a, sizeof(align_a)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                                                            &align_b, sizeof(align_b)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES,
                                                            &align_d, sizeof(align_d)));
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES,
                                                            &align_d, sizeof(align_d)));
  // 16-bit outputs: split-K partials must be reduced in float, not in the output type (one rounding only).
  const uint32_t reduction = std::is_same_v<T, float> ? uint32_t{CUBLASLT_REDUCTION_SCHEME_MASK}
                                                      : uint32_t{CUBLASLT_REDUCTION_SCHEME_COMPUTE_TYPE};
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(dsc.pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK,
                                                            &reduction, sizeof(reduction)));
  int found = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(cuda::cublaslt_handle(), dsc.op, dsc.a, dsc.b, dsc.d,
                                                          dsc.d, dsc.pref, 1, &plan->heuristic, &found);
  plan->usable = s == CUBLAS_STATUS_SUCCESS && found > 0;
  return *plans.emplace(key, std::move(plan)).first->second;
}

/// y[rows, out] = x[rows, in] w[out, in]^T + bias[out] with cuBLASLt's bias epilogue. Returns false (nothing
/// enqueued) when cuBLASLt has no algorithm for the problem; the caller then falls back to cuBLAS.
template <class T>
bool linear_cublaslt(const T* x, const T* w, const T* bias, T* y, int64_t rows, int64_t in, int64_t outf) {
  if (rows > INT32_MAX || in > INT32_MAX || outf > INT32_MAX) return false;
  // The bias epilogue is not covered by the alignment preferences below and fails on misaligned vectors (a bias
  // that is a view into a larger tensor): leave those to the cuBLAS path.
  if (pointer_alignment(bias) < 16) return false;
  const uint32_t align_a = pointer_alignment(w), align_b = pointer_alignment(x), align_d = pointer_alignment(y);
  const LtKey key{cuda::current_device(), static_cast<int>(cuda_data_type<T>()), static_cast<int>(gemm_compute_type<T>()),
                  rows, in, outf, align_a, align_b, align_d, pointer_alignment(bias)};
  const LtPlan& plan = linear_cublaslt_plan<T>(key, rows, in, outf, align_a, align_b, align_d, bias);
  if (!plan.usable) return false;
  ADABLDM_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.dsc.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
  auto workspace =
      Tensor<uint8_t, Cuda>::empty({static_cast<int64_t>(std::max<std::size_t>(1, plan.heuristic.workspaceSize))});
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t run =
      cublasLtMatmul(cuda::cublaslt_handle(), plan.dsc.op, &alpha, w, plan.dsc.a, x, plan.dsc.b, &beta, y, plan.dsc.d, y,
                     plan.dsc.d, &plan.heuristic.algo, workspace.data(), plan.heuristic.workspaceSize,
                     cuda::current_stream());
  if (run == CUBLAS_STATUS_NOT_SUPPORTED) return false;  // nothing enqueued: the caller falls back to cuBLAS
  ADABLDM_CUBLAS_CHECK(run);
  return true;
}

}  // namespace cuda_detail

/// The gradients of linear given dy [..., out]: dx (when wanted), dw and db (when wanted).
template <class T>
void linear_backward(const Tensor<T, Cuda>& dy_in, const Tensor<T, Cuda>& x, const Tensor<T, Cuda>& w,
                     const Shape& x_shape, const Shape& w_shape, bool need_dx, bool need_dw, bool need_db,
                     Tensor<T, Cuda>& dx, Tensor<T, Cuda>& dw, Tensor<T, Cuda>& db) {
  const auto g = dy_in.contiguous();
  const int64_t outf = g.dim(-1), in = w_shape[1], rows = g.shape().leading_numel(1);
  if (need_dx) {  // dX = dY @ W
    dx = Tensor<T, Cuda>::empty(x_shape);
    gemm_device<T>(false, false, rows, in, outf, 1.0f, g.data(), outf, w.data(), in, 0.0f, dx.data(), in);
  }
  if (need_dw) {  // dW = dY^T @ X
    dw = Tensor<T, Cuda>::empty(w_shape);
    gemm_device<T>(true, false, outf, in, rows, 1.0f, g.data(), outf, x.data(), in, 0.0f, dw.data(), in);
  }
  if (need_db) db = sum_rows_device(g.data(), rows, outf);
}

/// nn.Linear: x[..., in] @ weight[out, in]^T + bias[out] -> [..., out]. bias may be undefined.
template <class T>
Tensor<T, Cuda> linear(const Tensor<T, Cuda>& x_in, const Tensor<T, Cuda>& weight, const Tensor<T, Cuda>& bias = {}) {
  check<ShapeError>(weight.rank() == 2, "linear: weight must be [out, in], got ", weight.shape().str());
  check<ShapeError>(x_in.rank() >= 1 && x_in.dim(-1) == weight.dim(1), "linear: input ", x_in.shape().str(),
                    " does not match weight ", weight.shape().str());
  const auto x = x_in.contiguous();
  const auto w = weight.contiguous();
  const int64_t in = w.dim(1), outf = w.dim(0), rows = x.shape().leading_numel(1);
  Shape out_shape = x.shape();
  out_shape[out_shape.rank() - 1] = outf;
  auto out = Tensor<T, Cuda>::empty(out_shape);
  Tensor<T, Cuda> b;
  if (bias.defined()) {
    check<ShapeError>(bias.numel() == outf, "linear: bias ", bias.shape().str(), " does not match ", outf, " outputs");
    b = bias.contiguous();
  }
  bool done = false;
  if (b.defined() && rows > 0 && in > 0 && outf > 0 && cuda::use_cublaslt())
    done = cuda_detail::linear_cublaslt<T>(x.data(), w.data(), b.data(), out.data(), rows, in, outf);
  if (!done) {
    if (b.defined() && out.numel() > 0) {
      cuda_detail::broadcast_rows_kernel<T><<<cuda::detail::grid_for(out.numel()), cuda::detail::kThreads, 0,
                                              cuda::current_stream()>>>(b.data(), out.data(), outf, out.numel());
      ADABLDM_CUDA_CHECK_LAUNCH();
    }
    gemm_device<T>(false, true, rows, outf, in, 1.0f, x.data(), in, w.data(), in, b.defined() ? 1.0f : 0.0f,
                   out.data(), outf);
  }
  if (autograd::should_record(x, w, b)) {
    autograd::record("linear", out, [sx = autograd::slot(x), sw = autograd::slot(w), sb = autograd::slot(b),
                                     x_saved = w.requires_grad() ? x.detach() : Tensor<T, Cuda>{},
                                     w_saved = x.requires_grad() ? w.detach() : Tensor<T, Cuda>{}](const Tensor<T, Cuda>& g) {
      Tensor<T, Cuda> dx, dw, db;
      linear_backward(g, x_saved, w_saved, sx.shape(), sw ? sw.shape() : w_saved.shape(), bool(sx), bool(sw),
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
