// data/prepare.cpp — text -> HDF5 token file (see prepare.h).
//
// Plain text is read in 4 MiB blocks and encoded in pieces cut right after a newline
// that is followed by a non-blank character, so a subword tokenizer never sees a cut
// inside a word or a whitespace run (a piece without such a cut grows up to 64 MiB and
// is then encoded whole). Tokens are buffered and appended to /tokens 1M at a time.
#include "data/prepare.h"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/h5io.h"
#include "data/tokenizer.h"

namespace ptrain::data {

namespace fs = std::filesystem;

namespace {

constexpr size_t kReadBlock = size_t{4} << 20;
constexpr size_t kMaxPiece = size_t{64} << 20;
constexpr size_t kFlushTokens = size_t{1} << 20;

std::string lower_ext(const std::string& path) {
  std::string e = fs::path(path).extension().string();
  for (auto& c : e) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return e;
}

/// Accumulates tokens and appends them to /tokens.
class Writer {
 public:
  Writer(h5::File& f, const Tokenizer& tok) : tok_(tok), sep_(tok.encode("\n")) {
    const int64_t v = tok.vocab_size();
    const h5::IntStore store = v <= 256 ? h5::IntStore::u8 : v <= 65536 ? h5::IntStore::u16 : h5::IntStore::i32;
    out_.emplace(f, "tokens", store, int64_t{1} << 16);
  }
  /// Encodes one piece of a document (no separator).
  void piece(std::string_view text) { add(tok_.encode(text)); }
  /// Ends a document: appends the encoded "\n".
  void end_document() {
    add(sep_);
    ++stats_.documents;
  }
  void document(std::string_view text) {
    piece(text);
    end_document();
  }
  void finish() { flush(); }
  const PrepareStats& stats() const { return stats_; }

 private:
  void add(const std::vector<int32_t>& ids) {
    buf_.insert(buf_.end(), ids.begin(), ids.end());
    stats_.tokens += static_cast<int64_t>(ids.size());
    if (buf_.size() >= kFlushTokens) flush();
  }
  void flush() {
    if (!buf_.empty()) out_->append(buf_.data(), static_cast<int64_t>(buf_.size()));
    buf_.clear();
  }
  const Tokenizer& tok_;
  std::vector<int32_t> sep_;
  std::optional<h5::IntAppender> out_;
  std::vector<int32_t> buf_;
  PrepareStats stats_;
};

/// Last cut point in s: just after a '\n' that is followed by a non-whitespace char; 0 if none.
size_t last_cut(const std::string& s) {
  for (size_t i = s.size(); i-- > 1;) {
    if (s[i - 1] == '\n' && !std::isspace(static_cast<unsigned char>(s[i]))) return i;
  }
  return 0;
}

void read_text(const std::string& path, Writer& w) {
  std::ifstream in(path, std::ios::binary);
  PT_USER_CHECK(in, "cannot read input '{}'. HINT: check the path and permissions", path);
  std::string pending, block(kReadBlock, '\0');
  bool any = false;
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (got == 0) break;
    any = true;
    pending.append(block.data(), got);
    size_t cut = last_cut(pending);
    if (cut == 0 && pending.size() >= kMaxPiece) cut = pending.size();
    if (cut > 0) {
      w.piece(std::string_view(pending).substr(0, cut));
      pending.erase(0, cut);
    }
  }
  PT_USER_CHECK(!in.bad(), "error while reading input '{}'", path);
  if (!any) return;  // an empty text file holds no document
  w.piece(pending);
  w.end_document();
}

/// Feeds every document of a JSON value to `w`; `where` names the value in messages.
/// Returns the number of documents found.
int64_t json_documents(const nlohmann::json& v, const std::string& file, const std::string& where, Writer& w) {
  if (v.is_string()) {
    w.document(v.get_ref<const std::string&>());
    return 1;
  }
  if (v.is_array()) {
    int64_t n = 0;
    for (size_t i = 0; i < v.size(); ++i) n += json_documents(v[i], file, fmt::format("{}[{}]", where, i), w);
    return n;
  }
  if (v.is_object()) {
    auto it = v.find("text");
    PT_USER_CHECK(it != v.end() && it->is_string(),
                  "input '{}': {} is an object without a \"text\" string field. HINT: documents are strings or "
                  "objects {{\"text\": \"...\"}}",
                  file, where);
    w.document(it->get_ref<const std::string&>());
    return 1;
  }
  throw UserError(fmt::format("input '{}': {} is a JSON {}; expected a string, an object with a \"text\" string, "
                              "or an array of those",
                              file, where, v.type_name()));
}

void read_json(const std::string& path, Writer& w) {
  std::ifstream in(path, std::ios::binary);
  PT_USER_CHECK(in, "cannot read input '{}'. HINT: check the path and permissions", path);
  nlohmann::json v;
  try {
    v = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    throw UserError(fmt::format("input '{}' is not valid JSON: {}. HINT: fix the file, or give it a .txt "
                                "extension to read it as plain text",
                                path, e.what()));
  }
  const int64_t docs = json_documents(v, path, "the top-level value", w);
  PT_USER_CHECK(docs > 0,
                "input '{}' holds no text: expected a string, an object with a \"text\" string, or an array of "
                "those. HINT: check that this is the right file",
                path);
}

void read_jsonl(const std::string& path, Writer& w) {
  std::ifstream in(path, std::ios::binary);
  PT_USER_CHECK(in, "cannot read input '{}'. HINT: check the path and permissions", path);
  std::string line;
  int64_t lineno = 0, docs = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (std::all_of(line.begin(), line.end(), [](unsigned char c) { return std::isspace(c); })) continue;
    nlohmann::json v;
    try {
      v = nlohmann::json::parse(line);
    } catch (const nlohmann::json::parse_error& e) {
      throw UserError(fmt::format("input '{}' line {} is not valid JSON: {}. HINT: a .jsonl file holds one JSON "
                                  "value per line",
                                  path, lineno, e.what()));
    }
    docs += json_documents(v, path, fmt::format("line {}", lineno), w);
  }
  PT_USER_CHECK(!in.bad(), "error while reading input '{}'", path);
  PT_USER_CHECK(docs > 0,
                "input '{}' holds no text: expected one string or {{\"text\": \"...\"}} object per line. HINT: check "
                "that this is the right file",
                path);
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec;
  if (fs::exists(a, ec) && fs::exists(b, ec)) return fs::equivalent(a, b, ec);
  return fs::weakly_canonical(a, ec) == fs::weakly_canonical(b, ec);
}

}  // namespace

