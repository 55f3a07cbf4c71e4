// data/byte_tokenizer.cpp — the "byte" tokenizer: one token per byte, id = byte value.
//
// Lossless for any byte string (UTF-8 or not); vocabulary 256.
#include "core/error.h"
#include "data/tokenizer.h"

namespace ptrain::data {
namespace {

class ByteTokenizer final : public Tokenizer {
 public:
  std::string name() const override { return "byte"; }
  int64_t vocab_size() const override { return 256; }
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(std::span<const int32_t> ids) const override {
    std::string s(ids.size(), '\0');
    for (size_t i = 0; i < ids.size(); ++i) {
      PT_USER_CHECK(ids[i] >= 0 && ids[i] < 256, "token id {} at index {} is outside the byte tokenizer's ids [0, 256)",
                    ids[i], i);
      s[i] = static_cast<char>(static_cast<unsigned char>(ids[i]));
    }
    return s;
  }
};

}  // namespace

PTRAIN_REGISTER_TOKENIZER("byte", ByteTokenizer, "one token per byte (vocab_size 256), lossless for any text");

}  // namespace ptrain::data
