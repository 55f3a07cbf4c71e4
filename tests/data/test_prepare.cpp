// tests/data/test_prepare.cpp — text/JSON/JSONL -> token file, its errors, atomic output.
#include <gtest/gtest.h>

#include "data/prepare.h"
#include "data/sampler.h"
#include "data/token_file.h"
#include "data/tokenizer.h"
#include "data_test_util.h"

using namespace ptrain;
using namespace ptrain::data;
using namespace ptrain::data::testing;
namespace fs = std::filesystem;

namespace {

std::vector<int32_t> all_tokens(const std::string& path) {
  auto f = h5::File::open(path);
  const int64_t n = h5::shape(f, "tokens")[0];
  std::vector<int32_t> v(static_cast<size_t>(n));
  h5::read_ints(f, "tokens", 0, n, v.data());
  return v;
}
std::string decoded(const std::string& path) { return make_tokenizer("byte")->decode(all_tokens(path)); }

/// Byte size of /tokens' stored element and whether it is signed.
std::pair<size_t, bool> token_type(const std::string& path) {
  auto f = h5::File::open(path);
  hid_t d = H5Dopen2(f.id(), "tokens", H5P_DEFAULT);
  hid_t t = H5Dget_type(d);
  auto r = std::make_pair(H5Tget_size(t), H5Tget_sign(t) == H5T_SGN_2);
  H5Tclose(t);
  H5Dclose(d);
  return r;
}

PrepareStats run(const std::vector<fs::path>& in, const fs::path& out) {
  PrepareOptions o;
  for (const auto& p : in) o.inputs.push_back(p.string());
  o.out = out.string();
  return prepare(o);
}

void expect_user_error(const std::vector<fs::path>& in, const fs::path& out, const std::string& part,
                       const std::string& tokenizer = "byte") {
  PrepareOptions o;
  for (const auto& p : in) o.inputs.push_back(p.string());
  o.out = out.string();
  o.tokenizer = tokenizer;
  try {
    prepare(o);
    ADD_FAILURE() << "no error";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out.string() + ".tmp")) << "temporary output left behind";
}

}  // namespace

TEST(Prepare, PlainText) {
  const auto d = fresh_dir("data_prepare_txt");
  write_text(d / "a.txt", "hello\nworld");
  write_text(d / "b.md", "second doc\n");
  write_text(d / "empty.txt", "");
  auto st = run({d / "a.txt", d / "empty.txt", d / "b.md"}, d / "out.h5");
  EXPECT_EQ(st.documents, 2);  // an empty file holds no document
  EXPECT_EQ(st.tokens, 12 + 12);
  EXPECT_EQ(decoded((d / "out.h5").string()), "hello\nworld\nsecond doc\n\n");
  auto info = inspect_token_file((d / "out.h5").string());
  EXPECT_EQ(info.tokenizer, "byte");
  EXPECT_EQ(info.vocab_size, 256);
  EXPECT_EQ(info.num_tokens, 24);
  EXPECT_EQ(token_type((d / "out.h5").string()), std::make_pair(size_t{1}, false));  // uint8
  EXPECT_FALSE(fs::exists(d / "out.h5.tmp"));
}

TEST(Prepare, JsonArrayOfSentences) {
  // Like the nlp-corpus package: a JSON array of English sentences; plus the other accepted shapes.
  const auto d = fresh_dir("data_prepare_json");
  write_text(d / "sentences.json",
             R"(["The quick brown fox jumps over the lazy dog.", "She sells sea shells.", "Ünïcödé ok"])");
  write_text(d / "objects.JSON", R"([{"text": "one", "id": 1}, [["two", "three"]], {"text": ""}])");
  write_text(d / "single.json", R"("just one")");
  auto st = run({d / "sentences.json", d / "objects.JSON", d / "single.json"}, d / "corpus.h5");
  EXPECT_EQ(st.documents, 3 + 4 + 1);
  EXPECT_EQ(decoded((d / "corpus.h5").string()),
            "The quick brown fox jumps over the lazy dog.\nShe sells sea shells.\nÜnïcödé ok\none\ntwo\nthree\n\njust "
            "one\n");
  EXPECT_EQ(st.tokens, static_cast<int64_t>(all_tokens((d / "corpus.h5").string()).size()));
}

TEST(Prepare, Jsonl) {
  const auto d = fresh_dir("data_prepare_jsonl");
  write_text(d / "docs.jsonl", "\"first\"\n\n{\"text\": \"second\", \"meta\": {\"x\": 1}}\n   \n\"third\"");
  auto st = run({d / "docs.jsonl"}, d / "out.h5");
  EXPECT_EQ(st.documents, 3);
  EXPECT_EQ(decoded((d / "out.h5").string()), "first\nsecond\nthird\n");
}

