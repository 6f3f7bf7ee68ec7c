#pragma once
// A restricted unpickler for the `data.pkl` record of PyTorch checkpoints (pickle protocols 2-5). It never imports
// or calls Python code: it interprets the pickle opcodes into an inert object graph and understands only the
// few globals that rebuild tensors.
//
// Policy for the globals a pickle names (GLOBAL, STACK_GLOBAL, INST, or getattr on a global), decided when the
// global is named, after mapping Python 2 module names to Python 3 ones (__builtin__ -> builtins, ...):
//   1. Understood (the reader's own code acts on them):
//        torch._utils._rebuild_tensor_v2 / _rebuild_tensor / _rebuild_parameter / _rebuild_parameter_with_state,
//        torch._tensor._rebuild_from_type_v2            -> a tensor (a checked view of a storage)
//        torch.{Float,Half,BFloat16,Double,Long,Int,Byte,Bool,...}Storage, torch.UntypedStorage
//                                                       -> storage types inside persistent ids
//        collections.OrderedDict                        -> a dict (what nn.Module.state_dict() returns)
//        builtins.getattr                               -> getattr(G, "x") on a global G is the global G.x,
//                                                          classified again by these rules (Python >= 3.11
//                                                          pickles enum members this way); on anything else
//                                                          an inert placeholder, unless "x" is refused below
//   2. Refused: a FormatError naming the global, before anything else happens, for globals that would run code
//      or reach the interpreter if a real unpickler called them: the modules os, posix, nt, subprocess, sys,
//      shutil, socket, importlib, runpy, ctypes, pickle, marshal, operator, types, inspect, io, pathlib, ... (see
//      refused_module()), every builtins name except getattr and the plain data types (dict, list, tuple, set,
//      frozenset, int, float, complex, bool, str, bytes, bytearray, object, slice, range), torch's loaders
//      (torch.load, torch.serialization, torch.hub, torch.jit, torch.package, torch._inductor, torch.ops, ...),
//      numpy's loaders, and any qualified name with a part that is a dunder (x.__globals__), a module reached by
//      attribute (torch.os) or an evaluating builtin (system, popen, eval, exec, compile, getattr, ...).
//      Such a pickle is not a plain checkpoint; refusing it tells the user so instead of silently loading it.
//   3. Everything else (Lightning callbacks, omegaconf configs, argparse.Namespace, numpy scalars, torch.device,
//      torch dtypes, classes defined in a training script, ...): an inert placeholder. REDUCE, NEWOBJ, BUILD,
//      SETITEM(S) and APPEND(S) on a placeholder only record their arguments; nothing is ever executed. Such
//      values are skipped when tensors are extracted. torch._utils._rebuild_* functions that build tensors this
//      reader cannot represent (quantized, sparse, meta, ...) and tensors of rank > 8 become UnsupportedTensor
//      values: an error only if the state dict holds one.
// Safety does not depend on the refusal list (nothing is ever called); the list only reports hostile files.
//
// Persistent ids (BINPERSID) must be torch's ('storage', <storage type>, key, location, numel); the storage's
// bytes come from a callback (the zip entry <archive>/data/<key>). Tensors are validated against their storage
// when rebuilt: sizes, strides and offset must address only bytes the storage has.
//
// Supported opcodes: every opcode of protocols 2-5 that CPython's pickler emits, plus the protocol 0/1 ones that
// need no text decoding (MARK, STOP, POP, POP_MARK, DUP, INT, LONG, FLOAT, NONE, PERSID, REDUCE, APPEND, BUILD,
// GLOBAL, DICT, GET, INST, LIST, PUT, SETITEM, TUPLE, OBJ, BINSTRING, SHORT_BINSTRING). Not supported
// (FormatError): the quoted-string opcodes STRING and UNICODE, the extension registry (EXT1/2/4) and out-of-band
// buffers (NEXT_BUFFER). Limits: 4M objects per pickle, 32 nested rebuild calls.
#include <algorithm>
#include <charconv>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "adabldm/core/dtype.hpp"
#include "adabldm/core/error.hpp"
#include "adabldm/core/shape.hpp"

