#pragma once
// Sinusoidal timestep embedding (diffusers' get_timestep_embedding; a constant of the timesteps) and table
// lookup (nn.Embedding), whose backward scatter-adds the output gradient into the table's rows.
#include <cmath>
#include <type_traits>
#include <vector>

#include "adabldm/core/autograd_record.hpp"
#include "adabldm/core/tensor.hpp"

namespace adabldm::ops {

/// timesteps[B] -> [B, dim]: half = dim/2, freq_i = exp(-ln(max_period) * i / (half - freq_shift)),
/// emb = [sin(t*freq), cos(t*freq)], swapped to [cos, sin] when flip_sin_to_cos; a zero column pads an odd dim.
/// Computed in float32 whatever T is, with the same operation order as diffusers (which embeds the exact
/// timesteps in float32 and casts the result to the model's dtype), then rounded once to T: the timesteps stay
/// float, since bfloat16 cannot hold 999 (it rounds to 1000) and half arguments t * freq lose 9 bits near 1000.
template <class T>
Tensor<T, Cpu> timestep_embedding(const std::vector<float>& timesteps, int64_t dim, bool flip_sin_to_cos,
                                  double freq_shift, double max_period = 10000.0, double scale = 1.0) {
  if constexpr (!std::is_same_v<T, float>) {
    return timestep_embedding<float>(timesteps, dim, flip_sin_to_cos, freq_shift, max_period, scale).template to<T>();
  } else {
  check<ShapeError>(dim >= 2, "timestep_embedding: dim must be >= 2, got ", dim);
  const int64_t half = dim / 2, B = static_cast<int64_t>(timesteps.size());
  check<ShapeError>(static_cast<double>(half) != freq_shift, "timestep_embedding: half dim equals freq_shift");
  std::vector<float> freq(static_cast<std::size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(-std::log(max_period)) * static_cast<float>(i);
    freq[static_cast<std::size_t>(i)] = std::exp(exponent / static_cast<float>(static_cast<double>(half) - freq_shift));
  }
  auto out = Tensor<float, Cpu>::zeros({B, dim});
  for (int64_t b = 0; b < B; ++b) {
    float* row = out.data() + b * dim;
    for (int64_t i = 0; i < half; ++i) {
      const float arg = static_cast<float>(scale) * (timesteps[static_cast<std::size_t>(b)] * freq[static_cast<std::size_t>(i)]);
      const float s = std::sin(arg), c = std::cos(arg);
      row[i] = flip_sin_to_cos ? c : s;
      row[half + i] = flip_sin_to_cos ? s : c;
    }
  }
  return out;
  }
}

/// timestep_embedding<T, Dev>(...): the same on the device Dev (the models call this form). The CPU's is the op
/// above; CUDA's computes the same values and uploads them (adabldm/ops/cuda/embedding.cuh).
template <class T, class Dev, std::enable_if_t<std::is_same_v<Dev, Cpu>, int> = 0>
Tensor<T, Cpu> timestep_embedding(const std::vector<float>& timesteps, int64_t dim, bool flip_sin_to_cos,
                                  double freq_shift, double max_period = 10000.0, double scale = 1.0) {
  return timestep_embedding<T>(timesteps, dim, flip_sin_to_cos, freq_shift, max_period, scale);
}

/// The gradient of embedding's table: dy's rows added into a zero [V, D] table at their ids (in order, so a
/// repeated id sums deterministically).
template <class T>
Tensor<T, Cpu> embedding_backward(const Tensor<T, Cpu>& dy, const std::vector<int64_t>& ids, const Shape& table_shape) {
  auto dt = Tensor<T, Cpu>::zeros(table_shape);
  const int64_t D = table_shape[1];
  for (std::size_t i = 0; i < ids.size(); ++i) {
    const T* src = dy.data() + static_cast<int64_t>(i) * D;
    T* dst = dt.data() + ids[i] * D;
    for (int64_t j = 0; j < D; ++j) dst[j] += src[j];
  }
  return dt;
}

/// Rows of table[V, D] picked by ids -> [ids.size(), D]; an id out of range is an error naming it.
template <class T>
Tensor<T, Cpu> embedding(const Tensor<T, Cpu>& table, const std::vector<int64_t>& ids) {
  check<ShapeError>(table.rank() == 2, "embedding: table must be [V, D], got ", table.shape().str());
  const auto t = table.contiguous();
  const int64_t V = t.dim(0), D = t.dim(1);
  auto out = Tensor<T, Cpu>::empty({static_cast<int64_t>(ids.size()), D});
  for (std::size_t i = 0; i < ids.size(); ++i) {
    check<ShapeError>(ids[i] >= 0 && ids[i] < V, "embedding: id ", ids[i], " out of range [0, ", V, ")");
    std::copy(t.data() + ids[i] * D, t.data() + (ids[i] + 1) * D, out.data() + static_cast<int64_t>(i) * D);
  }
  if (autograd::should_record(t))
    autograd::record("embedding", out, [st = autograd::slot(t), ids](const Tensor<T, Cpu>& g) {
      st.add(embedding_backward(g, ids, st.shape()));
    });
  return out;
}

}  // namespace adabldm::ops
