#pragma once
// CLIP's byte-level BPE tokenizer, equal to openai/CLIP's clip/simple_tokenizer.py SimpleTokenizer:
//
//   clean_text:  ftfy.fix_text -> html.unescape twice -> strip -> collapse \s+ to ' ' -> strip -> str.lower()
//   split:       <|startoftext|> | <|endoftext|> | 's | 't | 're | 've | 'm | 'll | 'd | \p{L}+ | \p{N} |
//                [^\s\p{L}\p{N}]+   (regex module, IGNORECASE)
//   each piece:  UTF-8 bytes -> printable "byte symbols" -> BPE merges (lowest rank first) -> ids
//
// The vocabulary comes from OpenAI's bpe_simple_vocab_16e6.txt.gz or from a diffusers/transformers
// tokenizer folder (vocab.json + merges.txt); either way the text processing is SimpleTokenizer's (which,
// unlike transformers' CLIPTokenizer, html-unescapes and matches the special-token strings case-insensitively).
//
// Input is UTF-8; invalid UTF-8 throws adabldm::Error naming the byte offset (Python's tokenizer takes a str,
// so such bytes could never have reached it).
//
// Thread safety: a ClipTokenizer is immutable after loading except for its BPE cache (piece -> ids), which
// is guarded by a mutex; one instance may be shared by any number of threads.
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/core/error.hpp"
#include "adabldm/text/ftfy.hpp"
#include "adabldm/text/html_unescape.hpp"
#include "adabldm/text/unicode.hpp"

namespace adabldm::text {

class ClipTokenizer {
 public:
  enum class Pad : std::uint8_t {
    Eos,   ///< pad with <|endoftext|> (SD 1.x pipelines: CLIPTokenizer with pad_token <|endoftext|>)
    Zero,  ///< pad with 0 (clip.tokenize, OpenCLIP, SD 2.x)
  };

  static constexpr std::size_t kMerges = 49152 - 256 - 2;  ///< merges SimpleTokenizer reads: 48894
  static constexpr std::size_t kMaxCacheEntries = 1 << 16;  ///< the BPE cache is cleared when it grows past this
  static constexpr std::size_t kMaxMergesBytes = 16u << 20;  ///< the most a merges .gz may inflate to (CLIP's: 3.2 MB)
  static constexpr std::size_t kMaxIdGap = 1u << 16;  ///< vocab.json ids may exceed the token count by this much

  /// OpenAI's gzip'ed merges file: a version line, then one "left right" merge per line; the first 48894
  /// merges are used. Vocabulary: 256 byte symbols, the same with "</w>", one per merge, then
  /// <|startoftext|> (49406) and <|endoftext|> (49407).
  static ClipTokenizer from_bpe_gz(const std::string& path) {
    const std::string text = gunzip_file(path);
    check<FormatError>(is_valid_utf8(text), path, ": not UTF-8 text");
    const std::vector<std::string_view> lines = split_lines(text);
    check<FormatError>(lines.size() >= kMerges + 1, path, ": has ", lines.size(), " lines; a CLIP merges file has a "
                       "version line and at least ", kMerges, " merges");
    ClipTokenizer tok;
    tok.source_ = path;
    for (const std::string& s : byte_symbols()) tok.add_token(s);
    for (const std::string& s : byte_symbols()) tok.add_token(s + "</w>");
    std::vector<std::pair<std::string, std::string>> merges;
    merges.reserve(kMerges);
    for (std::size_t i = 1; i <= kMerges; ++i) {
      merges.push_back(parse_merge(lines[i], path, i + 1));
      tok.add_token(merges.back().first + merges.back().second);
    }
    tok.add_token("<|startoftext|>");
    tok.add_token("<|endoftext|>");
    tok.finish(merges, path);
    return tok;
  }