namespace adabldm::io {

enum class PyKind : uint8_t {
  None, Bool, Int, Float, Str, Bytes, Tuple, List, Dict, Set, FrozenSet,
  Global,   ///< a named global (module + name); see GlobalRole
  Object,   ///< an inert placeholder made by calling or instantiating something not understood
  Storage,  ///< a torch storage from a persistent id
  Tensor,   ///< a rebuilt torch tensor (a view of a storage)
  Opaque,   ///< a value this reader does not represent (e.g. an int wider than 64 bits); `text` says what
  UnsupportedTensor,  ///< a tensor this reader cannot represent (quantized, sparse, rank > 8); `text` says why
};

/// What the reader does with a global (see the policy in the header comment).
enum class GlobalRole : uint8_t {
  Inert, OrderedDict, RebuildTensorV2, RebuildTensor, RebuildParameter, RebuildFromTypeV2, UnsupportedTensor, Storage,
  GetAttr  ///< builtins.getattr: Python >= 3.11 pickles enum members as getattr(EnumClass, "NAME")
};

/// Bytes kept alive by `owner`.
struct SharedBytes {
  std::shared_ptr<void> owner;
  const std::byte* data = nullptr;
  std::size_t size = 0;
};

/// A storage named by a persistent id: its element type and its bytes.
struct PyStorage {
  std::string key;
  std::string type_name;   ///< "FloatStorage", ...
  bool supported = false;  ///< whether `dtype` is meaningful (an element type adabldm reads)
  DType dtype = DType::U8;
  int64_t numel = 0;       ///< elements of dtype (checked against bytes.size when supported)
  SharedBytes bytes;
};

/// A tensor view of a storage, validated to stay inside it.
struct PyTensor {
  const PyStorage* storage = nullptr;
  int64_t offset = 0;  ///< in elements
  Shape shape, stride;
};

struct PyObject {
  PyKind kind = PyKind::None;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                                    ///< Str, Bytes; Global: "module.name"; Opaque: description
  std::size_t module_length = 0;                       ///< Global: text[0, module_length) is the module
  std::vector<PyObject*> elems;                        ///< Tuple, List, Set, FrozenSet; Object: appended items
  std::vector<std::pair<PyObject*, PyObject*>> items;  ///< Dict; Object: items set by SETITEM(S)
  PyObject* callee = nullptr;                          ///< Object: the global (or value) it was made from
  PyObject* args = nullptr;                            ///< Object: constructor arguments
  PyObject* state = nullptr;                           ///< Object, Dict: the BUILD state (attributes)
  GlobalRole role = GlobalRole::Inert;                 ///< Global
  const PyStorage* storage = nullptr;                  ///< Storage
  const PyTensor* tensor = nullptr;                    ///< Tensor

