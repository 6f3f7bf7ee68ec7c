// PyTorch checkpoints: fixtures written by real PyTorch (scripts/gen_torch_fixtures.py) read back tensor for
// tensor; hostile pickles refused with a message naming the global; malformed zips and pickles rejected with a
// FormatError naming the file; random corruption never crashes (CI runs this under AddressSanitizer + UBSan).
#include <doctest/doctest.h>

#include <zlib.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/io/checkpoint.hpp"
#include "adabldm/io/pickle.hpp"
#include "adabldm/io/safetensors.hpp"
#include "adabldm/io/torch_checkpoint.hpp"
#include "adabldm/io/zip.hpp"

using namespace adabldm;
using io::CheckpointFormat;

namespace {

const std::string kDir = std::string(ADABLDM_TEST_DATA) + "/torch/";
const char* kMarker = "/tmp/adabldm_malicious_fixture_ran";  // what the malicious fixtures would create

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("adabldm_tck_" + std::to_string(::getpid()) + "_" + name))
      .string();
}
std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE(f.good());
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::remove(path.c_str());  // a new file: ext4 flushes a truncated-and-rewritten one on close (slow)
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <class T>
std::string le(T v) {
  std::string s(sizeof(T), '\0');
  for (std::size_t i = 0; i < sizeof(T); ++i) s[i] = static_cast<char>(static_cast<uint64_t>(v) >> (8 * i));
  return s;
}
template <class T>
T read_le(const std::string& s, std::size_t at) {
  uint64_t v = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(s[at + i])) << (8 * i);
  return static_cast<T>(v);
}

// ---- a small ZIP writer (stored or raw-deflated entries, optional ZIP64 fields) -----------------------------------
struct ZipIn {
  std::string name, data;
  bool deflate = false;
};

std::string raw_deflate(const std::string& in) {
  z_stream zs{};
  REQUIRE(deflateInit2(&zs, 9, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) == Z_OK);
  std::string out(deflateBound(&zs, in.size()) + 16, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  zs.avail_in = static_cast<uInt>(in.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&zs, Z_FINISH) == Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

/// With zip64, every size and offset is 0xFFFFFFFF in the headers and real in ZIP64 extra fields, and the end
/// record is a ZIP64 record + locator (what a multi-gigabyte checkpoint looks like).
std::string build_zip(const std::vector<ZipIn>& entries, bool zip64 = false) {
  std::string out, cd;
  const uint32_t ff = 0xffffffffu;
  for (const auto& e : entries) {
    const std::string body = e.deflate ? raw_deflate(e.data) : e.data;
    const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(e.data.data()),
                                                     static_cast<uInt>(e.data.size())));
    const uint16_t method = e.deflate ? 8 : 0;
    const uint64_t offset = out.size();
    out += le<uint32_t>(0x04034b50) + le<uint16_t>(45) + le<uint16_t>(0) + le<uint16_t>(method) + le<uint32_t>(0) +
           le<uint32_t>(crc) + le<uint32_t>(zip64 ? ff : body.size()) + le<uint32_t>(zip64 ? ff : e.data.size()) +
           le<uint16_t>(e.name.size()) + le<uint16_t>(zip64 ? 20 : 0) + e.name;
    if (zip64) out += le<uint16_t>(1) + le<uint16_t>(16) + le<uint64_t>(e.data.size()) + le<uint64_t>(body.size());
    out += body;
    cd += le<uint32_t>(0x02014b50) + le<uint16_t>(45) + le<uint16_t>(45) + le<uint16_t>(0) + le<uint16_t>(method) +
          le<uint32_t>(0) + le<uint32_t>(crc) + le<uint32_t>(zip64 ? ff : body.size()) +
          le<uint32_t>(zip64 ? ff : e.data.size()) + le<uint16_t>(e.name.size()) + le<uint16_t>(zip64 ? 28 : 0) +
          le<uint16_t>(0) + le<uint16_t>(0) + le<uint16_t>(0) + le<uint32_t>(0) + le<uint32_t>(zip64 ? ff : offset) +
          e.name;
    if (zip64)
      cd += le<uint16_t>(1) + le<uint16_t>(24) + le<uint64_t>(e.data.size()) + le<uint64_t>(body.size()) +
            le<uint64_t>(offset);
  }
  const uint64_t cd_offset = out.size(), n = entries.size();
  out += cd;
  if (zip64) {
    const uint64_t rec = out.size();
    out += le<uint32_t>(0x06064b50) + le<uint64_t>(44) + le<uint16_t>(45) + le<uint16_t>(45) + le<uint32_t>(0) +
           le<uint32_t>(0) + le<uint64_t>(n) + le<uint64_t>(n) + le<uint64_t>(cd.size()) + le<uint64_t>(cd_offset);
    out += le<uint32_t>(0x07064b50) + le<uint32_t>(0) + le<uint64_t>(rec) + le<uint32_t>(1);
  }
  out += le<uint32_t>(0x06054b50) + le<uint16_t>(0) + le<uint16_t>(0) + le<uint16_t>(zip64 ? 0xffff : n) +
         le<uint16_t>(zip64 ? 0xffff : n) + le<uint32_t>(zip64 ? ff : cd.size()) +
         le<uint32_t>(zip64 ? ff : cd_offset) + le<uint16_t>(0);
  return out;
}

