// data/prepare.h — text -> HDF5 token file (`ptrain prepare`).
//
// Inputs, by extension (case-insensitive):
//   .json         one JSON value: a string, an object with a "text" string, or an array of
//                 those (nested arrays are flattened), e.g. a JSON array of sentences;
//   .jsonl/.ndjson one such value per line (blank lines skipped);
//   anything else plain text: the whole file is one document.
// Each document is encoded, then "\n" encoded is appended. Output: /tokens stored as the
// smallest type that holds vocab_size-1 (uint8 up to 256, uint16 up to 65536, else int32),
// chunked, with root attributes tokenizer (string) and vocab_size (int64). The file is
// written as OUT.tmp and renamed, so a failure or a kill never leaves a damaged OUT.
// Memory: one input file plus a bounded token buffer (plain text is streamed).
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ptrain::data {

struct PrepareStats {
  int64_t documents = 0, tokens = 0;
};

struct PrepareOptions {
  std::vector<std::string> inputs;
  std::string out;
  std::string tokenizer = "byte";
  /// Called after each input file with the totals so far (optional; for progress lines).
  std::function<void(const std::string& input, const PrepareStats& total)> progress;
};

/// Tokenizes `inputs` into `out`. Throws UserError (naming the file) for: no inputs, an
/// output path equal to an input, a missing or unreadable input, malformed JSON (with the
/// parser's message), JSON holding no text, an unknown tokenizer, fewer than 2 tokens.
PrepareStats prepare(const PrepareOptions& opt);

}  // namespace ptrain::data
