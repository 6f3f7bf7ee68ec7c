// CLIP tokenizer: golden equality with openai/CLIP's SimpleTokenizer, the ftfy port, and the Unicode helpers.
#include <doctest/doctest.h>
#include <zlib.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "adabldm/text/clip_tokenizer.hpp"
#include "adabldm/text/ftfy.hpp"
#include "adabldm/text/html_unescape.hpp"
#include "adabldm/text/unicode.hpp"

namespace fs = std::filesystem;
using adabldm::text::ClipTokenizer;
using nlohmann::json;

namespace {

const std::string kTestData = ADABLDM_TEST_DATA;
const std::string kGoldenFolder = "/work/shared/golden/tiny_pipeline/diffusers/tokenizer";

json load_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "cannot open ", path);
  return json::parse(in);
}

const ClipTokenizer& default_tokenizer() {
  static const ClipTokenizer tok = ClipTokenizer::load_default();
  return tok;
}

std::string u8(std::u32string_view s) { return adabldm::text::utf8_encode(s); }
std::u32string u32(std::string_view s) { return adabldm::text::utf8_decode(s); }

/// A scratch directory removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("adabldm_tok_" + std::to_string(std::rand()) + "_" +
                                        std::to_string(reinterpret_cast<std::uintptr_t>(this)));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_gzip(const std::string& path, const std::string& content) {
  gzFile f = gzopen(path.c_str(), "wb");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, content.data(), static_cast<unsigned>(content.size())) == static_cast<int>(content.size()));
  gzclose(f);
}

}  // namespace

// ---- golden equality with SimpleTokenizer -------------------------------------------------------------------------

TEST_CASE("tokenizer: all golden cases match openai/CLIP SimpleTokenizer") {
  const json cases = load_json(kTestData + "/tokenizer/tokenizer_cases.json");
  REQUIRE(cases.size() == 66);
  const ClipTokenizer& tok = default_tokenizer();
  CHECK(tok.vocab_size() == 49408);
  CHECK(tok.bos_id() == 49406);
  CHECK(tok.eos_id() == 49407);
  int matched = 0;
  for (const json& c : cases) {
    const std::string text = c.at("text");
    CAPTURE(text);
    const bool ids = tok.encode(text) == c.at("ids").get<std::vector<std::int64_t>>();
    const bool tokens = tok.bpe_tokens(text) == c.at("bpe_tokens").get<std::vector<std::string>>();
    const bool cleaned = ClipTokenizer::clean_text(text) == c.at("cleaned_text").get<std::string>();
    const bool eos = tok.tokenize(text) == c.at("ids_77_eos_pad").get<std::vector<std::int64_t>>();
    const bool zero = tok.tokenize(text, ClipTokenizer::Pad::Zero, 77) ==
                      c.at("ids_77_zero_pad").get<std::vector<std::int64_t>>();
    CHECK(ids);
    CHECK(tokens);
    CHECK(cleaned);
    CHECK(eos);
    CHECK(zero);
    matched += ids && tokens && cleaned && eos && zero;
  }
  MESSAGE("golden cases matching in all five fields: ", matched, "/", cases.size());
  CHECK(matched == 66);
}

TEST_CASE("tokenizer: diffusers tokenizer folder gives the same vocabulary and ids") {
  if (!fs::exists(kGoldenFolder + "/vocab.json")) {
    MESSAGE("skipped: ", kGoldenFolder, " not present");
    return;
  }
  const ClipTokenizer folder = ClipTokenizer::from_folder(kGoldenFolder);
  const ClipTokenizer& gz = default_tokenizer();
  REQUIRE(folder.vocab_size() == gz.vocab_size());
  for (std::int64_t id = 0; id < static_cast<std::int64_t>(gz.vocab_size()); ++id) REQUIRE(folder.token(id) == gz.token(id));
  CHECK(folder.bos_id() == 49406);
  CHECK(folder.eos_id() == 49407);
  for (const json& c : load_json(kTestData + "/tokenizer/tokenizer_cases.json")) {
    const std::string text = c.at("text");
    CAPTURE(text);
    CHECK(folder.tokenize(text) == gz.tokenize(text));
  }
}