// ---- hand-written pickles ------------------------------------------------------------------------------------------
namespace pk {
const std::string proto2 = "\x80\x02", mark = "(", tuple = "t", reduce = "R", empty_dict = "}", empty_tuple = ")",
                  setitems = "u", stop = ".", persid = "Q", newfalse = "\x89", empty_list = "]", append = "a";
std::string global(const std::string& m, const std::string& n) { return "c" + m + "\n" + n + "\n"; }
std::string stack_global(const std::string& m, const std::string& n) {
  return "\x8c" + std::string(1, static_cast<char>(m.size())) + m + "\x8c" + std::string(1, static_cast<char>(n.size())) +
         n + "\x93";
}
std::string str(const std::string& s) { return "X" + le<uint32_t>(s.size()) + s; }
std::string integer(int64_t v) { return v >= 0 && v < (int64_t{1} << 31) ? "J" + le<int32_t>(static_cast<int32_t>(v)) : "\x8a\x08" + le<int64_t>(v); }
std::string ints(const std::vector<int64_t>& v) {
  std::string s = mark;
  for (int64_t x : v) s += integer(x);
  return s + tuple;
}
/// torch._utils._rebuild_tensor_v2(storage <key> of <type>, offset, size, stride, False, OrderedDict())
std::string tensor(const std::string& key, int64_t numel, int64_t offset, const std::vector<int64_t>& size,
                   const std::vector<int64_t>& stride, const std::string& type = "FloatStorage",
                   const std::string& rebuild = "_rebuild_tensor_v2") {
  return global("torch._utils", rebuild) + mark + mark + str("storage") + global("torch", type) + str(key) +
         str("cpu") + integer(numel) + tuple + persid + integer(offset) + ints(size) + ints(stride) + newfalse +
         global("collections", "OrderedDict") + empty_tuple + reduce + tuple + reduce;
}
/// {k0: v0, k1: v1, ...} where the values are pickle fragments
std::string dict(const std::vector<std::pair<std::string, std::string>>& items) {
  std::string s = empty_dict + mark;
  for (const auto& [k, v] : items) s += str(k) + v;
  return s + setitems;
}
std::string program(const std::string& body) { return proto2 + body + stop; }
}  // namespace pk

std::string floats_bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}
/// A zip laid out like torch.save's: archive/data.pkl, archive/data/<key>, archive/version.
std::string torch_zip(const std::string& pickle, const std::map<std::string, std::string>& storages,
                      bool zip64 = false, bool deflate = false) {
  std::vector<ZipIn> e{{"archive/data.pkl", pickle, deflate}};
  for (const auto& [k, v] : storages) e.push_back({"archive/data/" + k, v, deflate});
  e.push_back({"archive/version", "3\n", false});
  return build_zip(e, zip64);
}
/// A valid state dict pickle with one tensor "w" (storage "0", 4 floats) plus the given extra entries.
std::string pickle_with(const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::pair<std::string, std::string>> items{{"w", pk::tensor("0", 4, 0, {2, 2}, {2, 1})}};
  items.insert(items.end(), extra.begin(), extra.end());
  return pk::program(pk::dict(items));
}
const std::map<std::string, std::string> kFourFloats{{"0", floats_bytes({1, 2, 3, 4})}};

io::StateDict load_bytes(const std::string& name, const std::string& bytes) {
  const std::string p = tmp_path(name);
  write_bytes(p, bytes);
  struct Remove {
    std::string p;
    ~Remove() { std::remove(p.c_str()); }
  } remove{p};
  return io::load_torch_checkpoint(p);
}
/// Expects a FormatError whose message names the file and contains `needle`.
void expect_bad(const std::string& name, const std::string& bytes, const std::string& needle) {
  const std::string p = tmp_path(name);
  write_bytes(p, bytes);
  CAPTURE(name);
  try {
    io::load_torch_checkpoint(p);
    FAIL("no error for " << name);
  } catch (const FormatError& e) {
    const std::string msg = e.what();
    CAPTURE(msg);
    CHECK(msg.find(p) != std::string::npos);
    CHECK(msg.find(needle) != std::string::npos);
  }
  std::remove(p.c_str());
}

bool same_tensor(const io::TensorRef& a, const io::TensorRef& b) {
  return a.dtype == b.dtype && a.shape == b.shape && (a.nbytes() == 0 || std::memcmp(a.data, b.data, a.nbytes()) == 0);
}

}  // namespace

TEST_CASE("fixtures written by PyTorch: every tensor and metadata entry matches what the script stored") {
  const auto facts = nlohmann::json::parse(read_bytes(kDir + "expected.json"));
  const auto expected = io::SafeTensors::open(kDir + "expected.safetensors");
  int fixtures = 0, compared = 0;
  for (const auto& item : facts["fixtures"].items()) {
    const std::string fixture = item.key();
    const auto& fact = item.value();
    if (!fact.contains("metadata")) continue;
    CAPTURE(fixture);
    const auto sd = io::load_checkpoint(kDir + fixture);
    CHECK(sd.source() == kDir + fixture);
    std::set<std::string> want;
    for (const auto& name : expected.names())
      if (name.compare(0, fixture.size() + 1, fixture + "/") == 0) want.insert(name.substr(fixture.size() + 1));
    CHECK(want.size() >= 2);
    const auto names = sd.names();
    CHECK(std::set<std::string>(names.begin(), names.end()) == want);
    for (const auto& name : want) {
      CAPTURE(name);
      REQUIRE(sd.contains(name));
      CHECK(same_tensor(sd.at(name), expected.ref(fixture + "/" + name)));
      ++compared;
    }
    CHECK(sd.metadata() == fact["metadata"].get<std::map<std::string, std::string>>());
    ++fixtures;
  }
  CHECK(fixtures == 6);
  CHECK(compared == static_cast<int>(expected.size()));
  MESSAGE(fixtures << " fixtures, " << compared << " tensors compared byte for byte");
}

