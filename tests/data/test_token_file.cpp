// tests/data/test_token_file.cpp — token file inspection (every error case is a one-line
// UserError naming the file) and reads with the model-vocabulary check.
#include <gtest/gtest.h>
#include <unistd.h>

#include "data/token_file.h"
#include "data_test_util.h"

using namespace ptrain;
using namespace ptrain::data;
using namespace ptrain::data::testing;
namespace fs = std::filesystem;

namespace {

/// Expects inspect_token_file(path) to throw a one-line UserError naming `path` and holding `part`.
void expect_inspect_error(const std::string& path, const std::string& part) {
  try {
    inspect_token_file(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find(path), std::string::npos) << m;
    EXPECT_NE(m.find(part), std::string::npos) << m;
    EXPECT_NE(m.find("HINT"), std::string::npos) << m;
    EXPECT_EQ(m.find('\n'), std::string::npos) << m;
  }
}

}  // namespace

TEST(TokenFile, InspectValidFiles) {
  const auto d = fresh_dir("data_token_file_valid");
  const std::string p8 = (d / "u8.h5").string(), p16 = (d / "u16.h5").string();
  make_token_file(p8, {1, 2, 3, 255}, h5::IntStore::u8, "byte", 256);
  make_token_file(p16, iota_tokens(100, 60000), h5::IntStore::u16, "bpe", 65536);
  auto i8 = inspect_token_file(p8);
  EXPECT_EQ(i8.path, p8);
  EXPECT_EQ(i8.tokenizer, "byte");
  EXPECT_EQ(i8.num_tokens, 4);
  EXPECT_EQ(i8.vocab_size, 256);
  auto i16 = inspect_token_file(p16);
  EXPECT_EQ(i16.num_tokens, 100);
  EXPECT_EQ(i16.vocab_size, 65536);

  // Attributes on /tokens instead of the root are accepted too.
  const std::string pa = (d / "attrs_on_dataset.h5").string();
  {
    auto f = h5::File::create(pa);
    h5::write(f, "tokens", Tensor::from_vector_i32({5, 6, 7}, {3}), DType::i32);
    h5::write_attr(f, "tokens", "tokenizer", "byte");
    h5::write_attr(f, "tokens", "vocab_size", int64_t{256});
  }
  EXPECT_EQ(inspect_token_file(pa).num_tokens, 3);
}

TEST(TokenFile, MissingNotHdf5AndDirectory) {
  const auto d = fresh_dir("data_token_file_errors");
  expect_inspect_error((d / "missing.h5").string(), "does not exist");
  expect_inspect_error((d / "missing.h5").string(), "ptrain prepare");
  write_text(d / "corpus.txt", "plain text, not HDF5\n");
  expect_inspect_error((d / "corpus.txt").string(), "not an HDF5 file");
  fs::create_directories(d / "dir.h5");
  expect_inspect_error((d / "dir.h5").string(), "directory");
}

TEST(TokenFile, Unreadable) {
  if (::geteuid() == 0) GTEST_SKIP() << "skipped: running as root, permissions are not enforced";
  const auto d = fresh_dir("data_token_file_unreadable");
  const std::string p = (d / "locked.h5").string();
  make_token_file(p, {1, 2, 3});
  fs::permissions(p, fs::perms::none);
  expect_inspect_error(p, "not readable");
  fs::permissions(p, fs::perms::owner_read | fs::perms::owner_write);
}