TEST_CASE("tokenizer: truncation keeps <|startoftext|>, the first 75 ids and <|endoftext|>") {
  const ClipTokenizer& tok = default_tokenizer();
  const std::int64_t one = tok.encode("1").at(0);  // every digit is its own piece: "1</w>"
  for (int n : {74, 75, 76, 77, 200}) {
    CAPTURE(n);
    const std::string text(static_cast<std::size_t>(n), '1');
    REQUIRE(tok.encode(text).size() == static_cast<std::size_t>(n));
    for (auto pad : {ClipTokenizer::Pad::Eos, ClipTokenizer::Pad::Zero}) {
      const auto ids = tok.tokenize(text, pad);
      REQUIRE(ids.size() == 77);
      CHECK(ids.front() == 49406);
      const int kept = std::min(n, 75);
      for (int i = 1; i <= kept; ++i) CHECK(ids[static_cast<std::size_t>(i)] == one);
      CHECK(ids[static_cast<std::size_t>(kept) + 1] == 49407);
      for (std::size_t i = static_cast<std::size_t>(kept) + 2; i < 77; ++i)
        CHECK(ids[i] == (pad == ClipTokenizer::Pad::Eos ? 49407 : 0));
    }
  }
  const auto short_ctx = tok.tokenize("a photo of a cat", ClipTokenizer::Pad::Zero, 4);
  CHECK(short_ctx == std::vector<std::int64_t>{49406, tok.encode("a").at(0), tok.encode("photo").at(0), 49407});
  CHECK(tok.tokenize("", ClipTokenizer::Pad::Zero, 2) == std::vector<std::int64_t>{49406, 49407});
  CHECK_THROWS_AS(tok.tokenize("x", ClipTokenizer::Pad::Eos, 1), adabldm::Error);
}

TEST_CASE("tokenizer: splitting follows CLIP's regex, including case-insensitive corners") {
  CHECK(ClipTokenizer::split("It's 2023!!") == std::vector<std::string>{"it", "'s", "2", "0", "2", "3", "!!"});
  CHECK(ClipTokenizer::split("<|startoftext|>hi<|endoftext|>") ==
        std::vector<std::string>{"<|startoftext|>", "hi", "<|endoftext|>"});
  // The special-token strings are matched after lower-casing, so upper case still finds them...
  CHECK(ClipTokenizer::split("<|ENDOFTEXT|>") == std::vector<std::string>{"<|endoftext|>"});
  // ...and under IGNORECASE, U+017F LONG S matches 's' (in "'s" and inside the special tokens).
  CHECK(ClipTokenizer::split("x'\u017F") == std::vector<std::string>{"x", "'\u017F"});
  CHECK(ClipTokenizer::split("<|\u017Ftartoftext|>") == std::vector<std::string>{"<|\u017Ftartoftext|>"});
  // U+0345 is in none of the three classes under IGNORECASE, so it separates like whitespace.
  CHECK(ClipTokenizer::split("a\u0345b") == std::vector<std::string>{"a", "b"});
  const ClipTokenizer& tok = default_tokenizer();
  CHECK(tok.encode("<|endoftext|>") == std::vector<std::int64_t>{49407});
  CHECK(tok.encode("<|\u017Ftartoftext|>") != std::vector<std::int64_t>{49406});  // BPE'd, not special
  // Whitespace: str.strip() removes U+001C..U+001F but the regex module's \s does not collapse them; ftfy
  // removes them before either sees them anyway.
  CHECK(ClipTokenizer::clean_text("\u3000A\u00A0\u2003B\t\n") == "a b");
}

TEST_CASE("tokenizer: concurrent use of one instance") {
  const ClipTokenizer& tok = default_tokenizer();
  const std::string text = "a highly detailed photo of a scratched metal nut on a conveyor belt";
  const auto expected = tok.tokenize(text);
  std::vector<std::thread> threads;
  std::vector<int> ok(8, 0);
  for (int t = 0; t < 8; ++t)
    threads.emplace_back([&, t] {
      bool all = true;
      for (int i = 0; i < 50; ++i) all = all && tok.tokenize(text + std::string(static_cast<std::size_t>(i % 3), '!')).size() == 77;
      ok[static_cast<std::size_t>(t)] = all && tok.tokenize(text) == expected;
    });
  for (auto& th : threads) th.join();
  for (int v : ok) CHECK(v == 1);
  ClipTokenizer copy = tok;  // copies get their own cache
  CHECK(copy.tokenize(text) == expected);
}