TEST_CASE("contiguous tensors alias the mapped file; views and strided tensors are right") {
  const auto sd = io::load_torch_checkpoint(kDir + "plain.pt");
  const auto& base = sd.at("base");
  const auto& window = sd.at("window");  // base[5:11]: same storage, offset 5
  CHECK(window.owner == base.owner);
  CHECK(window.data == base.data + 5 * sizeof(float));
  CHECK(sd.at("matrix").owner == base.owner);  // zero-copy: the mapping owns them
  CHECK(reinterpret_cast<std::uintptr_t>(base.data) % 64 == 0);  // torch aligns records to 64 bytes
  CHECK(sd.at("matrix_t").owner != base.owner);  // non-contiguous: materialised

  const auto m = sd.get<float>("matrix"), mt = sd.get<float>("matrix_t");
  REQUIRE(mt.shape() == Shape{5, 3});
  for (int64_t i = 0; i < 3; ++i)
    for (int64_t j = 0; j < 5; ++j) CHECK(mt.at({j, i}) == m.at({i, j}));
  const auto b = sd.get<float>("base").to_vector();
  const auto w2 = sd.get<float>("window_2d").to_vector();  // base.view(4, 6)[1:3, 2:5]
  CHECK(w2 == std::vector<float>{b[8], b[9], b[10], b[14], b[15], b[16]});
  const auto every = sd.get<float>("every_other").to_vector();
  for (std::size_t i = 0; i < every.size(); ++i) CHECK(every[i] == b[2 * i]);
  CHECK(sd.get<float>("scalar").to_vector() == std::vector<float>{3.5f});
  CHECK(sd.at("empty").shape == Shape{0, 4});
  CHECK(sd.get<int64_t>("i64").to_vector() == std::vector<int64_t>{1, -2, 3, int64_t{1} << 40});
  CHECK(sd.at("bool").dtype == DType::Bool);
  // a tensor's memory outlives the StateDict that produced it
  Tensor<float> kept;
  { kept = io::load_torch_checkpoint(kDir + "plain.pt").get<float>("base"); }
  CHECK(kept.to_vector() == b);
}

TEST_CASE("format detection by content, and load_checkpoint dispatch") {
  CHECK(io::detect_checkpoint_format(kDir + "plain.pt") == CheckpointFormat::TorchZip);
  CHECK(io::detect_checkpoint_format(kDir + "lightning.ckpt") == CheckpointFormat::TorchZip);
  CHECK(io::detect_checkpoint_format(kDir + "deflated.pth") == CheckpointFormat::TorchZip);
  CHECK(io::detect_checkpoint_format(kDir + "legacy.pt") == CheckpointFormat::TorchLegacy);
  CHECK(io::detect_checkpoint_format(kDir + "expected.safetensors") == CheckpointFormat::Safetensors);
  CHECK(io::detect_checkpoint_format(kDir + "expected.json") == CheckpointFormat::Unknown);
  // the name does not matter: a safetensors file called .ckpt and a torch file called .safetensors
  const std::string a = tmp_path("really_safetensors.ckpt"), b = tmp_path("really_torch.safetensors");
  write_bytes(a, read_bytes(kDir + "expected.safetensors"));
  write_bytes(b, read_bytes(kDir + "plain.pt"));
  CHECK(io::detect_checkpoint_format(a) == CheckpointFormat::Safetensors);
  CHECK(io::load_checkpoint(a).size() == io::SafeTensors::open(kDir + "expected.safetensors").size());
  CHECK(io::load_checkpoint(b).contains("matrix_t"));
  const std::string empty = tmp_path("empty.bin");
  write_bytes(empty, "");
  CHECK(io::detect_checkpoint_format(empty) == CheckpointFormat::Unknown);
  CHECK_THROWS_WITH_AS(io::load_checkpoint(empty), doctest::Contains("not a recognised checkpoint"), FormatError);
  CHECK_THROWS_WITH_AS(io::load_checkpoint(kDir + "expected.json"), doctest::Contains("expected.json"), FormatError);
  CHECK_THROWS_WITH_AS(io::load_checkpoint(tmp_path("missing.pt")), doctest::Contains("missing.pt"), IoError);
  CHECK_THROWS_WITH_AS(io::load_checkpoint(kDir + "legacy.pt"), doctest::Contains("legacy"), FormatError);
  for (const auto& p : {a, b, empty}) std::remove(p.c_str());
}

TEST_CASE("fixtures that must be refused: malicious pickles, legacy format, TorchScript") {
  std::remove(kMarker);
  const auto facts = nlohmann::json::parse(read_bytes(kDir + "expected.json"));
  int refused = 0;
  for (const auto& item : facts["fixtures"].items()) {
    const std::string fixture = item.key();
    const auto& fact = item.value();
    if (!fact.contains("refused")) continue;
    CAPTURE(fixture);
    const std::string path = kDir + fixture;
    try {
      io::load_checkpoint(path);
      FAIL("loaded " << fixture);
    } catch (const FormatError& e) {
      const std::string msg = e.what();
      CAPTURE(msg);
      CHECK(msg.find(path) != std::string::npos);
      CHECK(msg.find(fact["refused"].get<std::string>()) != std::string::npos);
    }
    ++refused;
  }
  CHECK(refused == 5);
  CHECK_FALSE(std::filesystem::exists(kMarker));  // and nothing ran
  CHECK_THROWS_WITH_AS(io::load_torch_checkpoint(kDir + "legacy.pt"), doctest::Contains("PyTorch >= 1.6"),
                       FormatError);
}

