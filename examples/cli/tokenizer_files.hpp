#pragma once
// A transformers CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json)
// for the vocabulary shipped with the library (OpenAI's bpe_simple_vocab_16e6.txt.gz), for pipelines converted
// from single files, which carry no tokenizer. vocab.json and merges.txt are written byte for byte as
// CLIPTokenizer.save_pretrained writes them (sorted keys, 2-space indent; "#version: 0.2" + the merges used).
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <adabldm/io/json.hpp>
#include <adabldm/io/mapped_file.hpp>
#include <adabldm/text/clip_tokenizer.hpp>

namespace cli {

namespace tokenizer_files_detail {
/// The path ClipTokenizer::load_default reads.
inline std::string default_vocabulary_path() {
  std::string dir;
  if (const char* env = std::getenv("ADABLDM_DATA_DIR"); env && *env) dir = env;
#ifdef ADABLDM_DATA_DIR
  if (dir.empty()) dir = ADABLDM_DATA_DIR;
#endif
  return dir + "/bpe_simple_vocab_16e6.txt.gz";
}

inline std::string gunzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  adabldm::check<adabldm::IoError>(f != nullptr, path, ": cannot open");
  std::string out;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(f, buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  const bool ok = n == 0;
  gzclose(f);
  adabldm::check<adabldm::FormatError>(ok, path, ": not a readable gzip file");
  return out;
}

inline void write_text(const std::filesystem::path& p, const std::string& text) {
  adabldm::io::write_file_atomic(p.string(), text.data(), text.size());
}

/// The special-token entry transformers writes for <|startoftext|> / <|endoftext|>.
inline adabldm::io::Json added_token(const char* content) {
  return {{"content", content}, {"lstrip", false}, {"normalized", true}, {"rstrip", false}, {"single_word", false}};
}
}  // namespace tokenizer_files_detail

/// Writes the tokenizer folder `dir` (created if needed). `pad_token`: "<|endoftext|>" for SD1.x (CLIP),
/// "!" (id 0) for SD2.x (OpenCLIP), as the diffusers pipelines of those models have it.
inline void write_default_tokenizer(const std::filesystem::path& dir, const std::string& pad_token) {
  using namespace tokenizer_files_detail;
  using adabldm::io::Json;
  const std::string gz = default_vocabulary_path();
  const auto tok = adabldm::text::ClipTokenizer::from_bpe_gz(gz);
  std::filesystem::create_directories(dir);

  Json vocab = Json::object();  // std::map keys: byte order = code-point order = Python's sort_keys
  for (std::size_t id = 0; id < tok.vocab_size(); ++id) vocab[tok.token(static_cast<std::int64_t>(id))] = id;
  write_text(dir / "vocab.json", vocab.dump(2) + "\n");

  // merges.txt: the version header, then the merges SimpleTokenizer uses (lines 2 .. 48895 of the gz file).
  const std::string text = gunzip(gz);
  std::string merges = "#version: 0.2\n";
  std::size_t begin = text.find('\n') + 1;
  for (std::size_t i = 0; i < adabldm::text::ClipTokenizer::kMerges; ++i) {
    const std::size_t end = text.find('\n', begin);
    adabldm::check<adabldm::FormatError>(end != std::string::npos, gz, ": fewer merges than expected");
    merges.append(text, begin, end - begin).push_back('\n');
    begin = end + 1;
  }
  write_text(dir / "merges.txt", merges);

  const Json special{{"bos_token", added_token("<|startoftext|>")},
                     {"eos_token", added_token("<|endoftext|>")},
                     {"pad_token", pad_token},
                     {"unk_token", added_token("<|endoftext|>")}};
  write_text(dir / "special_tokens_map.json", special.dump(2) + "\n");
  Json added = Json::object();
  for (const char* t : {"<|startoftext|>", "<|endoftext|>"}) {
    auto entry = added_token(t);
    entry["special"] = true;
    added[std::to_string(tok.id_of(t))] = entry;
  }
  const Json config{{"added_tokens_decoder", added},
                    {"bos_token", "<|startoftext|>"},
                    {"clean_up_tokenization_spaces", true},
                    {"eos_token", "<|endoftext|>"},
                    {"errors", "replace"},
                    {"model_max_length", 77},
                    {"pad_token", pad_token},
                    {"tokenizer_class", "CLIPTokenizer"},
                    {"unk_token", "<|endoftext|>"}};
  write_text(dir / "tokenizer_config.json", config.dump(2) + "\n");
}

}  // namespace cli
