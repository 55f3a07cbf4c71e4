// data/token_file.cpp — token file inspection and reads.
#include "data/token_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <limits>

#include "core/error.h"

namespace ptrain::data {

namespace {

std::string prepare_hint(const std::string& path) {
  return fmt::format("HINT: create it from text with `ptrain prepare --input corpus.txt --out {}`", path);
}

/// Attribute `attr` from the root group, else from /tokens; empty object name when absent.
std::string attr_holder(const h5::File& f, const std::string& attr) {
  if (h5::has_attr(f, "/", attr)) return "/";
  if (h5::has_attr(f, "tokens", attr)) return "tokens";
  return "";
}

}  // namespace

TokenFileInfo inspect_token_file(const std::string& path) {
  struct stat sb{};
  PT_USER_CHECK(::stat(path.c_str(), &sb) == 0, "data file '{}' does not exist. {}", path, prepare_hint(path));
  PT_USER_CHECK(!S_ISDIR(sb.st_mode), "data file '{}' is a directory, not an HDF5 token file. HINT: give the .h5 file",
                path);
  PT_USER_CHECK(::access(path.c_str(), R_OK) == 0,
                "data file '{}' is not readable (permission denied). HINT: check the file's permissions", path);
  PT_USER_CHECK(h5::File::is_hdf5(path),
                "data file '{}' is not an HDF5 file (a token file is made by `ptrain prepare`). HINT: convert text "
                "with `ptrain prepare --input {} --out data.h5` and point data.path at data.h5",
                path, path);
  h5::File f = h5::File::open(path);
  if (!h5::has(f, "tokens")) {
    std::string held;
    for (const auto& d : h5::list_datasets(f)) held += (held.empty() ? "" : ", ") + d;
    throw UserError(fmt::format("data file '{}' has no dataset /tokens (it holds: {}). {}", path,
                                held.empty() ? "no datasets" : held, prepare_hint(path)));
  }
  h5::Dataset tokens(f, "tokens");
  PT_USER_CHECK(tokens.shape().size() == 1,
                "/tokens in data file '{}' has shape {}; expected a 1-D array of token ids. {}", path,
                shape_str(tokens.shape()), prepare_hint(path));
  PT_USER_CHECK(tokens.stored_type() == h5::StoredType::integer,
                "/tokens in data file '{}' is stored as {}; expected integer token ids. {}", path,
                h5::stored_type_name(tokens.stored_type()), prepare_hint(path));

  TokenFileInfo info;
  info.path = path;
  info.num_tokens = tokens.shape()[0];
  const std::string tok_at = attr_holder(f, "tokenizer");
  PT_USER_CHECK(!tok_at.empty(), "data file '{}' has no attribute 'tokenizer' (a string naming the tokenizer). {}",
                path, prepare_hint(path));
  try {
    info.tokenizer = h5::read_attr_string(f, tok_at, "tokenizer");
  } catch (const UserError&) {
    throw UserError(fmt::format("data file '{}': attribute 'tokenizer' is not a string. {}", path, prepare_hint(path)));
  }
  PT_USER_CHECK(!info.tokenizer.empty(), "data file '{}': attribute 'tokenizer' is empty. {}", path,
                prepare_hint(path));
  const std::string voc_at = attr_holder(f, "vocab_size");
  PT_USER_CHECK(!voc_at.empty(), "data file '{}' has no attribute 'vocab_size' (an integer). {}", path,
                prepare_hint(path));
  try {
    info.vocab_size = h5::read_attr_int(f, voc_at, "vocab_size");
  } catch (const UserError&) {
    throw UserError(
        fmt::format("data file '{}': attribute 'vocab_size' is not one integer. {}", path, prepare_hint(path)));
  }
  PT_USER_CHECK(info.vocab_size > 0 && info.vocab_size <= int64_t{std::numeric_limits<int32_t>::max()} + 1,
                "data file '{}': attribute vocab_size = {} is not in [1, 2^31]. {}", path, info.vocab_size,
                prepare_hint(path));
  PT_USER_CHECK(info.num_tokens >= 2,
                "data file '{}' holds {} token{}; at least 2 are needed (one input and its target). HINT: prepare "
                "it from more text with `ptrain prepare`",
                path, info.num_tokens, info.num_tokens == 1 ? "" : "s");
  return info;
}

TokenDataset::TokenDataset(const std::string& path) : info_(inspect_token_file(path)) {
  file_ = h5::File::open(path);
  tokens_ = h5::Dataset(file_, "tokens", size_t{16} << 20);
}

void TokenDataset::read(int64_t start, int64_t count, int32_t* out, int64_t model_vocab) const {
  PT_CHECK(start >= 0 && count >= 0 && start + count <= info_.num_tokens,
           "token range [{}, {}) is outside '{}' ({} tokens)", start, start + count, info_.path, info_.num_tokens);
  PT_CHECK(model_vocab > 0, "model vocabulary size must be positive, got {}", model_vocab);
  tokens_.read_ints(start, count, out);
  for (int64_t i = 0; i < count; ++i) {
    const int32_t id = out[i];
    if (id >= 0 && id < model_vocab) [[likely]]
      continue;
    if (id < 0)
      throw UserError(fmt::format("token id {} at position {} in {} is negative. HINT: the file is damaged or was not"
                                  " written as token ids; prepare it again with `ptrain prepare`",
                                  id, start + i, info_.path));
    throw UserError(fmt::format("token id {} at position {} in {} is >= model.vocab_size = {}. HINT: set "
                                "model.vocab_size >= {} (the file's tokenizer '{}' has vocab_size {})",
                                id, start + i, info_.path, model_vocab, std::max<int64_t>(info_.vocab_size, id + 1),
                                info_.tokenizer, info_.vocab_size));
  }
}

}  // namespace ptrain::data