TEST_CASE("hostile globals are refused, whatever opcode names them") {
  using namespace pk;
  const std::string call_arg = str("touch /tmp/x") + "\x85" + reduce;  // (arg,) then REDUCE
  const std::vector<std::pair<std::string, std::string>> cases = {
      {global("os", "system") + call_arg, "os.system"},
      {global("posix", "system") + call_arg, "posix.system"},
      {global("nt", "system") + call_arg, "nt.system"},
      {global("builtins", "eval") + call_arg, "builtins.eval"},
      {global("__builtin__", "exec") + call_arg, "builtins.exec"},
      {global("builtins", "__import__") + call_arg, "builtins.__import__"},
      {global("builtins", "open") + call_arg, "builtins.open"},
      {global("subprocess", "Popen") + call_arg, "subprocess.Popen"},
      {global("commands", "getoutput") + call_arg, "subprocess.getoutput"},
      {global("sys", "modules"), "sys.modules"},
      {global("importlib", "import_module") + call_arg, "importlib.import_module"},
      {global("runpy", "_run_code") + call_arg, "runpy._run_code"},
      {global("operator", "attrgetter") + call_arg, "operator.attrgetter"},
      {global("torch", "load") + call_arg, "torch.load"},
      {global("torch.serialization", "load") + call_arg, "torch.serialization.load"},
      {global("numpy.testing._private.utils", "runstring") + call_arg, "numpy.testing"},
      {stack_global("os", "system") + call_arg, "os.system"},                   // protocol 4 spelling
      {stack_global("torch", "os.system") + call_arg, "torch.os.system"},       // a module reached by attribute
      {stack_global("__main__", "f.__globals__"), "__main__.f.__globals__"},     // a dunder attribute
      {"isubprocess\nPopen\n", "subprocess.Popen"},                             // INST (protocol 0/1)
      // getattr(torch.os, "system"): Python's protocol-2 spelling of a dotted name
      {global("builtins", "getattr") + mark + global("torch", "os") + str("system") + tuple + reduce, "torch.os"},
      {global("builtins", "getattr") + mark + global("collections", "OrderedDict") + str("system") + tuple + reduce,
       "collections.OrderedDict.system"},
      {global("builtins", "getattr") + mark + empty_dict + str("__class__") + tuple + reduce, "__class__"},
  };
  std::remove(kMarker);
  for (const auto& [payload, needle] : cases) expect_bad("hostile", torch_zip(pickle_with({{"x", payload}}), kFourFloats), needle);
  CHECK_FALSE(std::filesystem::exists(kMarker));
}

TEST_CASE("unknown but harmless globals are inert placeholders and are skipped") {
  using namespace pk;
  const std::string enum_member =  // getattr(__main__.Schedule, "COSINE"): how Python >= 3.11 pickles enums
      global("builtins", "getattr") + mark + global("__main__", "Schedule") + str("COSINE") + tuple + reduce;
  const std::string instance =  // NEWOBJ of a training-script class, then BUILD with its __dict__
      global("__main__", "Callback") + empty_tuple + "\x81" + dict({{"best", integer(3)}}) + "b";
  const std::string dict_subclass =  // Lightning's AttributeDict: NEWOBJ, then SETITEMS
      global("lightning.fabric.utilities.data", "AttributeDict") + empty_tuple + "\x81" + mark + str("lr") +
      integer(1) + setitems;
  const std::string reduced = global("torch", "device") + str("cpu") + "\x85" + reduce;
  const std::string list_of_them = empty_list + mark + enum_member + instance + "e";
  const auto sd = load_bytes("inert", torch_zip(pickle_with({{"schedule", enum_member},
                                                             {"callback", instance},
                                                             {"hparams", dict_subclass},
                                                             {"device", reduced},
                                                             {"list", list_of_them},
                                                             {"dtype", global("torch", "float16")},
                                                             {"big", "\x8a\x09" + std::string(8, '\xff') + "\x7f"},
                                                             {"set", "\x8f" + mark + integer(1) + "\x90"},
                                                             {"bytes", "C\x02hi"}}),
                                                kFourFloats));
  CHECK(sd.names() == std::vector<std::string>{"w"});
  CHECK(sd.get<float>("w").to_vector() == std::vector<float>{1, 2, 3, 4});
}

