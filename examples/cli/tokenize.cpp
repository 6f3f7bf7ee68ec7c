// adabldm tokenize: CLIP token ids, 77 per string, padded as SD1.x (<|endoftext|>) or SD2.x / OpenCLIP (0) pipelines
// do; one JSON array on stdout, so that other programs can read it.
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <adabldm/io/json.hpp>
#include <adabldm/text/clip_tokenizer.hpp>

#include "args.hpp"
#include "commands.hpp"

namespace cli {

namespace {
using adabldm::text::ClipTokenizer;

/// --vocab: a tokenizer/ folder (vocab.json + merges.txt) or OpenAI's .gz merges file; default: the shipped one.
ClipTokenizer load_tokenizer(const std::string& vocab) {
  if (vocab.empty()) return ClipTokenizer::load_default();
  if (std::filesystem::is_directory(vocab)) return ClipTokenizer::from_folder(vocab);
  adabldm::check<adabldm::IoError>(std::filesystem::exists(vocab), vocab, ": no such file or folder");
  return ClipTokenizer::from_bpe_gz(vocab);
}

/// --input: a JSON list of strings.
std::vector<std::string> read_strings(const std::string& path) {
  const auto j = adabldm::io::read_json(path);
  adabldm::check<adabldm::FormatError>(j.is_array(), path, ": expected a JSON list of strings, got a ", j.type_name());
  std::vector<std::string> out;
  for (std::size_t i = 0; i < j.size(); ++i) {
    adabldm::check<adabldm::FormatError>(j[i].is_string(), path, ": entry ", i, " is a ", j[i].type_name(),
                                         ", not a string");
    out.push_back(j[i].get<std::string>());
  }
  return out;
}
}  // namespace

int cmd_tokenize(int argc, char** argv) {
  Args args(argc, argv, 2, {"pad", "input", "vocab"}, {"help"});
  if (args.flag("help") || (args.positional().empty() && !args.has("input"))) {
    std::fprintf(stderr,
                 "usage: adabldm tokenize [--pad eos|zero] [--input STRINGS.json] [--vocab PATH] [TEXT...]\n"
                 "  prints one JSON array: per string its 77 token ids\n"
                 "  --pad eos    pad with <|endoftext|> (49407), as SD1.x pipelines (default)\n"
                 "  --pad zero   pad with 0, as SD2.x / OpenCLIP\n"
                 "  --input F    a JSON list of strings (tokenized first, then the TEXT arguments)\n"
                 "  --vocab P    a tokenizer/ folder (vocab.json + merges.txt) or bpe_simple_vocab_16e6.txt.gz\n");
    return args.flag("help") ? 0 : 2;
  }
  const std::string pad_name = args.get("pad", "eos");
  adabldm::check(pad_name == "eos" || pad_name == "zero", "option --pad: \"", pad_name, "\" is not eos or zero");
  const auto pad = pad_name == "eos" ? ClipTokenizer::Pad::Eos : ClipTokenizer::Pad::Zero;

  std::vector<std::string> texts;
  if (args.has("input")) texts = read_strings(args.get("input"));
  for (const auto& t : args.positional()) texts.push_back(t);
  const auto tok = load_tokenizer(args.get("vocab"));

  std::string out = "[";
  for (std::size_t i = 0; i < texts.size(); ++i) {
    out += i ? ",\n [" : "\n [";
    const auto ids = tok.tokenize(texts[i], pad);
    for (std::size_t k = 0; k < ids.size(); ++k) out += (k ? "," : "") + std::to_string(ids[k]);
    out += "]";
  }
  out += texts.empty() ? "]\n" : "\n]\n";
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace cli