  bool is_str() const noexcept { return kind == PyKind::Str; }
  bool is_dict() const noexcept { return kind == PyKind::Dict; }
  /// Dict lookup by string key (the first match), or nullptr.
  const PyObject* find(std::string_view key) const {
    for (const auto& [k, v] : items)
      if (k->kind == PyKind::Str && k->text == key) return v;
    return nullptr;
  }
};

/// Modules (and their submodules) whose globals could execute code or reach the interpreter. A name part equal
/// to one of the first group (torch.os, numpy.sys, ...) is refused too: that is the module reached by attribute.
inline bool refused_module(std::string_view root, bool as_attribute = false) {
  static const std::set<std::string, std::less<>> aliases = {
      "os", "posix", "nt", "subprocess", "sys", "builtins", "__builtin__", "importlib", "runpy", "shutil",
      "socket", "ctypes", "pickle", "marshal"};
  static const std::set<std::string, std::less<>> modules = {
      "posixpath", "ntpath", "genericpath", "_posixsubprocess", "commands", "popen2", "_socket", "ssl", "pty",
      "tty", "imp", "zipimport", "pkgutil", "site", "_ctypes", "cffi", "code", "codeop", "compileall",
      "py_compile", "_pickle", "cPickle", "pickletools", "shelve", "dill", "cloudpickle", "joblib",
      "multiprocessing", "concurrent", "threading", "_thread", "thread", "signal", "webbrowser", "asyncio", "pdb",
      "bdb", "pydoc", "timeit", "trace", "platform", "operator", "_operator", "types", "inspect", "gc", "io",
      "_io", "pathlib", "tempfile", "glob", "fileinput", "urllib", "urllib2", "urllib3", "http", "httplib",
      "requests", "aiohttp", "ftplib", "smtplib", "telnetlib", "xmlrpc", "venv", "ensurepip", "pip",
      "setuptools", "distutils", "sysconfig", "IPython"};
  return aliases.count(root) != 0 || (!as_attribute && modules.count(root) != 0);
}

/// builtins names that only construct plain data. getattr is understood (and checked, see Unpickler::call);
/// every other builtins name is refused.
inline bool harmless_builtin(std::string_view name) {
  static const std::set<std::string, std::less<>> s = {"dict", "list", "tuple", "set", "frozenset", "int",
                                                       "float", "complex", "bool", "str", "bytes", "bytearray",
                                                       "object", "slice", "range"};
  return s.count(name) != 0;
}

/// Attribute names that reach code or the interpreter: dunders (x.__globals__, y.__subclasses__), modules
/// imported by another module (torch.os), and the builtins that evaluate or look up code.
inline bool refused_attribute(std::string_view p) {
  if (p.empty() || (p.size() >= 4 && p.substr(0, 2) == "__" && p.substr(p.size() - 2) == "__")) return true;
  if (refused_module(p, true)) return true;
  for (const char* fn : {"system", "popen", "eval", "exec", "compile", "getattr", "setattr", "delattr", "globals",
                         "locals", "vars", "breakpoint"})
    if (p == fn) return true;
  return false;
}

/// Python 2 module names as Python 3's unpickler maps them (pickle protocol 2 writes the Python 2 names).
inline std::string python3_module(std::string_view module) {
  static const std::pair<const char*, const char*> renames[] = {
      {"__builtin__", "builtins"}, {"copy_reg", "copyreg"}, {"commands", "subprocess"}, {"cPickle", "pickle"},
      {"exceptions", "builtins"},  {"thread", "_thread"},   {"urllib2", "urllib.request"}, {"httplib", "http.client"},
      {"UserDict", "collections"}, {"cStringIO", "io"},     {"StringIO", "io"}};
  for (const auto& [from, to] : renames)
    if (module == from) return to;
  return std::string(module);
}

/// A global after classification: its Python 3 name "module.qualname" and what the reader does with it.
struct GlobalClass {
  bool refused = false;
  GlobalRole role = GlobalRole::Inert;
};

/// The policy of the header comment for `module`.`name` (name may be a dotted qualified name).
inline GlobalClass classify_global(const std::string& module, const std::string& name) {
  GlobalClass c;
  const std::string full = module + "." + name;
  auto starts = [&](std::string_view prefix) {
    return full.compare(0, prefix.size(), prefix) == 0 && (full.size() == prefix.size() || full[prefix.size()] == '.');
  };
  std::vector<std::string_view> parts;  // every dotted part of module and name
  for (std::size_t b = 0, e;; b = e + 1) {
    e = full.find('.', b);
    parts.push_back(std::string_view(full).substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
  }
  c.refused = true;
  if (module.empty() || name.empty() || refused_module(parts.front())) {
    if (module == "builtins") c.refused = !harmless_builtin(name) && name != "getattr";
    if (!c.refused && name == "getattr") c.role = GlobalRole::GetAttr;
    return c;
  }
  for (std::size_t i = 1; i < parts.size(); ++i)  // the module "__main__" is fine; a dunder attribute is not
    if (refused_attribute(parts[i])) return c;
  for (const char* prefix : {"torch.load", "torch.serialization", "torch.hub", "torch.jit", "torch.package",
                             "torch._inductor", "torch._dynamo", "torch.ops", "torch._ops", "torch.utils.cpp_extension",
                             "torch.storage._load_from_bytes", "torch._C", "numpy.load", "numpy.lib.npyio",
                             "numpy.testing", "numpy.ctypeslib", "numpy.f2py", "numpy.distutils"})
    if (starts(prefix)) return c;
  c.refused = false;

  if (full == "collections.OrderedDict") c.role = GlobalRole::OrderedDict;
  else if (full == "torch._utils._rebuild_tensor_v2") c.role = GlobalRole::RebuildTensorV2;
  else if (full == "torch._utils._rebuild_tensor") c.role = GlobalRole::RebuildTensor;
  else if (full == "torch._utils._rebuild_parameter" || full == "torch._utils._rebuild_parameter_with_state")
    c.role = GlobalRole::RebuildParameter;
  else if (full == "torch._tensor._rebuild_from_type_v2" || full == "torch._tensor._rebuild_from_type")
    c.role = GlobalRole::RebuildFromTypeV2;
  else if (starts("torch") && parts.back().substr(0, 9) == "_rebuild_") c.role = GlobalRole::UnsupportedTensor;
  else if ((parts.size() == 2 && parts[0] == "torch" && parts[1].size() > 7 &&
            parts[1].substr(parts[1].size() - 7) == "Storage") ||
           full == "torch.storage.UntypedStorage")
    c.role = GlobalRole::Storage;
  return c;
}

/// torch storage type name -> element type; false for types adabldm does not read (int8, int16, complex, ...).
inline bool torch_storage_dtype(std::string_view type_name, DType& out) {
  static const std::pair<const char*, DType> table[] = {
      {"FloatStorage", DType::F32}, {"HalfStorage", DType::F16}, {"BFloat16Storage", DType::BF16},
      {"DoubleStorage", DType::F64}, {"LongStorage", DType::I64}, {"IntStorage", DType::I32},
      {"ByteStorage", DType::U8},    {"BoolStorage", DType::Bool}, {"UntypedStorage", DType::U8}};
  for (const auto& [n, d] : table)
    if (type_name == n) {
      out = d;
      return true;
    }
  return false;
}

/// Interprets one pickle. The returned object graph lives as long as the Unpickler.
class Unpickler {
 public:
  /// Returns the bytes of the storage with this key (throws if there is none).
  using StorageLoader = std::function<SharedBytes(const std::string& key)>;
  static constexpr std::size_t kMaxObjects = 4u << 20;
  static constexpr int kMaxCallDepth = 32;

  /// `source` names the file and record in error messages ("model.ckpt: archive/data.pkl").
  Unpickler(std::string source, const std::byte* data, std::size_t size, StorageLoader load_storage)
      : source_(std::move(source)), data_(data), size_(size), load_storage_(std::move(load_storage)) {}
  Unpickler(const Unpickler&) = delete;
  Unpickler& operator=(const Unpickler&) = delete;

  /// Runs the pickle to its STOP opcode; returns the result.
  const PyObject* load() {
    for (;;) {
      const std::size_t at = pos_;
      const uint8_t op = u8();
      op_at_ = at;
      if (op == '.') return pop();  // STOP
      step(op);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw FormatError(source_ + ": pickle: " + what + " (at byte " + std::to_string(op_at_) + ")");
  }

  // ---- reading -------------------------------------------------------------------------------------------------
  const std::byte* take(std::size_t n) {
    if (n > size_ - pos_) fail("truncated: needs " + std::to_string(n) + " more bytes, " +
                               std::to_string(size_ - pos_) + " left");
    const std::byte* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  uint8_t u8() { return static_cast<uint8_t>(*take(1)); }
  template <class T>
  T le() {
    const std::byte* p = take(sizeof(T));
    std::make_unsigned_t<T> v = 0;
    for (std::size_t i = 0; i < sizeof(T); ++i)
      v |= static_cast<std::make_unsigned_t<T>>(static_cast<std::make_unsigned_t<T>>(p[i]) << (8 * i));
    return static_cast<T>(v);
  }
  std::string str(std::size_t n) {
    const std::byte* p = take(n);
    return std::string(reinterpret_cast<const char*>(p), n);
  }
  /// A length read from the pickle, checked against what is left before anything is allocated.
  std::size_t length(uint64_t n) {
    if (n > size_ - pos_) fail("truncated: a length of " + std::to_string(n) + " exceeds the " +
                               std::to_string(size_ - pos_) + " bytes left");
    return static_cast<std::size_t>(n);
  }
  /// A text-protocol line (without its '\n').
  std::string line() {
    const std::size_t limit = std::min<std::size_t>(size_ - pos_, 4096);
    const void* nl = std::memchr(data_ + pos_, '\n', limit);
    if (!nl) fail("unterminated text line");
    const std::size_t n = static_cast<std::size_t>(static_cast<const std::byte*>(nl) - (data_ + pos_));
    std::string s = str(n);
    pos_ += 1;
    return s;
  }
  int64_t parse_decimal(const std::string& s) {
    std::string_view t = s;
    if (!t.empty() && t.back() == 'L') t.remove_suffix(1);  // protocol 0 LONG
    int64_t v = 0;
    auto [p, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
    if (ec != std::errc() || p != t.data() + t.size()) fail("bad decimal integer \"" + s + "\"");
    return v;
  }

  // ---- objects -------------------------------------------------------------------------------------------------
  PyObject* make(PyKind kind) {
    if (arena_.size() >= kMaxObjects) fail("more than " + std::to_string(kMaxObjects) + " objects");
    arena_.emplace_back();
    arena_.back().kind = kind;
    return &arena_.back();
  }
  PyObject* make_int(int64_t v) {
    PyObject* o = make(PyKind::Int);
    o->integer = v;
    return o;
  }
  PyObject* make_str(PyKind kind, std::string s) {
    PyObject* o = make(kind);
    o->text = std::move(s);
    return o;
  }
  PyObject* make_seq(PyKind kind, std::vector<PyObject*> elems) {
    PyObject* o = make(kind);
    o->elems = std::move(elems);
    return o;
  }
  PyObject* none() { return none_ ? none_ : (none_ = make(PyKind::None)); }

  // ---- the stack -----------------------------------------------------------------------------------------------
  std::size_t fence() const noexcept { return marks_.empty() ? 0 : marks_.back(); }
  void push(PyObject* o) { stack_.push_back(o); }
  PyObject* pop() {
    if (stack_.size() <= fence()) fail("stack underflow");
    PyObject* o = stack_.back();
    stack_.pop_back();
    return o;
  }
  PyObject* top() {
    if (stack_.size() <= fence()) fail("stack underflow");
    return stack_.back();
  }
  /// The items above the last MARK, which is removed.
  std::vector<PyObject*> pop_mark() {
    if (marks_.empty()) fail("no MARK on the stack");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PyObject*> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }
  void memo_put(uint64_t index) { memo_[index] = top(); }
  PyObject* memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo entry " + std::to_string(index) + " is missing");
    return it->second;
  }

  // ---- containers ----------------------------------------------------------------------------------------------
  void append(PyObject* target, const std::vector<PyObject*>& values) {
    if (target->kind != PyKind::List && target->kind != PyKind::Object) fail("APPEND to a non-list");
    target->elems.insert(target->elems.end(), values.begin(), values.end());
  }
  void set_items(PyObject* target, const std::vector<PyObject*>& kv) {
    if (target->kind != PyKind::Dict && target->kind != PyKind::Object) fail("SETITEM on a non-dict");
    if (kv.size() % 2) fail("SETITEMS with an odd number of items");
    for (std::size_t i = 0; i < kv.size(); i += 2) target->items.emplace_back(kv[i], kv[i + 1]);
  }
  PyObject* make_dict(const std::vector<PyObject*>& kv) {
    PyObject* d = make(PyKind::Dict);
    set_items(d, kv);
    return d;
  }
  /// A global named by GLOBAL, STACK_GLOBAL, INST or reached through getattr; refused ones stop the load here.
  PyObject* make_global(const std::string& written_module, const std::string& name, const char* how = nullptr) {
    const std::string module = python3_module(written_module);
    const GlobalClass c = classify_global(module, name);
    if (c.refused)
      fail("refused to load the global " + module + "." + name +
           (written_module != module ? " (written as " + written_module + "." + name + ")" : std::string()) +
           (how ? how : "") +
           ": calling it could execute code, so this is not a plain checkpoint (possibly malicious); nothing was "
           "executed");
    PyObject* g = make_str(PyKind::Global, module + "." + name);
    g->module_length = module.size();
    g->role = c.role;
    return g;
  }

  // ---- calls: REDUCE, NEWOBJ, INST, OBJ --------------------------------------------------------------------------
  PyObject* call(PyObject* callee, PyObject* args, int depth = 0) {
    if (depth > kMaxCallDepth) fail("rebuild calls nested too deeply");
    if (args->kind != PyKind::Tuple) fail("call arguments are not a tuple");
    const auto& a = args->elems;
    const GlobalRole role = callee->kind == PyKind::Global ? callee->role : GlobalRole::Inert;
    switch (role) {
      case GlobalRole::OrderedDict:
        if (a.empty()) return make(PyKind::Dict);
        break;  // OrderedDict(iterable): rare; keep it inert
      case GlobalRole::RebuildTensorV2:
      case GlobalRole::RebuildTensor:
        return rebuild_tensor(callee->text, a);
      case GlobalRole::UnsupportedTensor:
        return make_str(PyKind::UnsupportedTensor,
                        "it is rebuilt by " + callee->text + " (a quantized, sparse or other special tensor)");
      case GlobalRole::RebuildParameter:  // (data, requires_grad, backward_hooks[, state]) -> data
        if (a.empty()) fail(callee->text + " without arguments");
        return a[0];
      case GlobalRole::RebuildFromTypeV2:  // (func, new_type, args, state) -> func(*args)
        if (a.size() != 4) fail(callee->text + " expects 4 arguments, got " + std::to_string(a.size()));
        return call(a[0], a[2], depth + 1);
      case GlobalRole::GetAttr: {  // getattr(obj, name[, default]): checked like the dotted global it names
        if (a.size() < 2 || a.size() > 3 || !a[1]->is_str()) fail("getattr needs an object and a name");
        if (a[0]->kind == PyKind::Global)
          return make_global(a[0]->text.substr(0, a[0]->module_length),
                             a[0]->text.substr(a[0]->module_length + 1) + "." + a[1]->text, " (through getattr)");
        if (refused_attribute(a[1]->text))
          fail("refused getattr(..., \"" + a[1]->text +
               "\"): the attribute could reach code, so this is not a plain checkpoint (possibly malicious); "
               "nothing was executed");
        break;
      }
      default: break;
    }
    PyObject* o = make(PyKind::Object);
    o->callee = callee;
    o->args = args;
    return o;
  }

  int64_t int_arg(const PyObject* o, const char* what) {
    if (o->kind != PyKind::Int) fail(std::string("tensor ") + what + " is not an integer");
    return o->integer;
  }
  Shape dims_arg(const PyObject* o, const char* what) {
    if (o->kind != PyKind::Tuple) fail(std::string("tensor ") + what + " is not a tuple");
    if (o->elems.size() > static_cast<std::size_t>(Shape::kMaxRank))
      fail(std::string("tensor ") + what + " has " + std::to_string(o->elems.size()) + " dimensions");
    Shape s;
    for (const PyObject* d : o->elems) {
      const int64_t v = int_arg(d, what);
      if (v < 0) fail(std::string("negative tensor ") + what);
      s.push_back(v);
    }
    return s;
  }

  /// _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) and
  /// _rebuild_tensor(storage, storage_offset, size, stride): a view of the storage, checked to stay inside it.
  PyObject* rebuild_tensor(const std::string& fn, const std::vector<PyObject*>& a) {
    if (a.size() < 4 || a.size() > 7) fail(fn + " with " + std::to_string(a.size()) + " arguments");
    if (a[0]->kind != PyKind::Storage) fail(fn + ": the first argument is not a storage");
    if (a[2]->kind == PyKind::Tuple && a[2]->elems.size() > static_cast<std::size_t>(Shape::kMaxRank))
      return make_str(PyKind::UnsupportedTensor, "its rank is " + std::to_string(a[2]->elems.size()) +
                                                     " (adabldm supports up to " + std::to_string(Shape::kMaxRank) + ")");
    PyTensor t;
    t.storage = a[0]->storage;
    t.offset = int_arg(a[1], "storage offset");
    t.shape = dims_arg(a[2], "size");
    t.stride = dims_arg(a[3], "stride");
    if (t.offset < 0) fail("negative tensor storage offset");
    if (t.stride.rank() != t.shape.rank())
      fail("tensor size " + t.shape.str() + " and stride " + t.stride.str() + " differ in rank");
    if (!Shape::size_fits(t.shape.begin(), t.shape.end()))  // also with a 0: the strides of its copy would overflow
      fail("tensor size " + t.shape.str() + ": its element count overflows 64 bits");
    // Element count and the last element addressed, overflow-checked (2^62 is far beyond any real tensor).
    constexpr uint64_t kLimit = uint64_t{1} << 62;
    uint64_t numel = 1, last = static_cast<uint64_t>(t.offset);
    for (int i = 0; i < t.shape.rank(); ++i) {
      const auto n = static_cast<uint64_t>(t.shape[i]), s = static_cast<uint64_t>(t.stride[i]);
      if (n == 0) numel = 0;
      else if (numel && n > kLimit / numel) fail("tensor size " + t.shape.str() + " is too large");
      else numel *= n;
      if (n > 0 && s > 0 && (n - 1 > kLimit / s || last > kLimit - (n - 1) * s))
        fail("tensor stride " + t.stride.str() + " is too large");
      if (n > 0) last += (n - 1) * s;
    }
    if (t.storage->supported && numel > 0 && last >= static_cast<uint64_t>(t.storage->numel))
      fail("tensor of size " + t.shape.str() + ", stride " + t.stride.str() + " at offset " +
           std::to_string(t.offset) + " reads past the end of storage \"" + t.storage->key + "\" (" +
           std::to_string(t.storage->numel) + " elements)");
    tensors_.push_back(t);
    PyObject* o = make(PyKind::Tensor);
    o->tensor = &tensors_.back();
    return o;
  }

  /// torch's persistent id: ('storage', storage_type, key, location, numel).
  PyObject* persistent_load(const PyObject* pid) {
    const auto& e = pid->elems;
    if (pid->kind != PyKind::Tuple || e.size() != 5 || !e[0]->is_str() || e[0]->text != "storage")
      fail("unsupported persistent id (expected torch's ('storage', type, key, location, numel))");
    if (e[1]->kind != PyKind::Global || e[1]->role != GlobalRole::Storage)
      fail("persistent id storage type is not a torch storage class");
    if (!e[2]->is_str() || !e[3]->is_str() || e[4]->kind != PyKind::Int || e[4]->integer < 0)
      fail("malformed persistent id for a storage");
    PyStorage s;
    s.key = e[2]->text;
    s.type_name = e[1]->text.substr(e[1]->text.rfind('.') + 1);
    s.supported = torch_storage_dtype(s.type_name, s.dtype);
    s.numel = e[4]->integer;
    auto cached = storage_bytes_.find(s.key);
    if (cached == storage_bytes_.end()) cached = storage_bytes_.emplace(s.key, load_storage_(s.key)).first;
    s.bytes = cached->second;
    if (s.supported && (static_cast<uint64_t>(s.numel) > s.bytes.size / dtype_size(s.dtype)))
      fail("storage \"" + s.key + "\" claims " + std::to_string(s.numel) + " elements of " + s.type_name +
           " but has only " + std::to_string(s.bytes.size) + " bytes");
    storages_.push_back(std::move(s));
    PyObject* o = make(PyKind::Storage);
    o->storage = &storages_.back();
    return o;
  }

  /// Two's-complement little-endian integer (LONG1 / LONG4); wider than 64 bits -> Opaque.
  PyObject* make_long(std::size_t n) {
    const std::byte* p = take(n);
    if (n == 0) return make_int(0);
    const bool negative = (static_cast<uint8_t>(p[n - 1]) & 0x80) != 0;
    for (std::size_t i = 8; i < n; ++i)  // extra bytes must be pure sign extension
      if (static_cast<uint8_t>(p[i]) != (negative ? 0xff : 0x00)) return make_str(PyKind::Opaque, "int wider than 64 bits");
    if (n > 8 && ((static_cast<uint8_t>(p[7]) & 0x80) != 0) != negative)
      return make_str(PyKind::Opaque, "int wider than 64 bits");
    uint64_t v = negative ? ~uint64_t{0} : 0;
    for (std::size_t i = 0; i < std::min<std::size_t>(n, 8); ++i) {
      v &= ~(uint64_t{0xff} << (8 * i));
      v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
    }
    return make_int(static_cast<int64_t>(v));
  }

  void step(uint8_t op) {
    switch (op) {
      // framing and protocol
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v > 5) fail("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case 0x95: length(le<uint64_t>()); break;  // FRAME: only a size hint
      // markers and stack manipulation
      case '(': marks_.push_back(stack_.size()); break;  // MARK
      case '0': pop(); break;                             // POP
      case '1': pop_mark(); break;                        // POP_MARK
      case '2': push(top()); break;                       // DUP
      // constants and numbers
      case 'N': push(none()); break;
      case 0x88:
      case 0x89: {  // NEWTRUE, NEWFALSE
        PyObject* b = make(PyKind::Bool);
        b->boolean = op == 0x88;
        push(b);
        break;
      }
      case 'J': push(make_int(le<int32_t>())); break;   // BININT
      case 'K': push(make_int(u8())); break;            // BININT1
      case 'M': push(make_int(le<uint16_t>())); break;  // BININT2
      case 0x8a: push(make_long(u8())); break;          // LONG1
      case 0x8b: {                                      // LONG4
        const int32_t n = le<int32_t>();
        if (n < 0) fail("negative LONG4 length");
        push(make_long(length(static_cast<uint64_t>(n))));
        break;
      }
      case 'I': {  // INT (protocol 0): "I01\n" and "I00\n" are True and False
        const std::string s = line();
        if (s == "01" || s == "00") {
          PyObject* b = make(PyKind::Bool);
          b->boolean = s == "01";
          push(b);
        } else {
          push(make_int(parse_decimal(s)));
        }
        break;
      }
      case 'L': push(make_int(parse_decimal(line()))); break;  // LONG (protocol 0)
      case 'G': {                                              // BINFLOAT: big-endian double
        const std::byte* p = take(8);
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(p[i]);
        PyObject* f = make(PyKind::Float);
        f->real = bit_cast<double>(bits);
        push(f);
        break;
      }
      case 'F': {  // FLOAT (protocol 0)
        const std::string s = line();
        PyObject* f = make(PyKind::Float);
        auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), f->real);
        if (ec != std::errc() || p != s.data() + s.size()) fail("bad float \"" + s + "\"");
        push(f);
        break;
      }
      // strings and bytes
      case 'X': push(make_str(PyKind::Str, str(length(le<uint32_t>())))); break;     // BINUNICODE
      case 0x8c: push(make_str(PyKind::Str, str(u8()))); break;                       // SHORT_BINUNICODE
      case 0x8d: push(make_str(PyKind::Str, str(length(le<uint64_t>())))); break;    // BINUNICODE8
      case 'T': {                                                                     // BINSTRING
        const int32_t n = le<int32_t>();
        if (n < 0) fail("negative BINSTRING length");
        push(make_str(PyKind::Str, str(length(static_cast<uint64_t>(n)))));
        break;
      }
      case 'U': push(make_str(PyKind::Str, str(u8()))); break;                        // SHORT_BINSTRING
      case 'B': push(make_str(PyKind::Bytes, str(length(le<uint32_t>())))); break;   // BINBYTES
      case 'C': push(make_str(PyKind::Bytes, str(u8()))); break;                      // SHORT_BINBYTES
      case 0x8e:                                                                      // BINBYTES8
      case 0x96: push(make_str(PyKind::Bytes, str(length(le<uint64_t>())))); break;  // BYTEARRAY8
      case 0x98: top(); break;  // READONLY_BUFFER: no effect on an in-band buffer
      // tuples, lists, dicts, sets
      case ')': push(make_seq(PyKind::Tuple, {})); break;  // EMPTY_TUPLE
      case 0x85: {                                         // TUPLE1
        PyObject* a = pop();
        push(make_seq(PyKind::Tuple, {a}));
        break;
      }
      case 0x86: {  // TUPLE2
        PyObject* b = pop();
        PyObject* a = pop();
        push(make_seq(PyKind::Tuple, {a, b}));
        break;
      }
      case 0x87: {  // TUPLE3
        PyObject* c = pop();
        PyObject* b = pop();
        PyObject* a = pop();
        push(make_seq(PyKind::Tuple, {a, b, c}));
        break;
      }
      case 't': push(make_seq(PyKind::Tuple, pop_mark())); break;  // TUPLE
      case ']': push(make(PyKind::List)); break;                   // EMPTY_LIST
      case 'l': push(make_seq(PyKind::List, pop_mark())); break;   // LIST
      case 'a': {                                                  // APPEND
        PyObject* v = pop();
        append(top(), {v});
        break;
      }
      case 'e': {  // APPENDS
        auto values = pop_mark();
        append(top(), values);
        break;
      }
      case '}': push(make(PyKind::Dict)); break;           // EMPTY_DICT
      case 'd': push(make_dict(pop_mark())); break;        // DICT
      case 's': {                                          // SETITEM
        PyObject* v = pop();
        PyObject* k = pop();
        set_items(top(), {k, v});
        break;
      }
      case 'u': {  // SETITEMS
        auto kv = pop_mark();
        set_items(top(), kv);
        break;
      }
      case 0x8f: push(make(PyKind::Set)); break;  // EMPTY_SET
      case 0x90: {                                // ADDITEMS
        auto values = pop_mark();
        PyObject* s = top();
        if (s->kind != PyKind::Set) fail("ADDITEMS on a non-set");
        s->elems.insert(s->elems.end(), values.begin(), values.end());
        break;
      }
      case 0x91: push(make_seq(PyKind::FrozenSet, pop_mark())); break;  // FROZENSET
      // memo
      case 'q': memo_put(u8()); break;                              // BINPUT
      case 'r': memo_put(le<uint32_t>()); break;                    // LONG_BINPUT
      case 'p': memo_put(static_cast<uint64_t>(parse_decimal(line()))); break;  // PUT
      case 0x94: memo_put(memo_.size()); break;                     // MEMOIZE
      case 'h': push(memo_get(u8())); break;                        // BINGET
      case 'j': push(memo_get(le<uint32_t>())); break;              // LONG_BINGET
      case 'g': push(memo_get(static_cast<uint64_t>(parse_decimal(line())))); break;  // GET
      // globals, calls, objects
      case 'c': {  // GLOBAL "module\nname\n"
        std::string module = line();
        std::string name = line();
        push(make_global(module, name));
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        PyObject* name = pop();
        PyObject* module = pop();
        if (!module->is_str() || !name->is_str()) fail("STACK_GLOBAL needs two strings");
        push(make_global(module->text, name->text));
        break;
      }
      case 'R': {  // REDUCE
        PyObject* args = pop();
        PyObject* callee = pop();
        push(call(callee, args));
        break;
      }
      case 0x81: {  // NEWOBJ: cls.__new__(cls, *args)
        PyObject* args = pop();
        PyObject* cls = pop();
        push(call(cls, args));
        break;
      }
      case 0x92: {  // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
        pop();      // kwargs
        PyObject* args = pop();
        PyObject* cls = pop();
        push(call(cls, args));
        break;
      }
      case 'i': {  // INST "module\nname\n" with the arguments above MARK
        std::string module = line();
        std::string name = line();
        PyObject* cls = make_global(module, name);
        push(call(cls, make_seq(PyKind::Tuple, pop_mark())));
        break;
      }
      case 'o': {  // OBJ: MARK cls args...
        auto items = pop_mark();
        if (items.empty()) fail("OBJ without a class");
        PyObject* cls = items.front();
        items.erase(items.begin());
        push(call(cls, make_seq(PyKind::Tuple, std::move(items))));
        break;
      }
      case 'b': {  // BUILD: only recorded (placeholders and dicts keep it as their attributes)
        PyObject* state = pop();
        PyObject* obj = top();
        if (obj->kind == PyKind::Object || obj->kind == PyKind::Dict) obj->state = state;
        break;
      }
      case 'Q': push(persistent_load(pop())); break;                          // BINPERSID
      case 'P': push(persistent_load(make_str(PyKind::Str, line()))); break;  // PERSID
      case 'S':
      case 'V': fail(std::string("protocol 0 quoted-string opcode ") + (op == 'S' ? "STRING" : "UNICODE") +
                     " is not supported (re-save with pickle protocol 2 or later)");
      case 0x82:
      case 0x83:
      case 0x84: fail("pickle extension codes (EXT1/EXT2/EXT4) are not supported");
      case 0x97: fail("out-of-band buffers (NEXT_BUFFER) are not supported");
      default: {
        char hex[8];
        std::snprintf(hex, sizeof hex, "0x%02x", op);
        fail(std::string("unknown opcode ") + hex);
      }
    }
  }

  std::string source_;
  const std::byte* data_;
  std::size_t size_;
  std::size_t pos_ = 0, op_at_ = 0;
  StorageLoader load_storage_;
  std::deque<PyObject> arena_;  // deque: stable addresses; objects point at each other, never own
  std::deque<PyStorage> storages_;
  std::deque<PyTensor> tensors_;
  std::map<std::string, SharedBytes> storage_bytes_;
  std::vector<PyObject*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<uint64_t, PyObject*> memo_;
  PyObject* none_ = nullptr;
};

}  // namespace adabldm::io
