// tests/data/data_test_util.h — shared helpers of the data tests: a per-test scratch
// directory under $PTRAIN_TEST_TMP and a token-file writer.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/h5io.h"

namespace ptrain::data::testing {

/// A fresh (emptied) directory $PTRAIN_TEST_TMP/<name>.
inline std::filesystem::path fresh_dir(const std::string& name) {
  const char* env = std::getenv("PTRAIN_TEST_TMP");
  std::filesystem::path d = std::filesystem::path(env && *env ? env : "/tmp") / name;
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}

/// Writes a token file: /tokens stored as `store`, root attributes tokenizer and vocab_size.
inline void make_token_file(const std::string& path, const std::vector<int32_t>& tokens,
                            h5::IntStore store = h5::IntStore::i32, const std::string& tokenizer = "test",
                            int64_t vocab_size = 1000) {
  auto f = h5::File::create(path);
  h5::IntAppender a(f, "tokens", store, 64);
  a.append(tokens.data(), static_cast<int64_t>(tokens.size()));
  h5::write_attr(f, "/", "tokenizer", tokenizer);
  h5::write_attr(f, "/", "vocab_size", vocab_size);
}

/// 0, 1, ..., n-1 plus `base`.
inline std::vector<int32_t> iota_tokens(int64_t n, int32_t base = 0) {
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = base + static_cast<int32_t>(i);
  return v;
}

}  // namespace ptrain::data::testing