// ---- loading errors ---------------------------------------------------------------------------------------------

TEST_CASE("tokenizer: missing or corrupt vocabulary files are clear errors") {
  TempDir dir;
  const std::string real = read_bytes(std::string(ADABLDM_DATA_DIR) + "/bpe_simple_vocab_16e6.txt.gz");
  REQUIRE(real.size() > 1000);

  auto message_of = [](auto&& fn) -> std::string {
    try {
      fn();
    } catch (const adabldm::Error& e) {
      return e.what();
    }
    return "(no exception)";
  };

  SUBCASE("missing file") {
    const std::string path = dir.file("nope.txt.gz");
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::IoError);
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("nope.txt.gz") != std::string::npos);
  }
  SUBCASE("not gzip") {
    const std::string path = dir.file("plain.txt.gz");
    write_bytes(path, "#version: 0.2\ni n\nt h\n" + std::string(100, 'x'));
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::FormatError);
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("not a gzip file") != std::string::npos);
  }
  SUBCASE("truncated gzip") {
    const std::string path = dir.file("truncated.txt.gz");
    write_bytes(path, real.substr(0, real.size() / 2));
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::FormatError);
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("truncated.txt.gz") != std::string::npos);
  }
  SUBCASE("corrupt gzip data") {
    std::string bad = real;
    for (std::size_t i = 100; i < 400; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5A);
    const std::string path = dir.file("corrupt.txt.gz");
    write_bytes(path, bad);
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::FormatError);
  }
  SUBCASE("too few merges") {
    const std::string path = dir.file("short.txt.gz");
    write_gzip(path, "\"bpe_simple_vocab_16e6.txt#version: 0.2\ni n\nt h\n");
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::FormatError);
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("48894") != std::string::npos);
  }
  SUBCASE("malformed merge line") {
    std::string content = "#version: 0.2\n";
    for (int i = 0; i < 48894; ++i) content += (i == 10 ? "i n x\n" : "i n\n");
    const std::string path = dir.file("badline.txt.gz");
    write_gzip(path, content);
    CHECK_THROWS_AS(ClipTokenizer::from_bpe_gz(path), adabldm::FormatError);
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("line 12") != std::string::npos);
  }
  SUBCASE("folder: missing vocab.json") {
    CHECK_THROWS_AS(ClipTokenizer::from_folder(dir.path.string()), adabldm::IoError);
    CHECK(message_of([&] { ClipTokenizer::from_folder(dir.path.string()); }).find("vocab.json") != std::string::npos);
  }
  SUBCASE("folder: vocab.json is not JSON") {
    write_bytes(dir.file("vocab.json"), "{\"a\": 1,");
    write_bytes(dir.file("merges.txt"), "#version: 0.2\n");
    CHECK_THROWS_AS(ClipTokenizer::from_folder(dir.path.string()), adabldm::FormatError);
  }
  SUBCASE("folder: vocab.json lacks the byte symbols") {
    write_bytes(dir.file("vocab.json"), "{\"a\": 0, \"b\": 1}");
    write_bytes(dir.file("merges.txt"), "#version: 0.2\na b\n");
    CHECK_THROWS_AS(ClipTokenizer::from_folder(dir.path.string()), adabldm::FormatError);
  }
  SUBCASE("folder: merges.txt without its header") {
    write_bytes(dir.file("vocab.json"), "{\"a\": 0}");
    write_bytes(dir.file("merges.txt"), "a b\n");
    CHECK_THROWS_AS(ClipTokenizer::from_folder(dir.path.string()), adabldm::FormatError);
  }
  SUBCASE("bounded memory: a gzip bomb, an id far beyond the token count (issue 20)") {
    const std::string path = dir.file("bomb.txt.gz");
    write_gzip(path, std::string(17u << 20, 'a'));  // 17 MB of 'a': a 17 KB file
    CHECK(message_of([&] { ClipTokenizer::from_bpe_gz(path); }).find("inflates to more than 16 MB") != std::string::npos);
    write_bytes(dir.file("vocab.json"), "{\"a\": 16777215}");  // one token, a table of 2^24 ids
    write_bytes(dir.file("merges.txt"), "#version: 0.2\n");
    const std::string msg = message_of([&] { ClipTokenizer::from_folder(dir.path.string()); });
    CHECK(msg.find("vocab.json: id 16777215 for 1 tokens") != std::string::npos);
  }
  SUBCASE("load_default honours $ADABLDM_DATA_DIR") {
    const char* old = std::getenv("ADABLDM_DATA_DIR");
    const std::string saved = old ? old : "";
    setenv("ADABLDM_DATA_DIR", dir.path.string().c_str(), 1);
    CHECK_THROWS_AS(ClipTokenizer::load_default(), adabldm::IoError);
    write_bytes(dir.file("bpe_simple_vocab_16e6.txt.gz"), real);
    CHECK(ClipTokenizer::load_default().encode("a photo of a cat") == default_tokenizer().encode("a photo of a cat"));
    if (old) setenv("ADABLDM_DATA_DIR", saved.c_str(), 1);
    else unsetenv("ADABLDM_DATA_DIR");
  }
}