TEST(TokenFile, BadContents) {
  const auto d = fresh_dir("data_token_file_contents");
  auto path = [&](const char* n) { return (d / n).string(); };
  {
    auto f = h5::File::create(path("no_tokens.h5"));
    h5::write(f, "ids", Tensor::from_vector_i32({1, 2}, {2}), DType::i32);
  }
  expect_inspect_error(path("no_tokens.h5"), "no dataset /tokens (it holds: ids)");
  {
    auto f = h5::File::create(path("2d.h5"));
    h5::write(f, "tokens", Tensor::from_vector_i32({1, 2, 3, 4}, {2, 2}), DType::i32);
    h5::write_attr(f, "/", "tokenizer", "byte");
    h5::write_attr(f, "/", "vocab_size", int64_t{256});
  }
  expect_inspect_error(path("2d.h5"), "has shape [2, 2]; expected a 1-D");
  {
    auto f = h5::File::create(path("float.h5"));
    h5::write(f, "tokens", Tensor::from_vector({1, 2, 3}, {3}), DType::f32);
    h5::write_attr(f, "/", "tokenizer", "byte");
    h5::write_attr(f, "/", "vocab_size", int64_t{256});
  }
  expect_inspect_error(path("float.h5"), "stored as f32; expected integer");

  auto with_attrs = [&](const char* n, auto tok, auto vocab, bool has_tok, bool has_vocab, int64_t ntok = 3) {
    auto f = h5::File::create(path(n));
    h5::IntAppender a(f, "tokens", h5::IntStore::u8);
    auto t = iota_tokens(ntok);
    a.append(t.data(), ntok);
    if (has_tok) h5::write_attr(f, "/", "tokenizer", tok);
    if (has_vocab) h5::write_attr(f, "/", "vocab_size", vocab);
  };
  with_attrs("no_tokenizer.h5", "byte", int64_t{256}, false, true);
  expect_inspect_error(path("no_tokenizer.h5"), "no attribute 'tokenizer'");
  with_attrs("int_tokenizer.h5", int64_t{3}, int64_t{256}, true, true);
  expect_inspect_error(path("int_tokenizer.h5"), "'tokenizer' is not a string");
  with_attrs("empty_tokenizer.h5", "", int64_t{256}, true, true);
  expect_inspect_error(path("empty_tokenizer.h5"), "'tokenizer' is empty");
  with_attrs("no_vocab.h5", "byte", int64_t{256}, true, false);
  expect_inspect_error(path("no_vocab.h5"), "no attribute 'vocab_size'");
  with_attrs("string_vocab.h5", "byte", std::string("256"), true, true);
  expect_inspect_error(path("string_vocab.h5"), "'vocab_size' is not one integer");
  with_attrs("zero_vocab.h5", "byte", int64_t{0}, true, true);
  expect_inspect_error(path("zero_vocab.h5"), "vocab_size = 0 is not in [1, 2^31]");
  with_attrs("one_token.h5", "byte", int64_t{256}, true, true, 1);
  expect_inspect_error(path("one_token.h5"), "holds 1 token; at least 2");
  with_attrs("two_tokens.h5", "byte", int64_t{256}, true, true, 2);
  EXPECT_EQ(inspect_token_file(path("two_tokens.h5")).num_tokens, 2);
}

TEST(TokenFile, ReadChecksTheModelVocabulary) {
  const auto d = fresh_dir("data_token_file_read");
  const std::string p = (d / "t.h5").string();
  make_token_file(p, {10, 20, 30, 40, 50, 300, 70, -3}, h5::IntStore::i32, "test", 256);
  TokenDataset ds(p);
  EXPECT_EQ(ds.num_tokens(), 8);
  std::vector<int32_t> out(5);
  ds.read(0, 5, out.data(), 256);
  EXPECT_EQ(out, (std::vector<int32_t>{10, 20, 30, 40, 50}));
  ds.read(1, 2, out.data(), 31);  // 20, 30 < 31
  EXPECT_EQ(out[0], 20);
  EXPECT_EQ(out[1], 30);
  try {
    ds.read(3, 3, out.data(), 256);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("token id 300 at position 5 in " + p + " is >= model.vocab_size = 256"),
              std::string::npos)
        << e.what();
  }
  ds.read(3, 3, out.data(), 384);  // a padded model vocabulary is fine
  EXPECT_EQ(out[2], 300);
  try {
    ds.read(6, 2, out.data(), 384);
    FAIL();
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("token id -3 at position 7 in " + p + " is negative"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(ds.read(6, 3, out.data(), 384), Error);  // past the end: internal error
}
