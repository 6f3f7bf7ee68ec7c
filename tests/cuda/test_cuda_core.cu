// The CUDA core: device query, the caching allocator (steady-state reuse without cudaMalloc), streams, host <->
// device copies (pageable through the pinned staging ring, pinned and asynchronous), strided copies, and the
// f32 <-> f16 / bf16 conversion kernels against the host conversions (bit for bit, every f16 pattern).
// Without a device every case reports a skip and passes (the host-only checks still run).
#include <thread>

#include "cuda_test_util.cuh"

using namespace cuda_test;

TEST_CASE("device query never throws") {
  const int n = cuda_device_count();
  CHECK(n >= 0);
  CHECK(cuda_available() == (n > 0));
  MESSAGE("CUDA devices: " << n);
  if (n > 0) {
    const auto& p = cuda::device_properties();
    MESSAGE("device 0: " << p.name << ", sm_" << p.major << p.minor << ", " << (p.totalGlobalMem >> 20) << " MiB");
  }
}

TEST_CASE("allocator size classes (host only)") {
  using A = cuda::CachingAllocator;
  CHECK(A::round_size(0) == 512);
  CHECK(A::round_size(1) == 512);
  CHECK(A::round_size(512) == 512);
  CHECK(A::round_size(513) == 1024);
  CHECK(A::round_size(std::size_t{1} << 20) == (std::size_t{1} << 20));
  CHECK(A::round_size((std::size_t{1} << 20) + 1) == (std::size_t{5} << 18));  // 1.25 MiB
  CHECK(A::round_size(std::size_t{3} << 20) == (std::size_t{3} << 20));
  CHECK(A::round_size((std::size_t{3} << 20) + 1) == (std::size_t{7} << 19));  // 3.5 MiB
  for (std::size_t b : {std::size_t{777}, std::size_t{1} << 22, (std::size_t{1} << 30) + 12345}) {
    const std::size_t r = A::round_size(b);
    CHECK(r >= b);
    CHECK(static_cast<double>(r) <= 1.25 * static_cast<double>(b) + 512);
  }
}

CUDA_TEST_CASE("caching allocator: steady state makes no cudaMalloc calls; stats; empty_cache") {
  ADABLDM_REQUIRE_CUDA();
  cuda::synchronize();
  cuda::CachingAllocator::instance().reset_counters();
  auto step = [] {
    auto a = cuda::empty<float>({1000, 1000});
    auto b = cuda::zeros<float>({333});
    auto c = cuda::full<adabldm::half>({7, 9}, adabldm::half(1.5f));
    auto d = ops::add(a, a);
    (void)b, (void)c, (void)d;
  };
  step();  // warm-up: fills the cache
  const auto warm = cuda::allocator_stats();
  CHECK(warm.cuda_malloc_calls > 0);
  for (int i = 0; i < 20; ++i) step();
  const auto steady = cuda::allocator_stats();
  CHECK(steady.cuda_malloc_calls == warm.cuda_malloc_calls);
  CHECK(steady.allocations > warm.allocations);
  CHECK(steady.bytes_cached >= 4000000);
  {
    auto held = cuda::empty<float>({1000, 1000});
    const auto s = cuda::allocator_stats();
    CHECK(s.bytes_in_use >= 4000000);
    CHECK(s.peak_bytes_in_use >= s.bytes_in_use);
  }
  cuda::synchronize();
  cuda::empty_cache();
  const auto emptied = cuda::allocator_stats();
  CHECK(emptied.bytes_cached == 0);
  CHECK(emptied.blocks_cached == 0);
  CHECK(emptied.cuda_free_calls > 0);
  step();
  CHECK(cuda::allocator_stats().cuda_malloc_calls > steady.cuda_malloc_calls);
}