  /// A diffusers/transformers `tokenizer/` folder: vocab.json (token -> id) and merges.txt ("#version" line,
  /// then merges; like transformers' CLIPTokenizer, at most the first 48894 are read).
  static ClipTokenizer from_folder(const std::string& dir) {
    const std::string vocab_path = dir + "/vocab.json";
    const std::string merges_path = dir + "/merges.txt";
    ClipTokenizer tok;
    tok.source_ = dir;
    {
      const std::string vocab_text = read_file(vocab_path);
      nlohmann::json vocab;
      try {
        vocab = nlohmann::json::parse(vocab_text);
      } catch (const nlohmann::json::exception& e) {
        throw FormatError(adabldm::detail::concat(vocab_path, ": not valid JSON: ", e.what()));
      }
      check<FormatError>(vocab.is_object() && !vocab.empty(), vocab_path, ": expected a JSON object token -> id");
      std::size_t max_id = 0;
      for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        check<FormatError>(it.value().is_number_integer() && it.value().get<std::int64_t>() >= 0 &&
                               it.value().get<std::int64_t>() < (1 << 24),
                           vocab_path, ": id of token '", it.key(), "' is not an integer in [0, 2^24)");
        max_id = std::max<std::size_t>(max_id, it.value().get<std::size_t>());
      }
      // The id table is sized by the largest id: bounded by the file's size, not by what one id claims.
      check<FormatError>(max_id < vocab.size() + kMaxIdGap, vocab_path, ": id ", max_id, " for ", vocab.size(),
                         " tokens (ids may be sparse, but by at most ", kMaxIdGap, ")");
      tok.vocab_.assign(max_id + 1, std::string());
      for (auto it = vocab.begin(); it != vocab.end(); ++it) {
        const auto id = it.value().get<std::size_t>();
        check<FormatError>(tok.vocab_[id].empty(), vocab_path, ": id ", id, " is used twice");
        tok.vocab_[id] = it.key();
        tok.encoder_[it.key()] = static_cast<int>(id);
      }
    }
    const std::string merges_text = read_file(merges_path);
    check<FormatError>(is_valid_utf8(merges_text), merges_path, ": not UTF-8 text");
    // transformers: read().strip().split("\n")[1:48895]
    std::vector<std::string_view> lines = split_lines(strip_ascii(merges_text));
    check<FormatError>(!lines.empty() && lines[0].substr(0, 8) == "#version", merges_path,
                       ": the first line should be the \"#version\" header");
    std::vector<std::pair<std::string, std::string>> merges;
    for (std::size_t i = 1; i < lines.size() && merges.size() < kMerges; ++i)
      merges.push_back(parse_merge(lines[i], merges_path, i + 1));
    tok.finish(merges, merges_path);
    return tok;
  }

  /// <dir>/bpe_simple_vocab_16e6.txt.gz, where dir is $ADABLDM_DATA_DIR if set, else the ADABLDM_DATA_DIR
  /// the library was built with (the repository's data/ folder).
  static ClipTokenizer load_default() {
    std::string dir;
    if (const char* env = std::getenv("ADABLDM_DATA_DIR"); env && *env) dir = env;
#ifdef ADABLDM_DATA_DIR
    if (dir.empty()) dir = ADABLDM_DATA_DIR;
#endif
    check<IoError>(!dir.empty(), "ClipTokenizer::load_default: set $ADABLDM_DATA_DIR to the folder holding "
                   "bpe_simple_vocab_16e6.txt.gz");
    return from_bpe_gz(dir + "/bpe_simple_vocab_16e6.txt.gz");
  }

  ClipTokenizer(const ClipTokenizer& other)
      : source_(other.source_), vocab_(other.vocab_), encoder_(other.encoder_), merges_(other.merges_),
        byte_ids_(other.byte_ids_), byte_end_ids_(other.byte_end_ids_), bos_(other.bos_), eos_(other.eos_),
        cache_mutex_(std::make_unique<std::mutex>()) {}
  ClipTokenizer(ClipTokenizer&&) noexcept = default;
  ClipTokenizer& operator=(ClipTokenizer other) noexcept {
    swap(other);
    return *this;
  }