TEST_CASE("tokenizer: invalid UTF-8 input throws with the byte offset") {
  const ClipTokenizer& tok = default_tokenizer();
  auto message = [&](const std::string& s) {
    try {
      tok.encode(s);
    } catch (const adabldm::Error& e) {
      return std::string(e.what());
    }
    return std::string("(no exception)");
  };
  CHECK(message("ab\xFF") == "invalid UTF-8 at byte offset 2: byte that never starts a sequence");
  CHECK(message("a\xC3") == "invalid UTF-8 at byte offset 1: truncated sequence");
  CHECK(message("\xC0\x80") == "invalid UTF-8 at byte offset 0: byte that never starts a sequence");
  CHECK(message("xy\xE0\x80\x80") == "invalid UTF-8 at byte offset 2: overlong encoding");
  CHECK(message("\xED\xA0\x80") == "invalid UTF-8 at byte offset 0: encoded surrogate");
  CHECK(message("\xF4\x90\x80\x80") == "invalid UTF-8 at byte offset 0: code point beyond U+10FFFF");
  CHECK(message("\x80") == "invalid UTF-8 at byte offset 0: unexpected continuation byte");
  CHECK(message("\xE2\x82x") == "invalid UTF-8 at byte offset 0: missing continuation byte");
}

// ---- Unicode helpers --------------------------------------------------------------------------------------------

TEST_CASE("unicode: str.lower() including special casing and final sigma") {
  using adabldm::text::unicode::python_lower;
  CHECK(u8(python_lower(U"HELLO World")) == "hello world");
  CHECK(u8(python_lower(U"\u0130stanbul")) == "i\u0307stanbul");  // İ -> i + combining dot above
  CHECK(u8(python_lower(U"\u1E9E")) == "\u00DF");                  // ẞ -> ß
  CHECK(u8(python_lower(U"\u212A")) == "k");                       // KELVIN SIGN
  CHECK(u8(python_lower(U"\u2126")) == "\u03C9");                  // OHM SIGN
  CHECK(u8(python_lower(U"\u01C5")) == "\u01C6");                  // Dž (title case)
  CHECK(u8(python_lower(U"\u13A0")) == "\uAB70");                  // Cherokee
  CHECK(u8(python_lower(U"\U00010400")) == "\U00010428");          // Deseret
  CHECK(u8(python_lower(U"\u0130")) == "i\u0307");
  // Final sigma: Σ after a cased letter and not before one becomes ς.
  CHECK(u8(python_lower(U"\u039F\u0394\u039F\u03A3")) == "\u03BF\u03B4\u03BF\u03C2");  // ΟΔΟΣ -> οδος
  CHECK(u8(python_lower(U"\u03A3")) == "\u03C3");
  CHECK(u8(python_lower(U"\u03A3\u0391")) == "\u03C3\u03B1");
  CHECK(u8(python_lower(U"A\u03A3 B")) == "a\u03C2 b");
  CHECK(u8(python_lower(U"A\u03A3'B")) == "a\u03C3'b");        // ' is case-ignorable: B follows
  CHECK(u8(python_lower(U"A\u0301\u03A3")) == "a\u0301\u03C2");  // skips the combining accent
}

