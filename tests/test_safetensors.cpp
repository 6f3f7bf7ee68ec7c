// safetensors: round trip, dtype conversion, zero-copy, and every kind of malformed file -> a FormatError that
// names the file and the problem (run under AddressSanitizer + UBSan in CI: no out-of-bounds read either).
#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "adabldm/core/rng.hpp"
#include "adabldm/io/safetensors.hpp"

using namespace adabldm;
using io::SafeTensors;

namespace {
std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("adabldm_test_" + std::to_string(::getpid()) + "_" + name)).string();
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}
std::string le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>(n >> (8 * i));
  return s;
}
/// A file with the given JSON header and `data_bytes` bytes of data.
std::string make_file(const std::string& header, std::size_t data_bytes) {
  return le64(header.size()) + header + std::string(data_bytes, '\x01');
}
/// Expects open() to throw a FormatError whose message contains both the path and `needle`.
void expect_bad(const std::string& name, const std::string& bytes, const std::string& needle) {
  const std::string p = tmp_path(name);
  write_bytes(p, bytes);
  CAPTURE(name);
  try {
    SafeTensors::open(p);
    FAIL("no error for " << name);
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find(needle) != std::string::npos);
  }
  std::remove(p.c_str());
}
}  // namespace

TEST_CASE("write then read back: every dtype, metadata, names in file order") {
  Rng rng(1);
  auto f32 = rng.normal({2, 3, 5});
  auto f16 = f32.to<half>();
  auto bf = f32.to<bfloat16>();
  auto f64 = f32.to<double>();
  auto i64 = Tensor<int64_t>::from_vector({1, -2, 3, 999}, {4});
  auto i32 = Tensor<int32_t>::from_vector({7, 8}, {2});
  auto empty = Tensor<float>::empty({0, 3});
  const std::string p = tmp_path("roundtrip.safetensors");
  io::SafeTensorsWriter()
      .add("a.f32", f32)
      .add("b.f16", f16)
      .add("c.bf16", bf)
      .add("d.f64", f64)
      .add("e.i64", i64)
      .add("f.i32", i32)
      .add("g.empty", empty)
      .metadata("format", "pt")
      .write(p);
  auto st = SafeTensors::open(p);
  CHECK(st.size() == 7);
  CHECK(st.metadata().at("format") == "pt");
  CHECK(st.names().front() == "a.f32");
  CHECK(st.info("b.f16").dtype == DType::F16);
  CHECK(st.info("a.f32").shape == Shape{2, 3, 5});
  CHECK(st.get<float>("a.f32").to_vector() == f32.to_vector());
  CHECK(st.get<float>("b.f16").to_vector() == f16.to<float>().to_vector());  // exact f16 -> f32
  CHECK(st.get<float>("c.bf16").to_vector() == bf.to<float>().to_vector());
  CHECK(st.get<double>("d.f64").to_vector() == f64.to_vector());
  CHECK(st.get<int64_t>("e.i64").to_vector() == std::vector<int64_t>{1, -2, 3, 999});
  CHECK(st.get<float>("e.i64").to_vector() == std::vector<float>{1, -2, 3, 999});
  CHECK(st.get<int32_t>("f.i32").to_vector() == std::vector<int32_t>{7, 8});
  CHECK(st.get<float>("g.empty").numel() == 0);
  CHECK(st.get<half>("b.f16").to<float>().to_vector() == f16.to<float>().to_vector());
  CHECK_THROWS_WITH_AS(st.get<float>("nope"), doctest::Contains("no tensor named \"nope\""), Error);

  // f32 data is not copied: the tensor points into the mapping and keeps it alive after `st` is gone.
  Tensor<float> alias;
  {
    auto st2 = SafeTensors::open(p);
    alias = st2.get<float>("a.f32");
    CHECK(reinterpret_cast<const std::byte*>(alias.data()) == st2.raw("a.f32"));
  }
  CHECK(alias.to_vector() == f32.to_vector());
  alias.data()[0] = 12345.0f;  // copy-on-write: the file is unchanged
  CHECK(SafeTensors::open(p).get<float>("a.f32").at({0, 0, 0}) == f32.at({0, 0, 0}));
  std::remove(p.c_str());
}

