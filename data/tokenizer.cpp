// data/tokenizer.cpp — the tokenizer registry.
#include "data/tokenizer.h"

#include <algorithm>
#include <map>

#include "core/error.h"

namespace ptrain::data {

namespace {
struct Entry {
  TokenizerFactory make;
  std::string help;
};
std::map<std::string, Entry>& entries() {
  static std::map<std::string, Entry> e;  // function-local: safe across static-init order
  return e;
}
}  // namespace

bool register_tokenizer(const std::string& name, TokenizerFactory make, const std::string& help) {
  PT_CHECK(!entries().count(name), "tokenizer '{}' registered twice", name);
  entries().emplace(name, Entry{std::move(make), help});
  return true;
}

std::vector<std::string> tokenizer_names() {
  std::vector<std::string> r;
  for (const auto& [name, e] : entries()) r.push_back(name);
  return r;
}

std::string describe_tokenizers() {
  std::string r;
  for (const auto& [name, e] : entries()) r += fmt::format("{}: {}\n", name, e.help);
  return r;
}

std::unique_ptr<Tokenizer> make_tokenizer(const std::string& name) {
  auto it = entries().find(name);
  if (it == entries().end()) {
    std::string names;
    for (const auto& n : tokenizer_names()) names += (names.empty() ? "" : ", ") + n;
    throw UserError(fmt::format("unknown tokenizer '{}' (registered: {}). HINT: pick one of the registered names;"
                                " a new tokenizer is one .cpp in data/ with PTRAIN_REGISTER_TOKENIZER",
                                name, names));
  }
  auto t = it->second.make();
  PT_CHECK(t && t->name() == name, "tokenizer registered as '{}' reports the name '{}'", name, t ? t->name() : "");
  return t;
}

}  // namespace ptrain::data
