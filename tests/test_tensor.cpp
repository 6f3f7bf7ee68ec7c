// Tensor views and copies, the RNG (known answers, thread independence) and the thread knob.
#include <doctest/doctest.h>

#include <cmath>
#include <numeric>

#include "adabldm/core/rng.hpp"
#include "adabldm/core/tensor.hpp"
#include "adabldm/core/threads.hpp"

using namespace adabldm;

TEST_CASE("tensor construction, reshape and views share storage") {
  auto t = Tensor<float>::zeros({2, 3, 4});
  CHECK(t.numel() == 24);
  CHECK(t.is_contiguous());
  std::iota(t.data(), t.data() + 24, 0.0f);
  auto r = t.reshape({6, -1});
  CHECK(r.shape() == Shape{6, 4});
  r.at({5, 3}) = 100.0f;
  CHECK(t.at({1, 2, 3}) == 100.0f);  // same buffer
  auto s = t.slice(1, 2);
  CHECK(s.shape() == Shape{1, 3, 4});
  CHECK(s.at({0, 0, 0}) == 12.0f);
  CHECK_THROWS_AS(t.reshape({5, -1}), ShapeError);
  CHECK_THROWS_AS(t.slice(1, 3), ShapeError);
}

TEST_CASE("permute and narrow are strided views; contiguous() copies in the right order") {
  auto t = Tensor<float>::empty({2, 3, 4});
  std::iota(t.data(), t.data() + 24, 0.0f);
  auto p = t.permute({2, 0, 1});  // [4, 2, 3]
  CHECK_FALSE(p.is_contiguous());
  CHECK_THROWS_AS(p.reshape({24}), ShapeError);
  auto c = p.contiguous();
  REQUIRE(c.shape() == Shape{4, 2, 3});
  for (int64_t a = 0; a < 4; ++a)
    for (int64_t b = 0; b < 2; ++b)
      for (int64_t d = 0; d < 3; ++d) CHECK(c.at({a, b, d}) == t.at({b, d, a}));
  auto n = t.narrow(2, 1, 2);  // [2, 3, 2]
  auto nc = n.contiguous();
  CHECK(nc.to_vector() == std::vector<float>{1, 2, 5, 6, 9, 10, 13, 14, 17, 18, 21, 22});
  auto conv = t.to<double>();
  CHECK(conv.at({1, 2, 3}) == 23.0);
  auto h = t.to<half>().to<float>();
  CHECK(h.to_vector() == t.to_vector());  // small integers are exact in f16
}

TEST_CASE("Philox4x32-10 matches the Random123 known-answer vectors") {
  uint32_t out[4];
  detail::Philox4x32::block(0, 0, 0, out);
  CHECK(out[0] == 0x6627e8d5u);
  CHECK(out[1] == 0xe169c58du);
  CHECK(out[2] == 0xbc57ac4cu);
  CHECK(out[3] == 0x9b00dbd8u);
  detail::Philox4x32::block(~0ull, ~0ull, ~0ull, out);
  CHECK(out[0] == 0x408f276du);
  CHECK(out[1] == 0x41c83b0eu);
  CHECK(out[2] == 0xa20bc7c6u);
  CHECK(out[3] == 0x6d5451fdu);
  detail::Philox4x32::block(0x299f31d0a4093822ull, 0x85a308d3243f6a88ull, 0x0370734413198a2eull, out);
  CHECK(out[0] == 0xd16cfe09u);
  CHECK(out[1] == 0x94fdccebu);
  CHECK(out[2] == 0x5001e420u);
  CHECK(out[3] == 0x24126ea1u);
}

TEST_CASE("RNG: reproducible, thread-count independent, right moments") {
  const int saved = num_threads();
  set_num_threads(1);
  Rng a(42);
  auto x1 = a.normal({1000003});
  set_num_threads(4);
  Rng b(42);
  auto x4 = b.normal({1000003});
  set_num_threads(saved);
  CHECK(x1.to_vector() == x4.to_vector());
  CHECK(a.offset() == b.offset());
  // A second draw continues the stream: different values.
  auto y = b.normal({16});
  CHECK(y.at({0}) != x4.at({0}));
  double s = 0, s2 = 0;
  for (float v : x1.to_vector()) {
    s += v;
    s2 += double(v) * v;
  }
  const double n = 1000003, mean = s / n, var = s2 / n - mean * mean;
  CHECK(std::abs(mean) < 0.005);  // 5 sigma is 0.005
  CHECK(std::abs(var - 1.0) < 0.01);
  Rng c(42), d(43);
  CHECK(c.normal({8}).to_vector() != d.normal({8}).to_vector());
  auto u = Rng(5).uniform({100000}, -2.0, 3.0).to_vector();
  CHECK(*std::min_element(u.begin(), u.end()) >= -2.0f);
  CHECK(*std::max_element(u.begin(), u.end()) < 3.0f);
  Rng e(9);
  for (int i = 0; i < 1000; ++i) {
    const auto k = e.uniform_int(-3, 3);
    REQUIRE((k >= -3 && k <= 3));
  }
  CHECK(derive_seed(1, 0) != derive_seed(1, 1));
  CHECK(derive_seed(1, 5) == derive_seed(1, 5));
}

TEST_CASE("thread knob validates its input") {
  CHECK_THROWS_AS(set_num_threads(0), Error);
  const int saved = num_threads();
  set_num_threads(3);
  CHECK(num_threads() == 3);
  set_num_threads(saved);
}

TEST_CASE("host buffers of 1 MB or more are reused after they are freed, smaller ones are not cached") {
  auto& cache = detail::HostBufferCache::instance();
  if (detail::HostBufferCache::limit() < (std::size_t{8} << 20)) return;  // off (AddressSanitizer, or the user)
  cache.clear();
  const void* first = nullptr;
  {
    auto big = Tensor<float, Cpu>::empty({3, 1 << 18});  // 3 MB
    first = big.data();
  }
  CHECK(cache.cached_bytes() == (std::size_t{3} << 20));
  {
    auto again = Tensor<float, Cpu>::empty({1 << 18, 3});  // the same size, another shape: the same buffer
    CHECK(static_cast<const void*>(again.data()) == first);
    CHECK(cache.cached_bytes() == 0);
    auto other = Tensor<float, Cpu>::empty({1 << 19});  // 2 MB: not cached yet, a new buffer
    CHECK(static_cast<const void*>(other.data()) != first);
  }
  { auto small = Tensor<float, Cpu>::empty({1000}); }
  CHECK(cache.cached_bytes() == (std::size_t{5} << 20));
  cache.clear();
  CHECK(cache.cached_bytes() == 0);
}
