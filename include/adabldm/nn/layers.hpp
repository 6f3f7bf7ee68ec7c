#pragma once
// The basic layers, named like their PyTorch counterparts: Linear, Conv2d, GroupNorm, LayerNorm, Embedding.
#include <string>

#include "adabldm/nn/module.hpp"
#include "adabldm/ops/ops.hpp"

// The layers call ops::conv2d, ops::linear, ... by qualified name, which C++ resolves where a layer is defined:
// for models with Dev = Cuda the CUDA overloads must be declared first.
#if defined(__CUDACC__) && defined(ADABLDM_WITH_CUDA) && !defined(ADABLDM_CUDA_OPS_INCLUDED)
#error "include adabldm/cuda.cuh before the nn / model headers (the CUDA ops must be declared before the layers)"
#endif

namespace adabldm::nn {

template <class T, class Dev = Cpu>
struct Linear {
  Param<T, Dev> weight, bias;
  bool has_bias = true;

  Linear() = default;
  Linear(int64_t in, int64_t out, bool with_bias = true)
      : weight({out, in}), bias(with_bias ? Shape{out} : Shape{}), has_bias(with_bias) {}
  int64_t in_features() const { return weight.shape[1]; }
  int64_t out_features() const { return weight.shape[0]; }

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const { return ops::linear(x, weight(), bias()); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "weight", weight);
    if (has_bias) f(p + "bias", bias);
  }
};

template <class T, class Dev = Cpu>
struct Conv2d {
  Param<T, Dev> weight, bias;
  ops::Conv2dParams params;
  bool has_bias = true;

  Conv2d() = default;
  /// Square kernel, symmetric padding.
  Conv2d(int64_t in, int64_t out, int64_t kernel, int stride = 1, int padding = 0, bool with_bias = true)
      : weight({out, in, kernel, kernel}), bias(with_bias ? Shape{out} : Shape{}),
        params(ops::Conv2dParams::same(padding, stride)), has_bias(with_bias) {}
  int64_t in_channels() const { return weight.shape[1]; }
  int64_t out_channels() const { return weight.shape[0]; }

  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const { return ops::conv2d(x, weight(), bias(), params); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "weight", weight);
    if (has_bias) f(p + "bias", bias);
  }
};

template <class T, class Dev = Cpu>
struct GroupNorm {
  Param<T, Dev> weight, bias;
  int64_t groups = 32;
  double eps = 1e-5;

  GroupNorm() = default;
  GroupNorm(int64_t num_groups, int64_t channels, double epsilon)
      : weight({channels}), bias({channels}), groups(num_groups), eps(epsilon) {
    check<ShapeError>(num_groups > 0 && channels % num_groups == 0, "GroupNorm: ", channels,
                      " channels do not split into ", num_groups, " groups");
  }
  /// Normalises, then applies `act` (fused: GroupNorm + SiLU is one pass).
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x, ops::Activation act = ops::Activation::Identity) const {
    return ops::group_norm(x, groups, weight(), bias(), eps, act);
  }
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "weight", weight);
    f(p + "bias", bias);
  }
};

template <class T, class Dev = Cpu>
struct LayerNorm {
  Param<T, Dev> weight, bias;
  double eps = 1e-5;

  LayerNorm() = default;
  LayerNorm(int64_t dim, double epsilon) : weight({dim}), bias({dim}), eps(epsilon) {}
  Tensor<T, Dev> operator()(const Tensor<T, Dev>& x) const { return ops::layer_norm(x, weight(), bias(), eps); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "weight", weight);
    f(p + "bias", bias);
  }
};

template <class T, class Dev = Cpu>
struct Embedding {
  Param<T, Dev> weight;

  Embedding() = default;
  Embedding(int64_t num, int64_t dim) : weight({num, dim}) {}
  Tensor<T, Dev> operator()(const std::vector<int64_t>& ids) const { return ops::embedding(weight(), ids); }
  template <class F>
  void visit(const std::string& p, F&& f) {
    f(p + "weight", weight);
  }
};

/// Visits a list of children named prefix + "0.", prefix + "1.", ...
template <class Vec, class F>
void visit_list(Vec& children, const std::string& prefix, F&& f) {
  for (std::size_t i = 0; i < children.size(); ++i) children[i].visit(prefix + std::to_string(i) + ".", f);
}

}  // namespace adabldm::nn