TEST_CASE("state dict selection: state_dict key, flat dict, model wrapper, nested dicts") {
  using namespace pk;
  const std::string t = tensor("0", 4, 0, {4}, {1});
  auto names = [&](const std::string& body) { return load_bytes("select", torch_zip(program(body), kFourFloats)).names(); };
  CHECK(names(dict({{"state_dict", dict({{"a", t}})}, {"optimizer_states", dict({{"m", t}})}})) ==
        std::vector<std::string>{"a"});
  CHECK(names(dict({{"a", t}, {"model", dict({{"b", t}})}})) == std::vector<std::string>{"a", "model.b"});
  CHECK(names(dict({{"model", dict({{"b", t}})}, {"optimizer", dict({{"c", t}})}})) == std::vector<std::string>{"b"});
  CHECK(names(dict({{"module", dict({{"b", t}})}})) == std::vector<std::string>{"b"});
  CHECK(names(dict({{"enc", dict({{"x", dict({{"y", t}})}})}, {"dec", dict({{"z", t}})}})) ==
        std::vector<std::string>{"dec.z", "enc.x.y"});
  // tensors this reader cannot represent matter only inside the state dict
  const std::string qtensor = global("torch._utils", "_rebuild_qtensor") + mark + integer(1) + tuple + reduce;
  const std::string rank9 = tensor("0", 4, 0, {1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1});
  const std::string int16 = tensor("0", 4, 0, {4}, {1}, "ShortStorage");
  CHECK(names(dict({{"state_dict", dict({{"a", t}})},
                    {"optimizer_states", dict({{"q", qtensor}, {"r", rank9}, {"s", int16}})}})) ==
        std::vector<std::string>{"a"});
  // non-string keys (optimizer state {0: {...}}) are skipped
  CHECK(names(dict({{"a", t}, {"opt", empty_dict + integer(0) + t + "s"}})) == std::vector<std::string>{"a"});
  CHECK(names(dict({{"a", t}, {"param", global("torch._utils", "_rebuild_parameter") + mark + t + newfalse +
                                            global("collections", "OrderedDict") + empty_tuple + reduce + tuple +
                                            reduce}})) == std::vector<std::string>{"a", "param"});
  CHECK(names(dict({{"a", global("torch._tensor", "_rebuild_from_type_v2") + mark +
                              global("torch._utils", "_rebuild_tensor_v2") + global("torch.nn", "Parameter") +
                              mark + mark + str("storage") + global("torch", "FloatStorage") + str("0") + str("cpu") +
                              integer(4) + tuple + persid + integer(0) + ints({4}) + ints({1}) + newfalse +
                              empty_dict + tuple + empty_dict + tuple + reduce}})) ==
        std::vector<std::string>{"a"});
  // errors
  expect_bad("not_dict", torch_zip(program(empty_list), {}), "not a dict");
  expect_bad("dup", torch_zip(program(dict({{"a", t}, {"a", t}})), kFourFloats), "duplicate tensor name");
  std::string deep = t;
  for (int i = 0; i < 20; ++i) deep = dict({{"d", deep}});
  expect_bad("deep", torch_zip(program(deep), kFourFloats), "nested more than");
}

TEST_CASE("tensors are checked against their storage") {
  using namespace pk;
  auto bad = [&](const std::string& name, const std::string& value, const std::string& needle,
                 const std::map<std::string, std::string>& storages = kFourFloats) {
    expect_bad(name, torch_zip(program(dict({{"t", value}})), storages), needle);
  };
  bad("past_end", tensor("0", 4, 1, {4}, {1}), "reads past the end");
  bad("stride_past_end", tensor("0", 4, 0, {2, 2}, {3, 1}), "reads past the end");
  bad("numel_lie", tensor("0", 5, 0, {5}, {1}), "claims 5 elements");
  bad("missing_storage", tensor("7", 4, 0, {4}, {1}), "storage \"7\"");
  bad("rank9", tensor("0", 4, 0, {1, 1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 1, 1, 1, 1, 1}), "rank is 9");
  bad("rank_mismatch", tensor("0", 4, 0, {4}, {1, 1}), "differ in rank");
  bad("stride_rank9", tensor("0", 4, 0, {4}, {1, 1, 1, 1, 1, 1, 1, 1, 1}), "stride has 9 dimensions");
  bad("negative_size", tensor("0", 4, 0, {-1}, {1}), "negative tensor size");
  bad("huge", tensor("0", 4, 0, {int64_t{1} << 40, int64_t{1} << 40}, {0, 0}), "element count overflows");
  bad("huge_stride", tensor("0", 4, 0, {2}, {INT64_MAX}), "too large");
  bad("int16", tensor("0", 4, 0, {4}, {1}, "ShortStorage"), "ShortStorage");
  bad("quantized", global("torch._utils", "_rebuild_qtensor") + mark + integer(1) + tuple + reduce, "_rebuild_qtensor");
  bad("not_storage_type", global("torch._utils", "_rebuild_tensor_v2") + mark + mark + str("storage") +
                              global("__main__", "Fake") + str("0") + str("cpu") + integer(4) + tuple + persid + tuple + reduce,
      "not a torch storage class");
  bad("bad_pid", str("x") + persid, "persistent id");
  // an expanded (stride 0) view far larger than its storage is not materialised
  bad("expand_bomb", tensor("0", 4, 0, {int64_t{1} << 20, int64_t{1} << 10}, {0, 0}), "refusing to expand");
  // zero-element tensors need no bytes; a stride-0 view within limits is expanded
  const auto sd = load_bytes("ok", torch_zip(program(dict({{"e", tensor("0", 4, 4, {0, 3}, {3, 1})},
                                                           {"x", tensor("0", 4, 1, {2, 3}, {0, 1})}})),
                                             kFourFloats));
  CHECK(sd.at("e").shape == Shape{0, 3});
  CHECK(sd.get<float>("x").to_vector() == std::vector<float>{2, 3, 4, 2, 3, 4});
}

