// data/tokenizer.h — the Tokenizer interface and the registry of tokenizers by name.
//
// A tokenizer lives in its own .cpp, which ends with
//     PTRAIN_REGISTER_TOKENIZER("name", MyTokenizer, "one-line help");
// (MyTokenizer default-constructible); no central list is edited. ptrain_data is
// linked whole (data/CMakeLists.txt) so those static registrations always run.
// Invariants: ids are in [0, vocab_size()); encode is a pure function of the text;
// decode(encode(s)) == s for any byte string s where the tokenizer is lossless.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ptrain::data {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// The registered name, stored in token files' `tokenizer` attribute.
  virtual std::string name() const = 0;
  /// Number of ids: every id is in [0, vocab_size()).
  virtual int64_t vocab_size() const = 0;
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  /// Throws UserError for an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
};

using TokenizerFactory = std::function<std::unique_ptr<Tokenizer>()>;

/// Registers a tokenizer (called by PTRAIN_REGISTER_TOKENIZER at static-initialisation time);
/// a name registered twice is an internal error.
bool register_tokenizer(const std::string& name, TokenizerFactory make, const std::string& help);
/// Registered names, sorted.
std::vector<std::string> tokenizer_names();
/// "name: help" lines, sorted by name.
std::string describe_tokenizers();
/// Builds tokenizer `name`; throws UserError listing the registered names when unknown.
std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name);

}  // namespace ptrain::data

#define PTRAIN_TOKENIZER_CONCAT2(a, b) a##b
#define PTRAIN_TOKENIZER_CONCAT(a, b) PTRAIN_TOKENIZER_CONCAT2(a, b)
/// PTRAIN_REGISTER_TOKENIZER("byte", ByteTokenizer, "help"): registers a default-constructible class.
#define PTRAIN_REGISTER_TOKENIZER(NAME, CLASS, HELP)                                            \
  static const bool PTRAIN_TOKENIZER_CONCAT(ptrain_tokenizer_registered_, __LINE__) =           \
      ::ptrain::data::register_tokenizer(                                                       \
          NAME, []() -> std::unique_ptr<::ptrain::data::Tokenizer> { return std::make_unique<CLASS>(); }, HELP)