PrepareStats prepare(const PrepareOptions& opt) {
  PT_USER_CHECK(!opt.inputs.empty(), "prepare: no input files. HINT: ptrain prepare --input corpus.txt --out data.h5");
  PT_USER_CHECK(!opt.out.empty(), "prepare: no output path. HINT: ptrain prepare --input corpus.txt --out data.h5");
  auto tok = make_tokenizer(opt.tokenizer);
  const std::string tmp = opt.out + ".tmp";
  for (const auto& in : opt.inputs) {
    std::error_code ec;
    PT_USER_CHECK(fs::exists(in, ec), "input '{}' does not exist. HINT: check the path", in);
    PT_USER_CHECK(!fs::is_directory(in, ec), "input '{}' is a directory. HINT: list the files in it as inputs", in);
    PT_USER_CHECK(::access(in.c_str(), R_OK) == 0, "input '{}' is not readable (permission denied)", in);
    PT_USER_CHECK(!same_file(in, opt.out) && !same_file(in, tmp),
                  "output '{}' is also an input; it would be overwritten. HINT: choose another --out path", opt.out);
  }
  const fs::path parent = fs::path(opt.out).parent_path();
  if (!parent.empty()) {
    std::error_code ec;
    fs::create_directories(parent, ec);
    PT_USER_CHECK(!ec, "cannot create the output directory '{}': {}", parent.string(), ec.message());
  }

  PrepareStats stats;
  try {
    h5::File f = h5::File::create(tmp);
    {
      Writer w(f, *tok);
      for (const auto& in : opt.inputs) {
        const std::string ext = lower_ext(in);
        if (ext == ".json")
          read_json(in, w);
        else if (ext == ".jsonl" || ext == ".ndjson")
          read_jsonl(in, w);
        else
          read_text(in, w);
        if (opt.progress) opt.progress(in, w.stats());
      }
      w.finish();
      stats = w.stats();
    }
    PT_USER_CHECK(stats.tokens >= 2,
                  "prepare: the inputs gave {} token{}; a data file needs at least 2. HINT: give more text", stats.tokens,
                  stats.tokens == 1 ? "" : "s");
    h5::write_attr(f, "/", "tokenizer", tok->name());
    h5::write_attr(f, "/", "vocab_size", tok->vocab_size());
    f.close();
    std::error_code ec;
    fs::rename(tmp, opt.out, ec);
    PT_USER_CHECK(!ec, "cannot rename '{}' to '{}': {}. HINT: check that the output path is writable", tmp, opt.out,
                  ec.message());
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  return stats;
}

}  // namespace ptrain::data