CUDA_TEST_CASE("empty tensors are defined and copy round trips preserve every value (f32, f16, bf16, int64)") {
  ADABLDM_REQUIRE_CUDA();
  auto z = cuda::empty<float>({0, 3});
  CHECK(z.defined());
  CHECK(cuda::to_host(z).numel() == 0);
  // 3 staging chunks (8 MiB each) and a ragged end.
  const int64_t n = (int64_t{20} << 20) / 4 + 3;
  auto x = randn({n});
  auto back = cuda::to_host(cuda::to_device(x));
  CHECK(back.to_vector() == x.to_vector());
  auto xh = x.to<adabldm::half>();
  auto bh = cuda::to_host(cuda::to_device(xh));
  CHECK(std::equal(bh.data(), bh.data() + n, xh.data(), [](auto a, auto b) { return a.bits == b.bits; }));
  auto xb = randn({5, 7}).to<adabldm::bfloat16>();
  auto bb = cuda::to_host(cuda::to_device(xb));
  CHECK(std::equal(bb.data(), bb.data() + 35, xb.data(), [](auto a, auto b) { return a.bits == b.bits; }));
  auto ids = Tensor<int64_t, Cpu>::from_vector({5, -1, 1ll << 40}, {3});
  CHECK(cuda::to_host(cuda::to_device(ids)).to_vector() == ids.to_vector());
  // A strided host view is made contiguous before the copy.
  auto m = randn({6, 5});
  CHECK(cuda::to_host(cuda::to_device(m.permute({1, 0}))).to_vector() == m.permute({1, 0}).contiguous().to_vector());
}

CUDA_TEST_CASE("pinned memory and asynchronous copies") {
  ADABLDM_REQUIRE_CUDA();
  auto src = cuda::pinned_empty<float>({4, 1000});
  auto x = randn({4, 1000});
  std::copy(x.data(), x.data() + x.numel(), src.data());
  auto dev = cuda::empty<float>({4, 1000});
  cuda::copy_async(dev, src);
  auto dst = cuda::pinned_empty<float>({4, 1000});
  cuda::copy_async(dst, ops::affine(dev, 2.0f, 1.0f));
  cuda::synchronize();
  for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(dst.data()[i] == 2.0f * x.data()[i] + 1.0f);
  // A pinned source goes through to_device directly.
  CHECK(cuda::to_host(cuda::to_device(src)).to_vector() == x.to_vector());
  auto pageable = F32::zeros({4, 1000});
  CHECK_THROWS_AS(cuda::copy_async(dev, pageable), Error);
}

CUDA_TEST_CASE("contiguous copies of strided device views, copy_into, zeros and full") {
  ADABLDM_REQUIRE_CUDA();
  auto x = randn({3, 4, 5, 6});
  auto d = cuda::to_device(x);
  for (const auto& order : std::vector<std::vector<int>>{{0, 2, 3, 1}, {3, 2, 1, 0}, {1, 0, 2, 3}}) {
    CHECK(cuda::to_host(d.permute(order).contiguous()).to_vector() == x.permute(order).contiguous().to_vector());
  }
  CHECK(cuda::to_host(d.narrow(2, 1, 3).clone()).to_vector() == x.narrow(2, 1, 3).contiguous().to_vector());
  CHECK(cuda::to_host(d.narrow(3, 2, 2).permute({3, 0, 1, 2}).contiguous()).to_vector() ==
        x.narrow(3, 2, 2).permute({3, 0, 1, 2}).contiguous().to_vector());
  auto target = cuda::zeros<float>({3, 4, 5, 6});
  auto part = randn({3, 4, 2, 6});
  cuda::copy_into(target.narrow(2, 1, 2), cuda::to_device(part));
  auto expect = F32::zeros({3, 4, 5, 6});
  autograd::detail::copy_into(expect.narrow(2, 1, 2), part);
  CHECK(cuda::to_host(target).to_vector() == expect.to_vector());
  CHECK(cuda::to_host(cuda::full<float>({2, 2}, 3.25f)).to_vector() == std::vector<float>(4, 3.25f));
  auto fh = cuda::to_host(cuda::full<adabldm::half>({3}, adabldm::half(-2.5f)));
  CHECK(static_cast<float>(fh.data()[2]) == -2.5f);
}

namespace {
template <class T>
std::vector<uint16_t> bits_of(const Tensor<T, Cpu>& t) {
  std::vector<uint16_t> b(static_cast<std::size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) b[static_cast<std::size_t>(i)] = t.data()[i].bits;
  return b;
}
}  // namespace