TEST_CASE("bounded work: shared objects are walked once, shapes overflow with a 0 too, strided copies are budgeted") {
  using namespace pk;
  const std::string put0("q\0", 2), get0("h\0", 2), pop = "0";  // BINPUT 0, BINGET 0, POP
  // A dict reached twice through the memo (a few bytes per reference, so 16 levels of 100 could mean 100^16 walks)
  const std::string inner = empty_dict + put0 + mark + str("w") + tensor("0", 4, 0, {4}, {1}) + setitems + pop;
  expect_bad("shared_dict", torch_zip(program(inner + empty_dict + mark + str("a") + get0 + str("b") + get0 + setitems), kFourFloats),
             "the same dict is both \"a.\" and \"b.\"");
  // ... and a dict that contains itself
  expect_bad("cyclic_dict", torch_zip(program(empty_dict + put0 + mark + str("me") + get0 + setitems), kFourFloats),
             "the same dict is both \"\" and \"me.\"");
  // A tensor under several names is converted once: a strided view shared 3 times is copied once
  const std::string view = tensor("0", 4, 0, {2, 2}, {1, 2}) + put0;  // a transpose
  const auto sd = load_bytes("shared_tensor", torch_zip(program(empty_dict + mark + str("x") + view + str("y") + get0 +
                                                                 str("z") + get0 + setitems), kFourFloats));
  CHECK(sd.get<float>("x").to_vector() == std::vector<float>{1, 3, 2, 4});
  CHECK(sd.at("y").data == sd.at("x").data);
  CHECK(sd.at("z").data == sd.at("x").data);
  // Element counts that overflow when a dimension is 0 (no bytes, but 2^80 elements in the other two)
  expect_bad("zero_dim_overflow", torch_zip(program(dict({{"t", tensor("0", 4, 0, {0, int64_t{1} << 40, int64_t{1} << 40}, {0, 0, 0})}})),
                                            kFourFloats),
             "tensor size [0, 1099511627776, 1099511627776]: its element count overflows 64 bits");
  // Distinct expanded views of one small storage: each within the old per-tensor cap, together beyond the file's
  // size + 256 MB (three of 96 MB)
  const std::vector<int64_t> big{int64_t{1} << 23, 3}, zero{0, 0};
  expect_bad("expand_many", torch_zip(program(dict({{"a", tensor("0", 4, 0, big, zero)}, {"b", tensor("0", 4, 0, big, zero)},
                                                    {"c", tensor("0", 4, 0, big, zero)}})), kFourFloats),
             "more than the file holds");
}

TEST_CASE("non-finite weights in a PyTorch checkpoint (f32, f16, bf16 storages) are counted and refused naming the "
          "file and the key (issue 20, item 7)") {
  // One NaN and one Inf in "model.bad" (stored as `type`), a clean "model.good" beside it; what ModelSource does with
  // a single file: io::load_checkpoint, then io::check_finite unless LoadOptions::allow_non_finite.
  auto bits16 = [](std::vector<uint16_t> v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2); };
  const std::vector<std::pair<std::string, std::string>> storages = {
      {"FloatStorage", floats_bytes({1, std::numeric_limits<float>::quiet_NaN(), 3, -std::numeric_limits<float>::infinity()})},
      {"HalfStorage", bits16({0x3c00, 0x7e00, 0x4200, 0xfc00})},     // 1, NaN, 3, -Inf
      {"BFloat16Storage", bits16({0x3f80, 0x7fc0, 0x4040, 0xff80})},  // 1, NaN, 3, -Inf
  };
  for (const auto& [type, bytes] : storages) {
    CAPTURE(type);
    const std::string p = tmp_path("nonfinite_" + type + ".pth");
    write_bytes(p, torch_zip(pk::program(pk::dict({{"model.bad", pk::tensor("0", 4, 0, {2, 2}, {2, 1}, type)},
                                                  {"model.good", pk::tensor("1", 4, 0, {4}, {1})}})),
                             {{"0", bytes}, {"1", floats_bytes({1, 2, 3, 4})}}));
    const auto sd = io::load_checkpoint(p);
    const auto c = io::count_non_finite(sd.at("model.bad"));
    CHECK(c.nan == 1);
    CHECK(c.inf == 1);
    CHECK(io::count_non_finite(sd.at("model.good")).total() == 0);
    const auto v = sd.get<float>("model.bad").to_vector();  // the reader itself keeps the values as they are
    CHECK((v[0] == 1 && std::isnan(v[1]) && v[2] == 3 && std::isinf(v[3])));
    try {
      io::check_finite(sd);
      FAIL("no error for " << p);
    } catch (const FormatError& e) {
      CHECK(std::string(e.what()) == p + ": tensor \"model.bad\" has 1 NaN and 1 Inf values; refusing to load it "
                                         "(--allow-non-finite skips this check)");
    }
    std::remove(p.c_str());
  }
}

TEST_CASE("messages are one line: names from the file with control characters are escaped (fuzzing, issue 20)") {
  CHECK(std::string(FormatError("a\nb\x01").what()) == "a\\nb\\x01");
  expect_bad("ctl", torch_zip(pk::program(pk::dict({{"t", pk::tensor("a\nb", 4, 0, {4}, {1})}})), kFourFloats),
             "storage \"a\\nb\"");
}