  std::size_t vocab_size() const noexcept { return vocab_.size(); }
  std::int64_t bos_id() const noexcept { return bos_; }  ///< <|startoftext|>
  std::int64_t eos_id() const noexcept { return eos_; }  ///< <|endoftext|>
  /// The vocabulary entry for id (byte symbols, "</w>" marks a word end); throws for an unknown id.
  const std::string& token(std::int64_t id) const {
    check(id >= 0 && static_cast<std::size_t>(id) < vocab_.size() && !vocab_[static_cast<std::size_t>(id)].empty(),
          "ClipTokenizer (", source_, "): no token with id ", id);
    return vocab_[static_cast<std::size_t>(id)];
  }
  /// The id of a vocabulary entry, or -1.
  std::int64_t id_of(const std::string& token) const {
    auto it = encoder_.find(token);
    return it == encoder_.end() ? -1 : it->second;
  }

  /// SimpleTokenizer's text cleaning: the exact string its regex splits.
  static std::string clean_text(std::string_view utf8) { return utf8_encode(clean(utf8_decode(utf8))); }

  /// The pieces the split regex produces from the cleaned text (before BPE).
  static std::vector<std::string> split(std::string_view utf8) {
    const std::u32string cleaned = clean(utf8_decode(utf8));
    std::vector<std::string> out;
    for (const auto& [b, e] : split_spans(cleaned)) out.push_back(utf8_encode(std::u32string_view(cleaned).substr(b, e - b)));
    return out;
  }

  /// SimpleTokenizer.encode(text): token ids without <|startoftext|> / <|endoftext|> around them.
  std::vector<std::int64_t> encode(std::string_view utf8) const {
    std::vector<std::int64_t> ids;
    for (const std::string& piece : split(utf8))
      for (int id : bpe(piece)) ids.push_back(id);
    return ids;
  }

  /// The vocabulary strings behind encode()'s ids.
  std::vector<std::string> bpe_tokens(std::string_view utf8) const {
    std::vector<std::string> out;
    for (std::int64_t id : encode(utf8)) out.push_back(vocab_[static_cast<std::size_t>(id)]);
    return out;
  }

  /// The fixed-length model input: <|startoftext|>, the ids (the first context_length-2 if there are more),
  /// <|endoftext|>, then padding (<|endoftext|> for Pad::Eos, 0 for Pad::Zero) up to context_length.
  std::vector<std::int64_t> tokenize(std::string_view utf8, Pad pad = Pad::Eos, int context_length = 77) const {
    check(context_length >= 2, "ClipTokenizer::tokenize: context_length ", context_length,
          " leaves no room for <|startoftext|> and <|endoftext|>");
    const std::vector<std::int64_t> ids = encode(utf8);
    const std::size_t n = static_cast<std::size_t>(context_length);
    const std::size_t keep = std::min(ids.size(), n - 2);
    std::vector<std::int64_t> out;
    out.reserve(n);
    out.push_back(bos_);
    out.insert(out.end(), ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(keep));
    out.push_back(eos_);
    out.resize(n, pad == Pad::Eos ? eos_ : 0);
    return out;
  }