TEST_CASE("unicode: NFC") {
  using adabldm::text::unicode::nfc;
  CHECK(u8(nfc(U"e\u0301")) == "\u00E9");
  CHECK(u8(nfc(U"\u00E9")) == "\u00E9");
  CHECK(u8(nfc(U"A\u030A")) == "\u00C5");
  CHECK(u8(nfc(U"\u212B")) == "\u00C5");                  // ANGSTROM SIGN (singleton)
  CHECK(u8(nfc(U"a\u0323\u0302")) == "\u1EAD");            // ậ from dot below + circumflex
  CHECK(u8(nfc(U"a\u0302\u0323")) == "\u1EAD");            // reordered before composing
  CHECK(u8(nfc(U"\u1100\u1161\u11A8")) == "\uAC01");      // Hangul L V T -> syllable
  CHECK(u8(nfc(U"\uAC00\u11A8")) == "\uAC01");            // LV + T
  CHECK(u8(nfc(U"\u0344")) == "\u0308\u0301");            // excluded: decomposes for good
  CHECK(u8(nfc(U"\u0958")) == "\u0915\u093C");            // composition exclusion
  CHECK(u8(nfc(U"\u0301e")) == "\u0301e");                // leading non-starter stays
  CHECK(u8(nfc(U"e\u0301\u0301")) == "\u00E9\u0301");     // second accent is blocked
  CHECK(u8(nfc(U"\U0001D15E")) == "\U0001D157\U0001D165");  // musical symbol (excluded)
  CHECK(u8(nfc(U"")) == "");
}

TEST_CASE("unicode: UTF-8 round trip and character classes") {
  const std::string s = "a\u00E9\u20AC\U0001F600";
  CHECK(u8(u32(s)) == s);
  CHECK(u32(s).size() == 4);
  using namespace adabldm::text::unicode;
  CHECK(is_python_space(U'\u3000'));
  CHECK(is_python_space(U'\x1C'));
  CHECK_FALSE(is_regex_space(U'\x1C'));
  CHECK(is_regex_letter(U'\u732B'));
  CHECK(is_regex_letter(U'\U00011F04'));  // Kawi (Unicode 15): the regex module's tables are newer than Python's
  CHECK(is_regex_number(U'\u0663'));
  CHECK(is_regex_other(U'!'));
  CHECK_FALSE(is_regex_other(U'\u0345'));
  CHECK(is_python_word(U'_'));
  CHECK(is_python_digit(U'\u0663'));
}

TEST_CASE("html.unescape with Python's rules") {
  auto unescape = [](const char* s) { return u8(adabldm::text::html_unescape(u32(s))); };
  CHECK(unescape("salt &amp; pepper") == "salt & pepper");
  CHECK(unescape("&amp;amp;") == "&amp;");
  CHECK(unescape("&amp") == "&");                   // legacy entity without ';'
  CHECK(unescape("&ampx") == "&x");                 // longest known prefix
  CHECK(unescape("&notit;") == "\u00ACit;");        // &not + "it;"
  CHECK(unescape("&notin;") == "\u2209");
  CHECK(unescape("&bogus;") == "&bogus;");
  CHECK(unescape("&#39;") == "'");
  CHECK(unescape("&#x27") == "'");
  CHECK(unescape("&#X41;") == "A");
  CHECK(unescape("&#128;") == "\u20AC");            // invalid charref -> Windows-1252
  CHECK(unescape("&#0;") == "\uFFFD");
  CHECK(unescape("&#xD800;") == "\uFFFD");
  CHECK(unescape("&#1114112;") == "\uFFFD");
  CHECK(unescape("&#99999999999999999999999;") == "\uFFFD");
  CHECK(unescape("&#1;") == "");                    // invalid code point -> nothing
  CHECK(unescape("&#xZZ;") == "&#xZZ;");
  CHECK(unescape("&#;") == "&#;");
  CHECK(unescape("a & b") == "a & b");
}

// ---- ftfy --------------------------------------------------------------------------------------------------------

namespace ftfy = adabldm::text::ftfy;
using adabldm::text::fix_text;

