#pragma once
// CUDA twins of ops/embedding.hpp: table lookup (nn.Embedding) and its backward, and the sinusoidal timestep
// embedding (computed on the host with the CPU op, a few KB, then uploaded: identical values).
#include <map>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/cuda/tensor.cuh"
#include "adabldm/ops/embedding.hpp"

namespace adabldm::ops {

namespace cuda_detail {
template <class T>
__global__ void embedding_kernel(const T* table, const int64_t* ids, T* out, int64_t D, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) out[i] = table[ids[i / D] * D + i % D];
}
/// dt[rows[u], :] = sum over positions[offsets[u] .. offsets[u + 1]) of dy[position, :], in position order.
template <class T>
__global__ void embedding_backward_kernel(const T* dy, const int64_t* rows, const int64_t* offsets,
                                          const int64_t* positions, T* dt, int64_t D, int64_t n) {
  ADABLDM_GRID_STRIDE(i, n) {  // i over [unique ids, D]
    const int64_t u = i / D, d = i % D;
    float s = 0.0f;
    for (int64_t k = offsets[u]; k < offsets[u + 1]; ++k) s += cuda::detail::ld(dy, positions[k] * D + d);
    cuda::detail::st(dt, rows[u] * D + d, s);
  }
}
}  // namespace cuda_detail

/// The gradient of embedding's table: dy's rows summed into a zero [V, D] table at their ids (a repeated id sums
/// its rows in order, like the CPU twin).
template <class T>
Tensor<T, Cuda> embedding_backward(const Tensor<T, Cuda>& dy_in, const std::vector<int64_t>& ids, const Shape& table_shape) {
  const auto dy = dy_in.contiguous();
  auto dt = cuda::zeros<T>(table_shape);
  const int64_t D = table_shape[1];
  std::map<int64_t, std::vector<int64_t>> by_id;
  for (std::size_t i = 0; i < ids.size(); ++i) by_id[ids[i]].push_back(static_cast<int64_t>(i));
  if (by_id.empty() || D == 0) return dt;
  std::vector<int64_t> rows, offsets{0}, positions;
  for (const auto& [id, pos] : by_id) {
    rows.push_back(id);
    positions.insert(positions.end(), pos.begin(), pos.end());
    offsets.push_back(static_cast<int64_t>(positions.size()));
  }
  auto up = [](const std::vector<int64_t>& v) {
    return cuda::to_device(Tensor<int64_t, Cpu>::from_vector(v, {static_cast<int64_t>(v.size())}));
  };
  const auto r = up(rows), o = up(offsets), p = up(positions);
  const int64_t n = static_cast<int64_t>(rows.size()) * D;
  cuda_detail::embedding_backward_kernel<T><<<cuda::detail::grid_for(n), cuda::detail::kThreads, 0,
                                              cuda::current_stream()>>>(dy.data(), r.data(), o.data(), p.data(),
                                                                        dt.data(), D, n);
  ADABLDM_CUDA_CHECK_LAUNCH();
  return dt;
}

/// Rows of table[V, D] picked by ids -> [ids.size(), D]; an id out of range is an error naming it.
template <class T>
Tensor<T, Cuda> embedding(const Tensor<T, Cuda>& table, const std::vector<int64_t>& ids) {
  check<ShapeError>(table.rank() == 2, "embedding: table must be [V, D], got ", table.shape().str());
  const auto t = table.contiguous();
  const int64_t V = t.dim(0), D = t.dim(1);
  for (int64_t id : ids) check<ShapeError>(id >= 0 && id < V, "embedding: id ", id, " out of range [0, ", V, ")");
  auto out = Tensor<T, Cuda>::empty({static_cast<int64_t>(ids.size()), D});
  if (out.numel() > 0) {
    const auto dev_ids = cuda::to_device(Tensor<int64_t, Cpu>::from_vector(ids, {static_cast<int64_t>(ids.size())}));
    cuda_detail::embedding_kernel<T><<<cuda::detail::grid_for(out.numel()), cuda::detail::kThreads, 0,
                                       cuda::current_stream()>>>(t.data(), dev_ids.data(), out.data(), D, out.numel());
    ADABLDM_CUDA_CHECK_LAUNCH();
  }
  if (autograd::should_record(t))
    autograd::record("embedding", out, [st = autograd::slot(t), ids](const Tensor<T, Cuda>& g) {
      st.add(embedding_backward(g, ids, st.shape()));
    });
  return out;
}

/// timestep_embedding<T, Cuda>(...): the CPU op's values (see ops/embedding.hpp: float32, rounded once to T) as a
/// device tensor [B, dim].
template <class T, class Dev, std::enable_if_t<std::is_same_v<Dev, Cuda>, int> = 0>
Tensor<T, Cuda> timestep_embedding(const std::vector<float>& timesteps, int64_t dim, bool flip_sin_to_cos,
                                   double freq_shift, double max_period = 10000.0, double scale = 1.0) {
  const auto emb = cuda::to_device(timestep_embedding<float>(timesteps, dim, flip_sin_to_cos, freq_shift, max_period, scale));
  if constexpr (std::is_same_v<T, float>) return emb;
  else return cuda::convert<T>(emb);
}

}  // namespace adabldm::ops