TEST_CASE("malformed pickles are FormatErrors naming the file") {
  using namespace pk;
  auto bad = [&](const std::string& name, const std::string& pickle, const std::string& needle) {
    expect_bad(name, torch_zip(pickle, kFourFloats), needle);
  };
  bad("empty", "", "truncated");
  bad("no_stop", proto2 + empty_dict, "truncated");
  bad("protocol6", "\x80\x06" + empty_dict + stop, "protocol 6");
  bad("unknown_op", proto2 + "\xff" + stop, "unknown opcode 0xff");
  bad("underflow", proto2 + reduce + stop, "stack underflow");
  bad("underflow_past_mark", proto2 + empty_dict + mark + "0" + stop, "stack underflow");
  bad("no_mark", proto2 + tuple + stop, "no MARK");
  bad("memo", proto2 + "h\x05" + stop, "memo entry 5");
  bad("long_string", proto2 + "X" + le<uint32_t>(1000) + "ab" + stop, "exceeds");
  bad("string_op", proto2 + "S'abc'\n" + stop, "STRING");
  bad("ext", proto2 + "\x82\x01" + stop, "EXT");
  bad("setitem_on_list", proto2 + empty_list + str("k") + str("v") + "s" + stop, "SETITEM on a non-dict");
  bad("append_on_dict", proto2 + empty_dict + str("v") + append + stop, "APPEND to a non-list");
  bad("odd_setitems", proto2 + empty_dict + mark + str("k") + setitems + stop, "odd number");
  bad("reduce_args", proto2 + global("__main__", "X") + str("not a tuple") + reduce + stop, "not a tuple");
  bad("stack_global_types", proto2 + integer(1) + integer(2) + "\x93" + stop, "two strings");
  bad("unterminated_global", proto2 + "cos", "unterminated");
  bad("rebuild_nesting", [] {  // _rebuild_from_type_v2(f, type, (f, type, (f, ...), {}), {}) 40 levels deep
    const std::string f = global("torch._tensor", "_rebuild_from_type_v2");
    std::string s = proto2 + empty_tuple + "q\x01";
    for (int i = 0; i < 40; ++i) s += mark + f + global("torch", "Tensor") + "h\x01" + empty_dict + tuple + "q\x01" + "0";
    return s + f + "h\x01" + reduce + stop;
  }(), "nested too deeply");
  // a list that contains itself: fine for the unpickler (no reference counting), and no leak under ASan
  const auto sd = load_bytes("cycle", torch_zip(pickle_with({{"loop", empty_list + "q\x01" + "h\x01" + append}}),
                                                kFourFloats));
  CHECK(sd.size() == 1);
}

TEST_CASE("ZIP64 records and extra fields, DEFLATE entries") {
  const std::string pickle = pickle_with({});
  for (bool zip64 : {false, true})
    for (bool deflate : {false, true}) {
      CAPTURE(zip64);
      CAPTURE(deflate);
      const auto sd = load_bytes("zip64", torch_zip(pickle, kFourFloats, zip64, deflate));
      CHECK(sd.get<float>("w").to_vector() == std::vector<float>{1, 2, 3, 4});
    }
  // the archive itself, entry by entry
  const std::string p = tmp_path("entries.zip");
  write_bytes(p, build_zip({{"a", "hello", false}, {"b", std::string(5000, 'z'), true}, {"c", "", true}}, true));
  auto zip = io::ZipArchive::open(p);
  REQUIRE(zip.entries().size() == 3);
  CHECK(zip.find("b")->method == io::ZipArchive::kDeflated);
  CHECK(zip.find("b")->compressed_size < 100);
  const auto a = zip.read(*zip.find("a"), true), b = zip.read(*zip.find("b")), c = zip.read(*zip.find("c"));
  CHECK(std::string(reinterpret_cast<const char*>(a.data), a.size) == "hello");
  CHECK(a.owner == zip.file());  // stored: zero-copy
  CHECK(std::string(reinterpret_cast<const char*>(b.data), b.size) == std::string(5000, 'z'));
  CHECK(c.size == 0);
  CHECK(zip.find("missing") == nullptr);
  std::remove(p.c_str());
}