TEST_CASE("ftfy: documented fix_text examples") {
  // ftfy 6.3.1 docstrings / README.
  CHECK(fix_text("\u00E2\u0153\u201D No problems") == "\u2714 No problems");           // âœ” -> ✔
  CHECK(fix_text("&macr;\\_(\u00E3\u0083\u0084)_/&macr;") == "\u00AF\\_(\u30C4)_/\u00AF");  // ¯\_(ツ)_/¯
  // The docstring shows "..." here but that needs NFKC; with the default NFC the ellipsis stays.
  CHECK(fix_text("Broken text&hellip; it&#x2019;s \uFB02ubberi\uFB01c!") == "Broken text\u2026 it's flubberific!");
  CHECK(fix_text("\uFF2C\uFF2F\uFF35\uFF24\u3000\uFF2E\uFF2F\uFF29\uFF33\uFF25\uFF33") == "LOUD NOISES");
  CHECK(fix_text("u\u00CC\u02C6nicode") == "\u00FCnicode");
  CHECK(fix_text("HTML entities &lt;3") == "HTML entities <3");
  CHECK(fix_text("<em>HTML entities &lt;3</em>") == "<em>HTML entities &lt;3</em>");
  CHECK(fix_text("\uFEFFParty like\nit&rsquo;s 1999!") == "Party like\nit's 1999!");
  CHECK(fix_text("\x01\x1B[36;44mI&#x92;m blue, da ba dee da ba doo&#133;\x1B[0m") ==
        "I'm blue, da ba dee da ba doo\u2026");
  std::string many;
  for (int i = 0; i < 100000; ++i) many += "\uFB01";
  CHECK(u32(fix_text(many)).size() == 200000);
  CHECK(fix_text("") == "");
}

TEST_CASE("ftfy: fix_encoding examples") {
  CHECK(adabldm::text::fix_encoding("\u00C3\u00B3") == "\u00F3");                      // Ã³ -> ó
  CHECK(adabldm::text::fix_encoding("s\u00C3\u00B3") == "s\u00F3");
  CHECK(adabldm::text::fix_encoding("voil\u00C3 le travail") == "voil\u00E0 le travail");
  CHECK(adabldm::text::fix_encoding("sch\u00C3\u00B6n") == "sch\u00F6n");
  CHECK(adabldm::text::fix_encoding("&ATILDE;&SUP3;") == "&ATILDE;&SUP3;");  // not its job
  CHECK(adabldm::text::fix_encoding("\u00EF\u00BB\u00BF") == "\uFEFF");     // a mojibake'd byte-order mark
}

TEST_CASE("ftfy: unescape_html") {
  auto un = [](const char* s) { return u8(ftfy::unescape_html(u32(s))); };
  CHECK(un("&lt;tag&gt;") == "<tag>");
  CHECK(un("&Jscr;ohn &HilbertSpace;ancock") == "\U0001D4A5ohn \u210Bancock");
  CHECK(un("&checkmark;") == "\u2713");
  CHECK(un("P&eacute;rez") == "P\u00E9rez");
  CHECK(un("P&EACUTE;REZ") == "P\u00C9REZ");
  CHECK(un("BUNDESSTRA&SZLIG;E") == "BUNDESSTRASSE");
  CHECK(un("&ntilde; &Ntilde; &NTILDE; &nTILDE;") == "\u00F1 \u00D1 \u00D1 &nTILDE;");
  CHECK(un("euro &#x80;") == "euro \u20AC");
  CHECK(un("this&not that") == "this&not that");  // needs the ';' unlike html.unescape
  CHECK(un("&amp") == "&amp");
  CHECK(un("&#65abc;") == "&#65abc;");             // html.unescape would leave "abc;" behind: keep it all
  // 'auto': a segment with '<' is HTML, and so is every later line.
  CHECK(fix_text("&amp;\n<html>\n&amp;") == "&\n<html>\n&amp;");
  adabldm::text::FixTextConfig always;
  always.unescape_html = adabldm::text::FixTextConfig::Html::Always;
  CHECK(fix_text("&amp;\n<html>\n&amp;", always) == "&\n<html>\n&");
  adabldm::text::FixTextConfig never;
  never.unescape_html = adabldm::text::FixTextConfig::Html::Never;
  CHECK(fix_text("&amp;\n<html>\n&amp;", never) == "&amp;\n<html>\n&amp;");
  CHECK(u8(ftfy::fix_text_segment(u32("&amp;\n<html>\n&amp;"))) == "&amp;\n<html>\n&amp;");
  CHECK(u8(ftfy::fix_text_segment(u32("&lt;&gt;"))) == "<>");
  CHECK(u8(ftfy::fix_text_segment(u32("jednocze&sacute;nie"))) == "jednocze\u015Bnie");
  CHECK(u8(ftfy::fix_text_segment(u32("JEDNOCZE&Sacute;NIE"))) == "JEDNOCZE\u015ANIE");
  CHECK(u8(ftfy::fix_text_segment(u32("ellipsis&#133;"))) == "ellipsis\u2026");
  CHECK(u8(ftfy::fix_text_segment(u32("ellipsis&#x85;"))) == "ellipsis\u2026");
  CHECK(u8(ftfy::fix_text_segment(u32("broken&#x81;"))) == "broken\u0081");
  CHECK(fix_text("&amp;amp;amp;") == "&");  // repeated until stable
}