TEST_CASE("writer rejects duplicate names and leaves no partial file on failure") {
  auto t = Tensor<float>::zeros({2});
  io::SafeTensorsWriter w;
  w.add("x", t);
  CHECK_THROWS_AS(w.add("x", t), Error);
  CHECK_THROWS_AS(w.add("__metadata__", t), Error);
  CHECK_THROWS_AS(w.write("/nonexistent-dir/out.safetensors"), IoError);
}

TEST_CASE("malformed files are rejected with a clear error") {
  const std::string ok_entry = R"("w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  // sanity: the well-formed version of the synthetic file opens
  {
    const std::string p = tmp_path("good.safetensors");
    write_bytes(p, make_file("{" + ok_entry + "}", 8));
    CHECK(SafeTensors::open(p).size() == 1);
    std::remove(p.c_str());
  }
  expect_bad("empty", "", "empty file");
  expect_bad("short", std::string("\x10\x00\x00", 3), "truncated");
  expect_bad("header_too_long", le64(1000) + "{}", "exceeds the file size");
  expect_bad("header_huge", le64(~0ull) + "{}", "exceeds the file size");
  expect_bad("truncated_data", make_file("{" + ok_entry + "}", 4), "out of range");
  expect_bad("invalid_json", make_file("{\"w\": {\"dtype\": ", 8), "invalid JSON");
  expect_bad("not_object", make_file("[1, 2, 3]", 0), "does not begin with '{'");
  expect_bad("entry_not_object", make_file(R"({"w": 3})", 0), "not an object");
  expect_bad("missing_dtype", make_file(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8), "missing \"dtype\"");
  expect_bad("unknown_dtype", make_file(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
             "unsupported dtype \"F8_E4M3\"");
  expect_bad("size_mismatch", make_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
             "needs 3 x 4 bytes");
  expect_bad("negative_dim", make_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
             "shape entries must be integers in [0, 2^63)");
  expect_bad("shape_overflow",
             make_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
             "element count overflows");
  expect_bad("offset_out_of_range", make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
             "out of range");
  expect_bad("offsets_reversed", make_file(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8),
             "begin 8 > end 0");
  expect_bad("offsets_not_pair", make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
             "two non-negative integers");
  expect_bad("overlap",
             make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                       12),
             "overlap");
  expect_bad("duplicate",
             make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                       16),
             "duplicate tensor name \"a\"");
  expect_bad("bad_metadata", make_file(R"({"__metadata__":{"k":1}})", 0), "not a string");
  expect_bad("rank_too_big", make_file(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}})", 4),
             "rank 9");
  // a missing file is an IoError naming it
  CHECK_THROWS_WITH_AS(SafeTensors::open(tmp_path("does_not_exist")), doctest::Contains("does_not_exist"), IoError);
}

