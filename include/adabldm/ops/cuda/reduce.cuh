#pragma once
// Reductions shared by the CUDA ops: column sums of a row-major [rows, cols] matrix (bias and norm-parameter
// gradients) in two deterministic stages (fixed blocks of rows, then the blocks in order), and row sums.
#include "adabldm/core/cuda/tensor.cuh"

namespace adabldm::ops {

namespace cuda_detail {

/// partial[blk, c] = sum over rows [blk * per, blk * per + per) of f(r, c), for every column c.
template <class F>
__global__ void column_partials_kernel(F f, float* partial, int64_t rows, int64_t cols, int64_t per) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t blk = blockIdx.y;
  if (c >= cols) return;
  const int64_t r1 = min(rows, (blk + 1) * per);
  float s = 0.0f;
  for (int64_t r = blk * per; r < r1; ++r) s += f(r, c);
  partial[blk * cols + c] = s;
}
template <class T>
__global__ void finish_column_sums_kernel(const float* partial, T* out, int64_t blocks, int64_t cols) {
  ADABLDM_GRID_STRIDE(c, cols) {
    float s = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) s += partial[b * cols + c];
    cuda::detail::st(out, c, s);
  }
}

/// out[c] = sum over r < rows of f(r, c) (f a __device__ functor returning float), deterministic.
template <class T, class F>
void column_sums(F f, int64_t rows, int64_t cols, T* out) {
  if (cols == 0) return;
  cudaStream_t stream = cuda::current_stream();
  int64_t per = 64;  // rows per partial sum: a fixed split (64, more only when the grid would overflow)
  while ((rows + per - 1) / per > 65535) per *= 2;
  const int64_t blocks = std::max<int64_t>(1, (rows + per - 1) / per);
  auto partial = Tensor<float, Cuda>::empty({blocks, cols});
  if (rows == 0) {
    ADABLDM_CUDA_CHECK(cudaMemsetAsync(partial.data(), 0, partial.nbytes(), stream));
  } else {
    const dim3 grid(static_cast<unsigned>((cols + 255) / 256), static_cast<unsigned>(blocks));
    column_partials_kernel<<<grid, 256, 0, stream>>>(f, partial.data(), rows, cols, per);
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  finish_column_sums_kernel<T><<<cuda::detail::grid_for(cols), cuda::detail::kThreads, 0, stream>>>(
      partial.data(), out, blocks, cols);
  ADABLDM_CUDA_CHECK_LAUNCH();
}

/// Reads m[r * cols + c] as float.
template <class T>
struct ReadMatrix {
  const T* m;
  int64_t cols;
  __device__ float operator()(int64_t r, int64_t c) const { return cuda::detail::ld(m, r * cols + c); }
};

}  // namespace cuda_detail

}  // namespace adabldm::ops
