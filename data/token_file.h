// data/token_file.h — HDF5 token files: inspection with one-line user errors, and reads.
//
// Format (DESIGN.md "Data"): a 1-D integer dataset /tokens (any integer type) and the
// attributes `tokenizer` (string) and `vocab_size` (integer), on the root group (also
// accepted on /tokens). At least 2 tokens. Ids are checked against the *model's*
// vocabulary when read: an id >= model.vocab_size (or negative) is a UserError naming
// both numbers; a larger (padded) model vocabulary is fine.
#pragma once
#include <cstdint>
#include <string>

#include "core/h5io.h"

namespace ptrain::data {

struct TokenFileInfo {
  std::string path, tokenizer;
  int64_t num_tokens = 0, vocab_size = 0;
};

/// Checks the format and returns what the file holds. Throws a one-line UserError naming
/// the path and ending with a HINT for: a missing, unreadable or non-HDF5 file, no /tokens,
/// /tokens not 1-D or not integer, a missing or invalid `tokenizer`/`vocab_size`
/// attribute, fewer than 2 tokens.
TokenFileInfo inspect_token_file(const std::string& path);

/// An open token file (move-only). Not thread-safe (HDF5 serial).
class TokenDataset {
 public:
  /// Inspects (see inspect_token_file) and opens the file for reading.
  explicit TokenDataset(const std::string& path);

  const TokenFileInfo& info() const { return info_; }
  const std::string& path() const { return info_.path; }
  int64_t num_tokens() const { return info_.num_tokens; }

  /// out[i] = tokens[start + i], i < count. Throws UserError "token id X at position P in
  /// FILE is >= model.vocab_size = V" (or "is negative") for the first id outside
  /// [0, model_vocab).
  void read(int64_t start, int64_t count, int32_t* out, int64_t model_vocab) const;

 private:
  TokenFileInfo info_;
  h5::File file_;
  h5::Dataset tokens_;
};

}  // namespace ptrain::data