TEST_CASE("ftfy: the single-purpose fixers") {
  CHECK(u8(ftfy::remove_terminal_escapes(u32("\x1B[36;44mI'm blue, da ba dee da ba doo...\x1B[0m"))) ==
        "I'm blue, da ba dee da ba doo...");
  CHECK(u8(ftfy::remove_terminal_escapes(u32("\x1B[\u0663mx"))) == "x");  // \d is any decimal digit
  CHECK(u8(ftfy::remove_terminal_escapes(u32("\x1B[12"))) == "\x1B[12");
  CHECK(u8(ftfy::uncurl_quotes(u32("\u201Chere\u2019s a test\u201D"))) == "\"here's a test\"");
  CHECK(u8(ftfy::uncurl_quotes(u32("\u02BC\u201B\u201F"))) == "''\"");
  CHECK(u8(ftfy::fix_latin_ligatures(u32("\uFB02u\uFB03e\uFB06"))) == "fluffiest");
  CHECK(u8(ftfy::fix_latin_ligatures(u32("\u0149 \u01C6 \u0132"))) == "\u02BCn d\u017E IJ");
  CHECK(u8(ftfy::fix_character_width(u32("\uFF2C\uFF2F\uFF35\uFF24\u3000\uFF2E\uFF2F\uFF29\uFF33\uFF25\uFF33"))) ==
        "LOUD NOISES");
  CHECK(u8(ftfy::fix_character_width(u32("\uFF35\uFF80\uFF70\uFF9D"))) == "U\u30BF\u30FC\u30F3");  // Uターン
  CHECK(u8(ftfy::fix_character_width(u32("\uFFE3"))) == " \u0304");
  CHECK(u8(ftfy::fix_line_breaks(u32("This string is made of two things:\u20291. Unicode\u20282. Spite"))) ==
        "This string is made of two things:\n1. Unicode\n2. Spite");
  CHECK(u8(ftfy::fix_line_breaks(u32("Content-type: text/plain\r\n\r\nHi."))) == "Content-type: text/plain\n\nHi.");
  CHECK(u8(ftfy::fix_line_breaks(u32("This is how Microsoft \r trolls Mac users"))) ==
        "This is how Microsoft \n trolls Mac users");
  CHECK(u8(ftfy::fix_line_breaks(u32("What is this \u0085 I don't even"))) == "What is this \n I don't even");
  CHECK(u8(ftfy::fix_line_breaks(u32("\r\r\n"))) == "\n\n");
  CHECK(ftfy::fix_surrogates(std::u32string{0xD83D, 0xDCA9}) == U"\U0001F4A9");
  CHECK(ftfy::fix_surrogates(std::u32string{0xDCA9, 0xD83D}) == U"\uFFFD\uFFFD");
  CHECK(ftfy::fix_surrogates(std::u32string{0xDBFF, 0xDFFF}) == U"\U0010FFFF");
  CHECK(ftfy::fix_surrogates(std::u32string{0xD800, 0xDC00}) == U"\U00010000");
  CHECK(u8(ftfy::remove_control_chars(u32("\uFEFFSometimes, \uFFFCbad ideas \x7F\uFFFAlike these characters\uFFFB "
                                          "\u206Aget standardized.\n"))) ==
        "Sometimes, bad ideas like these characters get standardized.\n");
  CHECK(u8(ftfy::remove_control_chars(u32("\t\n\f\r\u200D\u202E\U000E0065"))) == "\t\n\f\r\u200D\u202E\U000E0065");
  CHECK(u8(ftfy::fix_c1_controls(u32("\u0080\u0081\u0085\u0092"))) == "\u20AC\u0081\u2026\u2019");
  // Surrogates reach fix_text only through the UTF-32 entry point.
  CHECK(ftfy::fix_text(std::u32string{U'a', 0xD83D, 0xDE00, U'b'}) == U"a\U0001F600b");
}