TEST_CASE("malformed zip archives are FormatErrors naming the file") {
  const std::string good = read_bytes(kDir + "plain.pt");
  const std::size_t cd = good.find("PK\x01\x02");  // first central directory record
  const std::size_t eocd = good.rfind("PK\x05\x06");
  const std::size_t loc = good.rfind("PK\x06\x07");
  REQUIRE(cd != std::string::npos);
  REQUIRE(eocd != std::string::npos);
  REQUIRE(loc != std::string::npos);
  auto patched = [&](std::size_t at, const std::string& bytes) {
    std::string s = good;
    s.replace(at, bytes.size(), bytes);
    return s;
  };
  expect_bad("truncated_tiny", good.substr(0, 10), "truncated or not a zip");
  expect_bad("truncated_half", good.substr(0, good.size() / 2), "end of central directory record not found");
  expect_bad("truncated_end", good.substr(0, good.size() - 1), "not found");
  expect_bad("cd_signature", patched(cd, "PK\x01\x09"), "corrupted central directory");
  expect_bad("cd_method", patched(cd + 10, le<uint16_t>(12)), "compression method 12");
  expect_bad("cd_encrypted", patched(cd + 8, le<uint16_t>(1)), "encrypted");
  expect_bad("cd_sizes", patched(cd + 20, le<uint32_t>(1)), "sizes differ");
  expect_bad("cd_offset", patched(cd + 42, le<uint32_t>(0x7fffffff)), "out of range");
  expect_bad("cd_name_len", patched(cd + 28, le<uint16_t>(0xffff)), "overruns");
  expect_bad("local_signature", patched(0, "PK\x03\x09"), "local header signature");
  expect_bad("local_name", patched(30, "y"), "name differs");
  expect_bad("zip64_record_offset", patched(loc + 8, le<uint64_t>(uint64_t{1} << 40)), "ZIP64 end record offset");
  const uint64_t rec = read_le<uint64_t>(good, loc + 8);
  expect_bad("zip64_count", patched(static_cast<std::size_t>(rec) + 32, le<uint64_t>(1000000)), "cannot fit");
  expect_bad("zip64_cd_offset", patched(static_cast<std::size_t>(rec) + 48, le<uint64_t>(uint64_t{1} << 50)), "out of range");
  expect_bad("multi_disk", patched(eocd + 4, le<uint16_t>(1)), "multi-disk");
  // a flipped byte inside data.pkl (stored) fails its CRC-32 check
  const std::size_t pkl_data = good.find("\x80\x02");
  expect_bad("pickle_crc", patched(pkl_data + 1, "\x03"), "CRC-32");
  expect_bad("no_data_pkl", build_zip({{"archive/other.pkl", "x"}}), "without data.pkl");
  expect_bad("two_pickles", build_zip({{"a/data.pkl", "x"}, {"b/data.pkl", "x"}}), "two pickles");
  expect_bad("duplicate_entry", build_zip({{"archive/data.pkl", "x"}, {"archive/data.pkl", "x"}}), "appears twice");
  expect_bad("big_endian", build_zip({{"archive/data.pkl", "x"}, {"archive/byteorder", "big"}}), "byte order");
  std::string bomb = build_zip({{"archive/data.pkl", std::string(100000, 'a'), true}});
  const std::size_t bomb_cd = bomb.find("PK\x01\x02");
  expect_bad("inflate_lie", bomb.replace(bomb_cd + 24, 4, le<uint32_t>(0x7fffffff)), "impossible for DEFLATE");
  std::string short_inflate = build_zip({{"archive/data.pkl", std::string(1000, 'a'), true}});
  const std::size_t si_cd = short_inflate.find("PK\x01\x02");
  expect_bad("inflate_size", short_inflate.replace(si_cd + 24, 4, le<uint32_t>(999)), "inflates to 1000");
  std::string corrupt = build_zip({{"archive/data.pkl", std::string(1000, 'a'), true}});
  corrupt[35] = static_cast<char>(corrupt[35] ^ 0x5a);
  expect_bad("inflate_corrupt", corrupt, "archive/data.pkl");
  expect_bad("not_zip", "PK\x03\x04 but nothing else of a zip", "not found");
}

TEST_CASE("random corruption of real checkpoints never crashes") {
  std::mt19937_64 rng(20240611);
  auto pick = [&](std::size_t n) { return static_cast<std::size_t>(rng() % n); };
  auto exercise = [&](const std::string& path) {  // every accepted tensor must be readable in bounds
    const auto sd = io::load_torch_checkpoint(path);
    double sum = 0;
    for (const auto& name : sd.names())
      for (float v : sd.get<float>(name).to_vector()) sum += static_cast<double>(v);
    return sum;
  };
  int trials = 0, rejected = 0;
  const std::string p = tmp_path("fuzz.pt");

  // 1. byte flips and truncations anywhere in the file (zip structure, local headers, tensor data)
  for (const char* fixture : {"plain.pt", "lightning.ckpt", "deflated.pth"}) {
    const std::string good = read_bytes(kDir + fixture);
    for (int trial = 0; trial < 300; ++trial, ++trials) {
      std::string bad = good;
      if (trial % 3 == 0) bad.resize(pick(good.size()));
      else
        for (int f = 0; f < 1 + trial % 5; ++f) {  // half of the flips hit the central directory and end records
          const std::size_t at = f % 2 ? bad.size() - 1 - pick(std::min<std::size_t>(bad.size(), 600)) : pick(bad.size());
          bad[at] = static_cast<char>(bad[at] ^ static_cast<char>(1 + pick(255)));
        }
      write_bytes(p, bad);
      try {
        (void)exercise(p);
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  // 2. mutations of data.pkl inside a valid zip (fixed CRC), so that they reach the unpickler
  for (const char* fixture : {"plain.pt", "lightning.ckpt", "module_state_dict.pt", "wrapped_proto5.pth"}) {
    auto zip = io::ZipArchive::open(kDir + fixture);
    std::vector<ZipIn> entries;
    std::size_t pkl_index = 0;
    for (const auto& e : zip.entries()) {
      const auto b = zip.read(e);
      if (e.name.size() > 9 && e.name.compare(e.name.size() - 9, 9, "/data.pkl") == 0) pkl_index = entries.size();
      entries.push_back({e.name, std::string(reinterpret_cast<const char*>(b.data), b.size), false});
    }
    const std::string pickle = entries[pkl_index].data;
    for (int trial = 0; trial < 600; ++trial, ++trials) {
      std::string bad = pickle;
      switch (trial % 4) {
        case 0: bad.resize(pick(pickle.size())); break;
        case 1: bad.erase(pick(bad.size()), 1 + pick(8)); break;
        case 2: bad.insert(pick(bad.size()), 1, static_cast<char>(pick(256))); break;
        default:
          for (int f = 0; f < 1 + trial % 3; ++f) bad[pick(bad.size())] = static_cast<char>(pick(256));
      }
      entries[pkl_index].data = bad;
      write_bytes(p, build_zip(entries));
      try {
        (void)exercise(p);
      } catch (const Error&) {
        ++rejected;
      }
    }
  }
  std::remove(p.c_str());
  CHECK(trials == 3300);
  CHECK(rejected > 1500);
  MESSAGE(trials << " corrupted files, " << rejected << " rejected with an adabldm::Error, none crashed");
}