  /// BPE of one piece (UTF-8) -> ids. Results are cached.
  std::vector<int> bpe(const std::string& piece) const {
    {
      std::lock_guard<std::mutex> lock(*cache_mutex_);
      auto it = cache_.find(piece);
      if (it != cache_.end()) return it->second;
    }
    std::vector<int> ids = bpe_uncached(piece);
    std::lock_guard<std::mutex> lock(*cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(piece, ids);
    return ids;
  }

 private:
  ClipTokenizer() = default;

  void swap(ClipTokenizer& o) noexcept {
    using std::swap;
    swap(source_, o.source_);
    swap(vocab_, o.vocab_);
    swap(encoder_, o.encoder_);
    swap(merges_, o.merges_);
    swap(byte_ids_, o.byte_ids_);
    swap(byte_end_ids_, o.byte_end_ids_);
    swap(bos_, o.bos_);
    swap(eos_, o.eos_);
    swap(cache_, o.cache_);
    swap(cache_mutex_, o.cache_mutex_);
  }

  // ---- text -> pieces -----------------------------------------------------------------------------------------

  static std::u32string strip_python(std::u32string_view s) {
    std::size_t b = 0, e = s.size();
    while (b < e && unicode::is_python_space(s[b])) ++b;
    while (e > b && unicode::is_python_space(s[e - 1])) --e;
    return std::u32string(s.substr(b, e - b));
  }

  static std::u32string clean(std::u32string_view text) {
    // basic_clean: ftfy, html.unescape twice, strip()
    std::u32string t = strip_python(html_unescape(html_unescape(ftfy::fix_text(text))));
    // whitespace_clean: regex.sub(r'\s+', ' ') then strip()
    std::u32string collapsed;
    collapsed.reserve(t.size());
    for (std::size_t i = 0; i < t.size();) {
      if (unicode::is_regex_space(t[i])) {
        collapsed += U' ';
        while (i < t.size() && unicode::is_regex_space(t[i])) ++i;
      } else {
        collapsed += t[i++];
      }
    }
    return unicode::python_lower(strip_python(collapsed));
  }

  /// Length of `literal` (ASCII) matched at s[i] under the regex module's IGNORECASE, or 0.
  static std::size_t match_literal(std::u32string_view s, std::size_t i, std::string_view literal) {
    if (i + literal.size() > s.size()) return 0;
    for (std::size_t k = 0; k < literal.size(); ++k) {
      const char ch = literal[k];
      const bool letter = (ch | 0x20) >= 'a' && (ch | 0x20) <= 'z';
      if (letter ? !unicode::regex_equal_ignore_case(s[i + k], ch) : s[i + k] != static_cast<char32_t>(ch)) return 0;
    }
    return literal.size();
  }

  /// re.findall(pat, text) as [begin, end) spans.
  static std::vector<std::pair<std::size_t, std::size_t>> split_spans(std::u32string_view s) {
    static constexpr std::string_view kLiterals[] = {"<|startoftext|>", "<|endoftext|>", "'s", "'t", "'re",
                                                     "'ve", "'m", "'ll", "'d"};
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    std::size_t i = 0;
    while (i < s.size()) {
      std::size_t len = 0;
      for (std::string_view lit : kLiterals)
        if ((len = match_literal(s, i, lit)) != 0) break;
      if (len == 0) {
        if (unicode::is_regex_letter(s[i])) {
          while (i + len < s.size() && unicode::is_regex_letter(s[i + len])) ++len;
        } else if (unicode::is_regex_number(s[i])) {
          len = 1;
        } else if (unicode::is_regex_other(s[i])) {
          while (i + len < s.size() && unicode::is_regex_other(s[i + len])) ++len;
        }
      }
      if (len == 0) {
        ++i;  // whitespace (or U+0345, which under IGNORECASE falls in none of the classes)
        continue;
      }
      spans.emplace_back(i, i + len);
      i += len;
    }
    return spans;
  }

  // ---- BPE ------------------------------------------------------------------------------------------------------

  struct Merge {
    int rank;
    int result;
  };
  static std::uint64_t pair_key(int a, int b) {
    return (static_cast<std::uint64_t>(static_cast<std::uint32_t>(a)) << 32) | static_cast<std::uint32_t>(b);
  }

  std::vector<int> bpe_uncached(const std::string& piece) const {
    if (piece == "<|startoftext|>") return {static_cast<int>(bos_)};  // SimpleTokenizer's pre-seeded cache
    if (piece == "<|endoftext|>") return {static_cast<int>(eos_)};
    std::vector<int> word;
    word.reserve(piece.size());
    for (std::size_t i = 0; i < piece.size(); ++i) {
      const auto b = static_cast<std::uint8_t>(piece[i]);
      word.push_back(i + 1 == piece.size() ? byte_end_ids_[b] : byte_ids_[b]);
    }
    while (word.size() > 1) {
      // The adjacent pair with the lowest merge rank...
      const Merge* best = nullptr;
      int first = 0, second = 0;
      for (std::size_t i = 0; i + 1 < word.size(); ++i) {
        auto it = merges_.find(pair_key(word[i], word[i + 1]));
        if (it != merges_.end() && (!best || it->second.rank < best->rank)) {
          best = &it->second;
          first = word[i];
          second = word[i + 1];
        }
      }
      if (!best) break;
      // ...is merged everywhere, left to right.
      std::vector<int> merged;
      merged.reserve(word.size());
      for (std::size_t i = 0; i < word.size();) {
        if (i + 1 < word.size() && word[i] == first && word[i + 1] == second) {
          merged.push_back(best->result);
          i += 2;
        } else {
          merged.push_back(word[i++]);
        }
      }
      word = std::move(merged);
    }
    return word;
  }

  // ---- loading ----------------------------------------------------------------------------------------------------

  /// bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68 bytes for U+0100.. in order.
  /// Returned in SimpleTokenizer's vocabulary order (the printable ranges first).
  static std::vector<std::string> byte_symbols() {
    std::vector<int> bytes, chars;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    for (int b = 0; b < 256; ++b)
      if (printable(b)) bytes.push_back(b), chars.push_back(b);
    int n = 0;
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) bytes.push_back(b), chars.push_back(256 + n++);
    std::vector<std::string> by_order(256);
    for (std::size_t k = 0; k < 256; ++k) {
      std::string s;
      append_utf8(s, static_cast<char32_t>(chars[k]));
      by_order[k] = s;
    }
    return by_order;
  }