CUDA_TEST_CASE("dtype conversion kernels agree with the host conversions bit for bit") {
  ADABLDM_REQUIRE_CUDA();
  // Every f16 and bf16 pattern -> f32.
  auto all16 = Tensor<adabldm::half, Cpu>::empty({65536});
  auto all16b = Tensor<adabldm::bfloat16, Cpu>::empty({65536});
  for (uint32_t i = 0; i < 65536; ++i) {
    all16.data()[i] = adabldm::half::from_bits(static_cast<uint16_t>(i));
    all16b.data()[i] = adabldm::bfloat16::from_bits(static_cast<uint16_t>(i));
  }
  auto to32 = [](auto host) {
    const auto f = cuda::to_host(cuda::convert<float>(cuda::to_device(host)));
    std::vector<uint32_t> bits(static_cast<std::size_t>(f.numel()));
    for (int64_t i = 0; i < f.numel(); ++i) bits[static_cast<std::size_t>(i)] = adabldm::bit_cast<uint32_t>(f.data()[i]);
    return bits;
  };
  auto host32 = [](auto host) {
    std::vector<uint32_t> bits(static_cast<std::size_t>(host.numel()));
    for (int64_t i = 0; i < host.numel(); ++i)
      bits[static_cast<std::size_t>(i)] = adabldm::bit_cast<uint32_t>(static_cast<float>(host.data()[i]));
    return bits;
  };
  CHECK(to32(all16) == host32(all16));
  CHECK(to32(all16b) == host32(all16b));
  // f32 -> f16 / bf16: rounding boundaries, subnormals, overflow, NaN payloads, and 4M random bit patterns.
  std::vector<uint32_t> patterns;
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t f = adabldm::detail::f16_bits_to_f32_bits(static_cast<uint16_t>(h));
    for (int32_t delta : {-1, 0, 1, 0xfff, 0x1000, 0x1001}) patterns.push_back(f + static_cast<uint32_t>(delta));
  }
  for (uint32_t e : {0x7f800000u, 0xff800000u, 0x7fc00001u, 0xffa12345u, 0x477fefffu, 0x477ff000u, 0x33000000u,
                     0x33000001u, 0x00000001u, 0x80000000u})
    patterns.push_back(e);
  for (int i = 0; i < (1 << 22); ++i) patterns.push_back(rng().next_u32());
  auto f32 = Tensor<float, Cpu>::empty({static_cast<int64_t>(patterns.size())});
  for (std::size_t i = 0; i < patterns.size(); ++i) f32.data()[i] = adabldm::bit_cast<float>(patterns[i]);
  const auto d32 = cuda::to_device(f32);
  const auto h16 = cuda::to_host(cuda::convert<adabldm::half>(d32));
  const auto b16 = cuda::to_host(cuda::convert<adabldm::bfloat16>(d32));
  CHECK(bits_of(h16) == bits_of(f32.to<adabldm::half>()));
  CHECK(bits_of(b16) == bits_of(f32.to<adabldm::bfloat16>()));
  // Conversions between the 16-bit types go through float, like the host's.
  CHECK(bits_of(cuda::to_host(cuda::convert<adabldm::bfloat16>(cuda::to_device(all16)))) ==
        bits_of(all16.to<adabldm::bfloat16>()));
  CHECK(cuda::to_host(cuda::to_device_as<float>(all16)).to_vector() == all16.to<float>().to_vector());
}

CUDA_TEST_CASE("streams: one per thread, StreamGuard overrides, work on a user stream") {
  ADABLDM_REQUIRE_CUDA();
  cudaStream_t main_stream = cuda::current_stream();
  CHECK(main_stream != nullptr);
  CHECK(cuda::current_stream() == main_stream);
  cudaStream_t other = nullptr;
  std::thread t([&] { other = cuda::current_stream(); });
  t.join();
  CHECK(other != nullptr);
  CHECK(other != main_stream);
  cudaStream_t user = nullptr;
  ADABLDM_CUDA_CHECK(cudaStreamCreateWithFlags(&user, cudaStreamNonBlocking));
  {
    cuda::StreamGuard guard(user);
    CHECK(cuda::current_stream() == user);
    auto x = randn({100});
    CHECK(cuda::to_host(ops::scale(cuda::to_device(x), 3.0f)).to_vector() == ops::scale(x, 3.0f).to_vector());
  }
  CHECK(cuda::current_stream() == main_stream);
  ADABLDM_CUDA_CHECK(cudaStreamSynchronize(user));
  cuda::synchronize();
  cuda::empty_cache();  // blocks cached for `user` are released before the stream goes away
  ADABLDM_CUDA_CHECK(cudaStreamDestroy(user));
}

CUDA_TEST_CASE("errors name the failing call") {
  ADABLDM_REQUIRE_CUDA();
  try {
    ADABLDM_CUDA_CHECK(cudaSetDevice(100000));
    FAIL("no error");
  } catch (const CudaError& e) {
    const std::string what = e.what();
    CHECK(what.find("cudaSetDevice(100000)") != std::string::npos);
    CHECK(what.find("test_cuda_core.cu") != std::string::npos);
  }
}
