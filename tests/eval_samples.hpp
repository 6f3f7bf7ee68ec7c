#pragma once
// The toy images of eval_toy_data.hpp as detector-training samples, and the small detector the evaluation tests
// train (test_eval.cpp, cuda/test_cuda_detector.cu). A CUDA test includes adabldm/cuda.cuh before this header.
#include <utility>

#include "adabldm/defect/imgproc.hpp"
#include "adabldm/eval/train_detector.hpp"
#include "eval_toy_data.hpp"

namespace toy {

/// An image and its mask (make_sample) as a SegSample: image [1, S, S] in [-1, 1], mask [1, S, S] in {0, 1}.
inline adabldm::eval::SegSample seg_sample(const std::pair<Image, Image>& p) {
  const int S = p.first.width;
  return {adabldm::image_to_tensor(p.first).reshape({1, S, S}),
          adabldm::defect::image_to_mask(p.second, 127).reshape({1, S, S})};
}

/// Three levels of 8 / 16 / 32 channels: small enough for tests, deep enough to learn the toy task.
inline adabldm::eval::DetectorConfig small_detector() {
  adabldm::eval::DetectorConfig c;
  c.widths = {8, 16, 32};
  return c;
}

}  // namespace toy