  /// The byte that byte symbol number k (in byte_symbols() order) stands for.
  static std::vector<int> byte_symbol_bytes() {
    std::vector<int> bytes;
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    for (int b = 0; b < 256; ++b)
      if (printable(b)) bytes.push_back(b);
    for (int b = 0; b < 256; ++b)
      if (!printable(b)) bytes.push_back(b);
    return bytes;
  }

  void add_token(const std::string& s) {
    encoder_[s] = static_cast<int>(vocab_.size());  // a later duplicate wins, as in dict(zip(vocab, ids))
    vocab_.push_back(s);
  }

  /// Resolves byte symbols, specials and merges against the vocabulary.
  void finish(const std::vector<std::pair<std::string, std::string>>& merges, const std::string& where) {
    const std::vector<std::string> symbols = byte_symbols();
    const std::vector<int> bytes = byte_symbol_bytes();
    auto require = [&](const std::string& s) {
      auto it = encoder_.find(s);
      check<FormatError>(it != encoder_.end(), source_, ": the vocabulary has no entry for '", s, "'");
      return it->second;
    };
    for (std::size_t k = 0; k < 256; ++k) {
      byte_ids_[static_cast<std::size_t>(bytes[k])] = require(symbols[k]);
      byte_end_ids_[static_cast<std::size_t>(bytes[k])] = require(symbols[k] + "</w>");
    }
    bos_ = require("<|startoftext|>");
    eos_ = require("<|endoftext|>");
    merges_.reserve(merges.size());
    for (std::size_t rank = 0; rank < merges.size(); ++rank) {
      const auto& [a, b] = merges[rank];
      auto ia = encoder_.find(a), ib = encoder_.find(b), ir = encoder_.find(a + b);
      // A merge whose halves are not tokens can never apply; one whose result is missing would make
      // SimpleTokenizer fail at encode time, so refuse the vocabulary now.
      if (ia == encoder_.end() || ib == encoder_.end()) continue;
      check<FormatError>(ir != encoder_.end(), where, ": merge ", rank + 1, " ('", a, "' + '", b,
                         "') produces a token that is not in the vocabulary");
      // A repeated merge keeps its last rank, as dict(zip(merges, ranks)) does.
      merges_.insert_or_assign(pair_key(ia->second, ib->second), Merge{static_cast<int>(rank), ir->second});
    }
  }