TEST_CASE("every rule of the format (issue 20): each a one-line error naming the file and the tensor") {
  const auto f32 = [](const char* name, int n, int b) {
    return "\"" + std::string(name) + "\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(n) +
           "],\"data_offsets\":[" + std::to_string(b) + "," + std::to_string(b + 4 * n) + "]}";
  };
  // the header may be padded with trailing spaces; it must begin with '{'
  {
    const std::string p = tmp_path("padded.safetensors");
    write_bytes(p, make_file("{" + f32("w", 2, 0) + "}      ", 8));
    CHECK(SafeTensors::open(p).size() == 1);
    std::remove(p.c_str());
  }
  expect_bad("leading_space", make_file(" {" + f32("w", 2, 0) + "}", 8), "does not begin with '{'");
  // header length within the file and at most 100 MB (a sparse file of 100 MB + 16 bytes)
  {
    const std::string p = tmp_path("huge_header.safetensors");
    write_bytes(p, le64((100u << 20) + 1) + "{}");
    std::filesystem::resize_file(p, (100u << 20) + 16);
    CHECK_THROWS_WITH_AS(SafeTensors::open(p), doctest::Contains("exceeds the 100 MB limit"), FormatError);
    std::remove(p.c_str());
  }
  // no holes: before the first tensor, between two, after the last (the reference reader's rules too)
  expect_bad("hole_first", make_file("{" + f32("a", 2, 4) + "}", 12), "tensor \"a\" begins at byte 4 of the data section, not at 0");
  expect_bad("hole_between", make_file("{" + f32("a", 2, 0) + "," + f32("b", 1, 12) + "}", 16),
             "tensor \"b\" begins at byte 12 of the data section, but \"a\" ends at 8: a hole of 4 bytes");
  expect_bad("trailing_bytes", make_file("{" + f32("a", 2, 0) + "}", 9), "1 bytes after the end of the last tensor (\"a\")");
  expect_bad("no_tensors_but_data", make_file("{}", 4), "4 bytes after the end of the last tensor (the header lists none)");
  // in any header order
  {
    const std::string p = tmp_path("order.safetensors");
    write_bytes(p, make_file("{" + f32("b", 1, 8) + "," + f32("a", 2, 0) + "}", 12));
    CHECK(SafeTensors::open(p).names() == std::vector<std::string>{"a", "b"});
    std::remove(p.c_str());
  }
  // an empty tensor inside another one overlaps it; at a boundary it is fine
  expect_bad("empty_inside", make_file("{" + f32("a", 2, 0) + "," + f32("e", 0, 4) + "}", 8), "overlap");
  {
    const std::string p = tmp_path("empty_ok.safetensors");
    write_bytes(p, make_file("{" + f32("a", 2, 0) + "," + f32("e", 0, 8) + "," + f32("b", 1, 8) + "}", 12));
    CHECK(SafeTensors::open(p).size() == 3);
    std::remove(p.c_str());
  }
  // element counts: an overflow also when a dimension is 0 (no bytes, but the strides would overflow)
  expect_bad("zero_dim_overflow",
             make_file(R"({"w":{"dtype":"F32","shape":[0,4294967296,4294967296],"data_offsets":[0,0]}})", 0),
             "tensor \"w\": shape [0, 4294967296, 4294967296]: its element count overflows 64 bits");
  expect_bad("bytes_overflow",  // elements fit in 64 bits, bytes do not
             make_file(R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,8]}})", 8),
             "tensor \"w\": shape [4611686018427387904] of F64 needs");
  expect_bad("float_dim", make_file(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
             "tensor \"w\": shape entries must be integers");
  expect_bad("dtype_not_string", make_file(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,8]}})", 8),
             "tensor \"w\": dtype is not a string");
  expect_bad("offsets_strings", make_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":["0","8"]}})", 8),
             "tensor \"w\": data_offsets must be two non-negative integers");
  expect_bad("duplicate_metadata", make_file(R"({"__metadata__":{},"__metadata__":{}})", 0), "duplicate");
}

TEST_CASE("random corruption of a valid file never crashes") {
  Rng rng(3);
  const std::string p = tmp_path("fuzz.safetensors");
  io::SafeTensorsWriter().add("x", rng.normal({4, 4})).add("y", rng.normal({3})).metadata("k", "v").write(p);
  std::ifstream in(p, std::ios::binary);
  const std::string good((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int rejected = 0, accepted = 0;
  for (int trial = 0; trial < 400; ++trial) {
    std::string bad = good;
    const int kind = trial % 3;
    if (kind == 0) bad.resize(static_cast<std::size_t>(rng.uniform_int(0, static_cast<int64_t>(good.size()) - 1)));
    else
      for (int f = 0; f < 1 + trial % 4; ++f)  // flip bytes inside the header region
        bad[static_cast<std::size_t>(rng.uniform_int(0, std::min<int64_t>(200, bad.size() - 1)))] ^=
            static_cast<char>(1 + rng.uniform_int(0, 254));
    write_bytes(p, bad);
    try {
      auto st = SafeTensors::open(p);
      for (const auto& n : st.names()) (void)st.get<float>(n).to_vector();  // reads must stay in bounds
      ++accepted;
    } catch (const Error&) {
      ++rejected;
    }
  }
  CHECK(rejected > 200);
  CHECK(rejected + accepted == 400);
  std::remove(p.c_str());
}