TEST_CASE("ftfy: byte-level repairs") {
  CHECK(ftfy::restore_byte_a0("voil\xC3 le") == "voil\xC3\xA0 le");
  // Before "s " / "quele" (Portuguese "às", "àquele") no space is kept: the space itself was the A0.
  CHECK(ftfy::restore_byte_a0("\xC3 s ") == "\xC3\xA0s ");
  CHECK(ftfy::restore_byte_a0("\xC3 quele") == "\xC3\xA0quele");
  CHECK(ftfy::restore_byte_a0("\xE2 \x80") == "\xE2\xA0\x80");
  CHECK(ftfy::replace_lossy_sequences("\xE2\x80\x1A") == "\xEF\xBF\xBD");
  CHECK(ftfy::replace_lossy_sequences("\xE2\x80?x") == "\xEF\xBF\xBDx");
  CHECK(ftfy::replace_lossy_sequences("a\x1A") == "a\xEF\xBF\xBD");
}

TEST_CASE("ftfy: ftfy's own test-case files") {
  // tests/data/ftfy/*.json: ftfy 6.3.1's tests/test-cases. For "pass" cases fix_text must give `fixed`,
  // fix_encoding `fixed-encoding` (default `fixed`), and an extra layer of UTF-8/Latin-1 mojibake must
  // still come out as `fixed`. For "fail" cases (known false negatives/positives of the heuristic) ftfy
  // asserts that fix_encoding does NOT give the ideal answer, and so do we.
  int total = 0, passed = 0;
  for (const char* name : {"synthetic", "in-the-wild", "negative", "language-names", "known-failures"}) {
    const json cases = load_json(kTestData + "/ftfy/" + name + ".json");
    int file_total = 0, file_passed = 0;
    for (const json& c : cases) {
      const std::string label = c.at("label");
      const std::string original = c.at("original");
      const std::string fixed = c.at("fixed");
      const std::string fixed_encoding = c.value("fixed-encoding", fixed);
      CAPTURE(label);
      CAPTURE(original);
      bool ok;
      if (c.at("expect") == "pass") {
        const std::string got = fix_text(original);
        const std::string got_encoding = adabldm::text::fix_encoding(original);
        // original.encode("utf-8").decode("latin-1"): every byte becomes the code point with its value
        std::u32string extra;
        for (unsigned char b : original) extra += static_cast<char32_t>(b);
        const std::string got_extra = u8(ftfy::fix_text(extra));
        CHECK(got == fixed);
        CHECK(got_encoding == fixed_encoding);
        CHECK(got_extra == fixed);
        ok = got == fixed && got_encoding == fixed_encoding && got_extra == fixed;
      } else {
        ok = adabldm::text::fix_encoding(original) != fixed_encoding;
        CHECK(ok);
      }
      ++file_total;
      file_passed += ok;
    }
    MESSAGE("ftfy test cases ", std::string(name), ": ", file_passed, "/", file_total);
    total += file_total;
    passed += file_passed;
  }
  MESSAGE("ftfy test cases overall: ", passed, "/", total);
  CHECK(total == 161);
  CHECK(passed == total);
}

TEST_CASE("ftfy: the mojibake heuristic") {
  using adabldm::text::mojibake::is_bad;
  CHECK(is_bad(U"\u00C3\u00A9"));                // Ã©
  CHECK(is_bad(U"\u00E2\u20AC\u2122"));          // â€™
  CHECK(is_bad(U"\u0080"));                      // any C1 control
  CHECK_FALSE(is_bad(U"caf\u00E9 cr\u00E8me"));
  CHECK_FALSE(is_bad(U"\u00A3100 \u00D7 2"));
  CHECK_FALSE(is_bad(U"\u2764\uFE0F\u2764\uFE0F"));
  CHECK_FALSE(is_bad(U"\U0001F385\U0001F3FF\U0001F385\U0001F3FD"));
  CHECK(is_bad(U"\u00C3 "));                     // only at the very start: ^[ÃÂ][ ]
  CHECK_FALSE(is_bad(U"1\u00C3 "));
}