  static std::pair<std::string, std::string> parse_merge(std::string_view line, const std::string& path,
                                                         std::size_t line_number) {
    std::vector<std::string> parts;
    std::size_t i = 0;
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; };
    while (i < line.size()) {
      while (i < line.size() && space(line[i])) ++i;
      std::size_t j = i;
      while (j < line.size() && !space(line[j])) ++j;
      if (j > i) parts.emplace_back(line.substr(i, j - i));
      i = j;
    }
    check<FormatError>(parts.size() == 2, path, ": line ", line_number, " is not a merge \"left right\": '",
                       std::string(line.substr(0, 80)), "'");
    return {parts[0], parts[1]};
  }

  static std::vector<std::string_view> split_lines(std::string_view text) {
    std::vector<std::string_view> lines;
    std::size_t pos = 0;
    while (true) {
      const std::size_t nl = text.find('\n', pos);
      lines.push_back(text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos));
      if (nl == std::string_view::npos) break;
      pos = nl + 1;
    }
    return lines;
  }

  static std::string_view strip_ascii(std::string_view s) {
    auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; };
    while (!s.empty() && space(s.front())) s.remove_prefix(1);
    while (!s.empty() && space(s.back())) s.remove_suffix(1);
    return s;
  }

  static bool is_valid_utf8(std::string_view s) {
    try {
      utf8_decode(s);
      return true;
    } catch (const Error&) {
      return false;
    }
  }

  static std::string read_file(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    check<IoError>(static_cast<bool>(in), path, ": cannot open");
    std::ostringstream buf;
    buf << in.rdbuf();
    check<IoError>(!in.bad(), path, ": read error");
    return buf.str();
  }

  /// The decompressed content of a gzip file (zlib's inflate; gzip header required).
  static std::string gunzip_file(const std::string& path) {
    const std::string compressed = read_file(path);
    check<FormatError>(compressed.size() >= 18 && static_cast<unsigned char>(compressed[0]) == 0x1F &&
                           static_cast<unsigned char>(compressed[1]) == 0x8B,
                       path, ": not a gzip file");
    z_stream zs{};
    check<Error>(inflateInit2(&zs, 16 + MAX_WBITS) == Z_OK, path, ": zlib inflateInit2 failed");
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
    zs.avail_in = static_cast<uInt>(compressed.size());
    std::string out;
    char chunk[1 << 16];
    int ret = Z_OK;
    while (ret == Z_OK) {
      zs.next_out = reinterpret_cast<Bytef*>(chunk);
      zs.avail_out = sizeof(chunk);
      ret = inflate(&zs, Z_NO_FLUSH);
      out.append(chunk, sizeof(chunk) - zs.avail_out);
      if (ret == Z_BUF_ERROR && zs.avail_in == 0) break;  // input ended mid-stream
      if (out.size() > kMaxMergesBytes) {  // a gzip bomb: a few kilobytes can inflate to gigabytes
        inflateEnd(&zs);
        throw FormatError(adabldm::detail::concat(path, ": inflates to more than ", kMaxMergesBytes >> 20,
                                                  " MB (CLIP's merges file inflates to 3.2 MB)"));
      }
    }
    const std::string why = zs.msg ? zs.msg : "";
    inflateEnd(&zs);
    check<FormatError>(ret == Z_STREAM_END, path, ": corrupt or truncated gzip data",
                       why.empty() ? std::string() : " (" + why + ")");
    return out;
  }

  std::string source_;
  std::vector<std::string> vocab_;                 // id -> token ("" for unused ids of a sparse vocab.json)
  std::unordered_map<std::string, int> encoder_;   // token -> id
  std::unordered_map<std::uint64_t, Merge> merges_;  // (left id, right id) -> rank and merged id
  std::array<int, 256> byte_ids_{};               // byte -> its symbol's id
  std::array<int, 256> byte_end_ids_{};           // byte -> its symbol + "</w>"
  std::int64_t bos_ = 0, eos_ = 0;
  mutable std::unordered_map<std::string, std::vector<int>> cache_;
  std::unique_ptr<std::mutex> cache_mutex_ = std::make_unique<std::mutex>();
};

}  // namespace adabldm::text
