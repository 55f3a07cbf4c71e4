// tests/data/test_tokenizer.cpp — the registry (filled from byte_tokenizer.cpp's static
// registration, which must survive static linking) and the byte tokenizer.
#include <gtest/gtest.h>

#include "core/error.h"
#include "data/tokenizer.h"

using namespace ptrain;
using namespace ptrain::data;

TEST(Tokenizer, RegistryHasByte) {
  const auto names = tokenizer_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "byte"), names.end());
  EXPECT_NE(describe_tokenizers().find("byte: "), std::string::npos);
}

TEST(Tokenizer, ByteRoundTrip) {
  auto t = make_tokenizer("byte");
  EXPECT_EQ(t->name(), "byte");
  EXPECT_EQ(t->vocab_size(), 256);
  const std::string s = std::string("héllo\n\0\xff", 9);
  auto ids = t->encode(s);
  ASSERT_EQ(ids.size(), s.size());
  EXPECT_EQ(ids[0], 'h');
  EXPECT_EQ(ids[1], 0xc3);  // UTF-8 bytes, unsigned
  EXPECT_EQ(ids[8], 255);
  EXPECT_EQ(t->decode(ids), s);
  std::vector<int32_t> bad = {65, 256};
  EXPECT_THROW(t->decode(bad), UserError);
}

TEST(Tokenizer, UnknownNameListsRegistered) {
  try {
    make_tokenizer("gpt5");
    FAIL();
  } catch (const UserError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("unknown tokenizer 'gpt5'"), std::string::npos) << m;
    EXPECT_NE(m.find("registered: byte"), std::string::npos) << m;
  }
}

TEST(Tokenizer, DuplicateRegistrationIsAnError) {
  EXPECT_THROW(register_tokenizer("byte", [] { return std::unique_ptr<Tokenizer>(); }, "dup"), Error);
}
