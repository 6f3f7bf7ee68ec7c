// The CLIP BPE vocabulary: a tokenizer/ folder (vocab.json and merges.txt: the input up to its first NUL byte
// and after it) or, for inputs in gzip's format, OpenAI's merges .gz. An accepted vocabulary tokenizes a few
// texts; every id must name a vocabulary entry.
#include <cstring>
#include <filesystem>

#include "fuzz_common.hpp"

#include "adabldm/text/clip_tokenizer.hpp"

using namespace adabldm;
using adabldm::text::ClipTokenizer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  const bool gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  const std::string dir = fuzz::temp_path("tokenizer");
  std::filesystem::create_directories(dir);
  const auto* nul = static_cast<const uint8_t*>(std::memchr(data, 0, size));
  const std::size_t split = nul ? static_cast<std::size_t>(nul - data) : size;
  const std::string source = gz ? fuzz::write_temp("bpe.txt.gz", data, size) : dir;
  if (!gz) {
    fuzz::write_temp("tokenizer/vocab.json", data, split);
    fuzz::write_temp("tokenizer/merges.txt", data + std::min(split + 1, size), size - std::min(split + 1, size));
  }
  fuzz::run(source, [&] {
    const auto tok = gz ? ClipTokenizer::from_bpe_gz(source) : ClipTokenizer::from_folder(dir);
    for (const char* text : {"a photo of a cat", "crack, blowhole; <|endoftext|> x\xc3\xa9 123 it's", ""}) {
      const auto ids = tok.tokenize(text);
      FUZZ_CHECK(ids.size() == 77);
      for (const auto& t : tok.bpe_tokens(text)) FUZZ_CHECK(!t.empty());
      for (auto id : ids) (void)tok.token(id);
    }
  });
  return 0;
}