TEST(Prepare, LargeTextIsStreamedInPiecesExactly) {
  // ~9 MiB with lines: crosses the 4 MiB read blocks and the 1M-token flushes.
  const auto d = fresh_dir("data_prepare_large");
  std::string text;
  for (int i = 0; text.size() < (size_t{9} << 20); ++i) text += "line " + std::to_string(i) + " of the corpus\n  indented\n";
  write_text(d / "big.txt", text);
  auto st = run({d / "big.txt"}, d / "big.h5");
  EXPECT_EQ(st.documents, 1);
  EXPECT_EQ(st.tokens, static_cast<int64_t>(text.size()) + 1);
  EXPECT_EQ(decoded((d / "big.h5").string()), text + "\n");
  // The result feeds the sampler directly.
  SamplerOptions o;
  o.seq_len = 64;
  o.global_batch = 4;
  o.shuffle = true;
  Sampler s(std::make_shared<const TokenDataset>((d / "big.h5").string()), o);
  std::vector<int32_t> in(256), tg(256);
  s.batch(3, in.data(), tg.data(), 256);
  EXPECT_EQ(in[1], tg[0]);
}

TEST(Prepare, MalformedJsonLeavesNoOutput) {
  const auto d = fresh_dir("data_prepare_malformed");
  write_text(d / "ok.txt", "fine text");
  write_text(d / "bad.json", "[\"a\", \"b\",, ]");
  expect_user_error({d / "ok.txt", d / "bad.json"}, d / "out.h5", "bad.json' is not valid JSON: ");
  EXPECT_FALSE(fs::exists(d / "out.h5"));
  write_text(d / "bad.jsonl", "\"a\"\n{\"text\": \n");
  expect_user_error({d / "bad.jsonl"}, d / "out.h5", "bad.jsonl' line 2 is not valid JSON");
  EXPECT_FALSE(fs::exists(d / "out.h5"));
}

TEST(Prepare, JsonWithoutText) {
  const auto d = fresh_dir("data_prepare_notext");
  write_text(d / "empty.json", "[]");
  expect_user_error({d / "empty.json"}, d / "o.h5", "holds no text");
  write_text(d / "numbers.json", "[\"ok\", 1, 2]");
  expect_user_error({d / "numbers.json"}, d / "o.h5", "the top-level value[1] is a JSON number");
  write_text(d / "object.json", "{\"title\": \"no text field\"}");
  expect_user_error({d / "object.json"}, d / "o.h5", "object without a \"text\" string field");
  write_text(d / "blank.jsonl", "\n\n");
  expect_user_error({d / "blank.jsonl"}, d / "o.h5", "holds no text");
  write_text(d / "empty.txt", "");  // no document at all: 0 tokens
  expect_user_error({d / "empty.txt"}, d / "o.h5", "the inputs gave 0 tokens; a data file needs at least 2");
  EXPECT_FALSE(fs::exists(d / "o.h5"));
}

TEST(Prepare, InputAndOptionErrors) {
  const auto d = fresh_dir("data_prepare_errors");
  write_text(d / "a.txt", "some text");
  expect_user_error({d / "missing.txt"}, d / "o.h5", "missing.txt' does not exist");
  expect_user_error({d / "a.txt"}, d / "a.txt", "is also an input");
  expect_user_error({d / "a.txt"}, d / "." / "a.txt", "is also an input");
  expect_user_error({d / "a.txt"}, d / "o.h5", "unknown tokenizer 'nope' (registered: byte", "nope");
  expect_user_error({}, d / "o.h5", "no input files");
  expect_user_error({d}, d / "o.h5", "is a directory");
  EXPECT_EQ(fs::file_size(d / "a.txt"), 9u);  // the input is untouched
}

TEST(Prepare, RerunOverwritesAtomically) {
  const auto d = fresh_dir("data_prepare_rerun");
  write_text(d / "a.txt", "first version");
  write_text(d / "b.txt", "second");
  run({d / "a.txt"}, d / "sub" / "out.h5");  // the output directory is created
  EXPECT_EQ(decoded((d / "sub" / "out.h5").string()), "first version\n");
  // A stale temporary from a killed run is simply replaced.
  write_text(d / "sub" / "out.h5.tmp", "garbage from a killed run");
  run({d / "b.txt"}, d / "sub" / "out.h5");
  EXPECT_EQ(decoded((d / "sub" / "out.h5").string()), "second\n");
  EXPECT_FALSE(fs::exists(d / "sub" / "out.h5.tmp"));
  // A failing re-run leaves the previous output intact.
  write_text(d / "bad.json", "{");
  expect_user_error({d / "a.txt", d / "bad.json"}, d / "sub" / "out.h5", "not valid JSON");
  EXPECT_EQ(decoded((d / "sub" / "out.h5").string()), "second\n");
}
