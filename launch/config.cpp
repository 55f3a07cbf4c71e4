// launch/config.cpp — the config key table, YAML/--set/JSON parsing, validation, dumps.
//
// One table (fields()) lists every key once: its path (stringised from the member
// path, so key and member cannot drift apart), a codec for its type and bound, and
// its help text. Defaults are the member initialisers of config.h, read from a
// default-constructed Config; nothing here writes a default value.
//
// Parsing works on "sources": the YAML file's root, then one per `--set` (a key path
// and a YAML value). Every source is first checked for unknown keys and duplicate
// keys; then each key takes its value from the last source that has it (a `--set` of
// a section merges into it), else keeps its default. Errors are ptrain::UserError,
// one line, "config error: <key path>: <what is wrong> [<where>]".
#include "launch/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <set>
#include <sstream>

#include "core/error.h"

namespace ptrain::launch {
namespace {

using Json = nlohmann::json;

[[noreturn]] void fail(const std::string& msg) { throw UserError("config error: " + msg); }

/// A bad value found by a codec; the caller adds the key path and the location.
struct BadValue {
  std::string msg;
};

// ---------------------------------------------------------------- choice names

template <class T>
struct Named {
  T value;
  std::string_view name;
};

constexpr Named<PipeSchedule> kPipeSchedules[] = {{PipeSchedule::gpipe, "gpipe"},
                                                  {PipeSchedule::one_f_one_b, "1f1b"},
                                                  {PipeSchedule::interleaved, "interleaved"},
                                                  {PipeSchedule::zero_bubble, "zero-bubble"}};
constexpr Named<Recompute> kRecomputes[] = {
    {Recompute::none, "none"}, {Recompute::selective, "selective"}, {Recompute::full, "full"}};
constexpr Named<LrSchedule> kLrSchedules[] = {{LrSchedule::cosine, "cosine"}, {LrSchedule::constant, "constant"}};
constexpr Named<Optimizer> kOptimizers[] = {{Optimizer::adamw, "adamw"}};
constexpr Named<OptimState> kOptimStates[] = {
    {OptimState::fp32, "fp32"}, {OptimState::bf16_sr, "bf16-sr"}, {OptimState::int8, "8bit"}};
constexpr Named<DeviceChoice> kDevices[] = {
    {DeviceChoice::automatic, "auto"}, {DeviceChoice::cpu, "cpu"}, {DeviceChoice::cuda, "cuda"}};
constexpr Named<DType> kPrecisions[] = {{DType::f32, "fp32"}, {DType::bf16, "bf16"}, {DType::f16, "fp16"}};
constexpr Named<DType> kGradDtypes[] = {{DType::f32, "fp32"}, {DType::bf16, "bf16"}};

template <class T, size_t N>
std::string_view name_in(const Named<T> (&table)[N], T v) {
  for (const auto& e : table)
    if (e.value == v) return e.name;
  return "?";
}

// ---------------------------------------------------------------- small text helpers

std::string join(const std::vector<std::string>& v, std::string_view sep = ", ") {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return out;
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  std::iota(prev.begin(), prev.end(), size_t{0});
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

/// Shortest round-trip text of a double, always with a '.' or an exponent mantissa dot
/// ("10000.0", "1.0e-05") so YAML 1.1 readers (PyYAML) also see a float.
std::string format_double(double v) {
  std::string s = fmt::format("{}", v);
  if (s.find_first_of("in") != std::string::npos) return s;  // inf, nan
  const size_t e = s.find('e');
  if (s.find('.') == std::string::npos) {
    if (e == std::string::npos)
      s += ".0";
    else
      s.insert(e, ".0");
  }
  return s;
}

// ---------------------------------------------------------------- YAML scalar reading

bool is_quoted(const YAML::Node& n) { return n.Tag() == "!"; }

/// A plain scalar of the form [+-]digits.
std::optional<long long> as_integer(const YAML::Node& n, bool* out_of_range = nullptr) {
  if (!n.IsScalar() || is_quoted(n)) return std::nullopt;
  std::string s = n.Scalar();
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (i == s.size()) return std::nullopt;
  for (size_t k = i; k < s.size(); ++k)
    if (!std::isdigit(static_cast<unsigned char>(s[k]))) return std::nullopt;
  if (s[0] == '+') s.erase(0, 1);
  long long v = 0;
  auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec == std::errc::result_out_of_range) {
    if (out_of_range) *out_of_range = true;
    return std::nullopt;
  }
  if (ec != std::errc() || ptr != s.data() + s.size()) return std::nullopt;
  return v;
}

/// A plain scalar that is a finite decimal number: [+-](digits[.digits]|.digits)[e[+-]digits].
std::optional<double> as_number(const YAML::Node& n) {
  if (!n.IsScalar() || is_quoted(n)) return std::nullopt;
  std::string s = n.Scalar();
  size_t i = 0;
  if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
  size_t digits = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  }
  if (digits == 0) return std::nullopt;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++exp_digits;
    if (exp_digits == 0) return std::nullopt;
  }
  if (i != s.size()) return std::nullopt;
  const char* begin = s.data() + (s[0] == '+' ? 1 : 0);
  double v = 0;
  auto [ptr, ec] = std::from_chars(begin, s.data() + s.size(), v);
  if (ec != std::errc() || ptr != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<bool> as_bool(const YAML::Node& n) {
  if (!n.IsScalar() || is_quoted(n)) return std::nullopt;
  const std::string& s = n.Scalar();
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

/// Flow-style YAML of a node, cut to `max_len` characters.
std::string flow(const YAML::Node& n, size_t max_len = 60) {
  YAML::Emitter e;
  e.SetNullFormat(YAML::LowerNull);
  e.SetMapFormat(YAML::Flow);
  e.SetSeqFormat(YAML::Flow);
  e << n;
  std::string s = e.good() ? std::string(e.c_str()) : std::string("?");
  if (s.size() > max_len) s = s.substr(0, max_len - 3) + "...";
  return s;
}

/// How a value is shown in messages: null, 5, 1.5e-3, true, "abc", a list [1, 2], a mapping {a: 1}.
std::string describe(const YAML::Node& n) {
  if (!n.IsDefined()) return "nothing";
  if (n.IsNull()) return "null";
  if (n.IsSequence()) return "a list " + flow(n);
  if (n.IsMap()) return "a mapping " + flow(n);
  if (as_number(n) || as_bool(n)) return n.Scalar();
  return "\"" + n.Scalar() + "\"";
}

// ---------------------------------------------------------------- codecs
//
// A codec knows one C++ type: type() (the accepted values, in words), parse() (YAML
// node -> value, throws BadValue), dump() (value -> JSON) and check() (the bound,
// for validate(); nullopt when fine).

enum class Bound { any, positive, non_negative, fraction, zero_one };

struct IntCodec {
  Bound bound = Bound::any;
  std::string type() const {
    switch (bound) {
      case Bound::positive: return "a positive integer";
      case Bound::non_negative: return "an integer >= 0";
      case Bound::zero_one: return "0 or 1";
      default: return "an integer";
    }
  }
  bool ok(long long v) const {
    switch (bound) {
      case Bound::positive: return v > 0;
      case Bound::non_negative: return v >= 0;
      case Bound::zero_one: return v == 0 || v == 1;
      default: return true;
    }
  }
  int parse(const YAML::Node& n) const {
    bool too_big = false;
    auto v = as_integer(n, &too_big);
    if (too_big || (v && (*v < INT_MIN || *v > INT_MAX)))
      throw BadValue{fmt::format("expected {}, got {} (out of range)", type(), describe(n))};
    if (!v || !ok(*v)) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    return static_cast<int>(*v);
  }
  Json dump(int v) const { return v; }
  std::optional<std::string> check(int v) const {
    if (ok(v)) return std::nullopt;
    return fmt::format("expected {}, got {}", type(), v);
  }
};

struct U64Codec {
  std::string type() const { return "an integer >= 0"; }
  uint64_t parse(const YAML::Node& n) const {
    if (n.IsScalar() && !is_quoted(n)) {
      const std::string& s = n.Scalar();
      uint64_t v = 0;
      auto [ptr, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
      if (!s.empty() && ec == std::errc() && ptr == s.data() + s.size()) return v;
    }
    throw BadValue{fmt::format("expected {} (at most 2^64-1), got {}", type(), describe(n))};
  }
  Json dump(uint64_t v) const { return v; }
  std::optional<std::string> check(uint64_t) const { return std::nullopt; }
};

struct NumberCodec {
  Bound bound = Bound::any;
  std::string type() const {
    switch (bound) {
      case Bound::positive: return "a number > 0";
      case Bound::non_negative: return "a number >= 0";
      case Bound::fraction: return "a number in [0, 1)";
      default: return "a number";
    }
  }
  bool ok(double v) const {
    if (!std::isfinite(v)) return false;
    switch (bound) {
      case Bound::positive: return v > 0;
      case Bound::non_negative: return v >= 0;
      case Bound::fraction: return v >= 0 && v < 1;
      default: return true;
    }
  }
  double parse(const YAML::Node& n) const {
    auto v = as_number(n);
    if (!v || !ok(*v)) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    return *v;
  }
  Json dump(double v) const { return v; }
  std::optional<std::string> check(double v) const {
    if (ok(v)) return std::nullopt;
    return fmt::format("expected {}, got {}", type(), format_double(v));
  }
};

struct BoolCodec {
  std::string type() const { return "true or false"; }
  bool parse(const YAML::Node& n) const {
    auto v = as_bool(n);
    if (!v) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    return *v;
  }
  Json dump(bool v) const { return v; }
  std::optional<std::string> check(bool) const { return std::nullopt; }
};

struct StringCodec {
  std::string what = "a non-empty string";
  std::string type() const { return what; }
  std::string parse(const YAML::Node& n) const {
    if (!n.IsScalar() || n.Scalar().empty()) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    return n.Scalar();
  }
  Json dump(const std::string& v) const { return v; }
  std::optional<std::string> check(const std::string& v) const {
    if (!v.empty()) return std::nullopt;
    return fmt::format("expected {}, got \"\"", type());
  }
};

template <class T, size_t N>
struct ChoiceCodec {
  const Named<T> (*table)[N];
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& e : *table) out.emplace_back(e.name);
    return out;
  }
  std::string type() const { return "one of " + join(names()); }
  T parse(const YAML::Node& n) const {
    if (!n.IsScalar()) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    const std::string& s = n.Scalar();
    for (const auto& e : *table)
      if (e.name == s) return e.value;
    std::string hint;
    for (const auto& e : *table)
      if (lower(std::string(e.name)) == lower(s)) hint = fmt::format(" (did you mean {}?)", e.name);
    throw BadValue{fmt::format("\"{}\" is not one of {}{}", s, join(names()), hint)};
  }
  Json dump(T v) const { return std::string(name_in(*table, v)); }
  std::optional<std::string> check(T v) const {
    for (const auto& e : *table)
      if (e.value == v) return std::nullopt;
    return fmt::format("value #{} is not one of {}", static_cast<int>(v), join(names()));
  }
};

template <class T, size_t N>
ChoiceCodec<T, N> choice(const Named<T> (&table)[N]) {
  return ChoiceCodec<T, N>{&table};
}

/// std::optional<T> over an inner codec: null (or an empty value) = nullopt.
template <class Inner>
struct OptCodec {
  Inner inner;
  std::string type() const {  // "true or false" -> "true, false or null"
    std::string t = inner.type();
    if (const size_t at = t.rfind(" or "); at != std::string::npos) t.replace(at, 4, ", ");
    return t + " or null";
  }
  auto parse(const YAML::Node& n) const -> std::optional<decltype(inner.parse(n))> {
    if (n.IsNull()) return std::nullopt;
    try {
      return inner.parse(n);
    } catch (const BadValue& e) {  // same message, with "or null" added to the accepted values
      std::string msg = e.msg;
      const std::string t = inner.type();
      if (const size_t at = msg.find(t); at != std::string::npos) msg.replace(at, t.size(), type());
      throw BadValue{msg};
    }
  }
  template <class T>
  Json dump(const std::optional<T>& v) const {
    return v ? inner.dump(*v) : Json(nullptr);
  }
  template <class T>
  std::optional<std::string> check(const std::optional<T>& v) const {
    return v ? inner.check(*v) : std::nullopt;
  }
};

template <class Inner>
OptCodec<Inner> opt(Inner inner) {
  return OptCodec<Inner>{std::move(inner)};
}

/// parallel.dp: "auto" (nullopt) or a positive integer.
struct AutoIntCodec {
  IntCodec inner{Bound::positive};
  std::string type() const { return "auto or " + inner.type(); }
  std::optional<int> parse(const YAML::Node& n) const {
    if (n.IsScalar() && n.Scalar() == "auto") return std::nullopt;
    try {
      return inner.parse(n);
    } catch (const BadValue&) {
      throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    }
  }
  Json dump(const std::optional<int>& v) const { return v ? Json(*v) : Json("auto"); }
  std::optional<std::string> check(const std::optional<int>& v) const {
    return v ? inner.check(*v) : std::nullopt;
  }
};

/// std::array<double, N>: a list of exactly N numbers.
template <size_t N>
struct NumberArrayCodec {
  NumberCodec inner;
  std::string type() const {
    std::string t = inner.type();  // "a number in [0, 1)" -> "numbers in [0, 1)"
    return fmt::format("a list of {} {}", N, "numbers" + t.substr(std::string("a number").size()));
  }
  std::array<double, N> parse(const YAML::Node& n) const {
    std::array<double, N> out{};
    if (!n.IsSequence() || n.size() != N) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    for (size_t i = 0; i < N; ++i) {
      auto v = as_number(n[i]);
      if (!v || !inner.ok(*v)) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
      out[i] = *v;
    }
    return out;
  }
  Json dump(const std::array<double, N>& v) const { return Json(v); }
  std::optional<std::string> check(const std::array<double, N>& v) const {
    for (double x : v)
      if (!inner.ok(x)) return fmt::format("expected {}, got {}", type(), Json(v).dump());
    return std::nullopt;
  }
};

/// std::vector<int>: a list of integers, each within the inner bound.
struct IntListCodec {
  IntCodec inner;
  std::string type() const {
    std::string t = inner.type();  // "a positive integer" -> "positive integers"
    return "a list of " + t.substr(2) + "s";
  }
  std::vector<int> parse(const YAML::Node& n) const {
    if (!n.IsSequence()) throw BadValue{fmt::format("expected {}, got {}", type(), describe(n))};
    std::vector<int> out;
    for (size_t i = 0; i < n.size(); ++i) {
      try {
        out.push_back(inner.parse(n[i]));
      } catch (const BadValue&) {
        throw BadValue{fmt::format("expected {}, got {} (element {} is {})", type(), describe(n), i, describe(n[i]))};
      }
    }
    return out;
  }
  Json dump(const std::vector<int>& v) const { return Json(v); }
  std::optional<std::string> check(const std::vector<int>& v) const {
    for (size_t i = 0; i < v.size(); ++i)
      if (!inner.ok(v[i])) return fmt::format("expected {}, got {} (element {})", type(), Json(v).dump(), i);
    return std::nullopt;
  }
};

IntCodec pos_int() { return {Bound::positive}; }
IntCodec nonneg_int() { return {Bound::non_negative}; }
NumberCodec number(Bound b) { return {b}; }
StringCodec text(std::string what = "a non-empty string") { return {std::move(what)}; }

// ---------------------------------------------------------------- the key table

struct Field {
  std::string path;
  std::string type;
  std::string help;
  std::function<void(Config&, const YAML::Node&)> parse;  // throws BadValue
  std::function<Json(const Config&)> dump;
  std::function<std::optional<std::string>(const Config&)> check;
};

template <class Get, class Codec>
Field make_field(const char* path, Get get, Codec codec, std::string help) {
  std::string p(path);
  p.erase(std::remove(p.begin(), p.end(), ' '), p.end());
  return Field{p, codec.type(), std::move(help),
               [get, codec](Config& c, const YAML::Node& n) { get(c) = codec.parse(n); },
               [get, codec](const Config& c) { return codec.dump(get(c)); },
               [get, codec](const Config& c) { return codec.check(get(c)); }};
}

// KEY(member path, codec, help): the key path is the member path, stringised.
#define KEY(member, codec, help) make_field(#member, [](auto& c) -> auto& { return c.member; }, codec, help)

std::vector<Field> build_fields() {
  return {
      // ---- model
      KEY(model.arch, text("a registered architecture name (llama, gpt2, ...; see ptrain --list-layers)"),
          "Model architecture: decides the block layout, the default norm/MLP/attention layers and the "
          "Hugging Face names of the weights."),
      KEY(model.vocab_size, pos_int(), "Tokenizer vocabulary size; every token id in the data must be below it."),
      KEY(model.hidden, pos_int(), "Width of the residual stream (d_model); a multiple of model.heads."),
      KEY(model.layers, pos_int(), "Number of decoder blocks."),
      KEY(model.heads, pos_int(), "Number of attention (query) heads; head dim = hidden / heads."),
      KEY(model.kv_heads, opt(pos_int()),
          "Key/value heads for grouped-query attention; must divide model.heads; null = model.heads "
          "(plain multi-head attention)."),
      KEY(model.ffn_hidden, pos_int(), "Inner width of the MLP (SwiGLU for llama, GELU for gpt2)."),
      KEY(model.max_seq_len, pos_int(),
          "Longest sequence the model supports (gpt2: size of the position table); >= train.seq_len."),
      KEY(model.norm_eps, number(Bound::positive), "Epsilon added to the variance in the norm layers."),
      KEY(model.rope_theta, number(Bound::positive), "Base of the rotary position embedding frequencies (llama)."),
      KEY(model.tie_embeddings, opt(BoolCodec{}),
          "Share the token embedding with the LM head; null = the architecture's default (gpt2 ties, llama "
          "does not)."),
      KEY(model.pad_vocab_to, pos_int(),
          "Pad the vocabulary up to a multiple of this (and of parallel.tp) for GEMM shapes; padding never "
          "changes the loss; 1 = no padding."),
      KEY(model.norm, opt(text("a registered norm layer name")),
          "Registered norm layer replacing the architecture's default (e.g. rms_norm, layer_norm); null = "
          "default."),
      KEY(model.mlp, opt(text("a registered MLP layer name")),
          "Registered MLP layer replacing the architecture's default (e.g. swiglu, gelu_mlp); null = default."),
      KEY(model.attention, opt(text("a registered attention layer name")),
          "Registered attention layer replacing the architecture's default; null = default."),
      // ---- parallel
      KEY(parallel.tp, pos_int(),
          "Tensor-parallel ranks (adjacent ranks); must divide model.heads, model.kv_heads and "
          "model.ffn_hidden. Keep it at 1-2 over PCIe."),
      KEY(parallel.pp, pos_int(), "Pipeline stages; each gets model.layers / (pp * virtual_stages) layers per chunk."),
      KEY(parallel.dp, AutoIntCodec{},
          "Data-parallel replicas; auto = world size / (tp * pp). dp * pp * tp must equal the number of ranks."),
      KEY(parallel.schedule, choice(kPipeSchedules),
          "Pipeline schedule: gpipe (all forward, all backward), 1f1b, interleaved (1F1B over "
          "virtual_stages chunks per rank), zero-bubble (split weight gradients)."),
      KEY(parallel.virtual_stages, pos_int(), "Model chunks per pipeline rank; > 1 only with schedule interleaved."),
      KEY(parallel.sequence_parallel, BoolCodec{},
          "With tp > 1, keep norm and residual activations split along the sequence over the TP ranks "
          "(train.seq_len must be a multiple of tp)."),
      KEY(parallel.stage_layers, opt(IntListCodec{pos_int()}),
          "Layers of each (virtual) stage, in order: pp * virtual_stages entries summing to model.layers; null "
          "= as even a split as possible."),
      KEY(parallel.selftest, BoolCodec{},
          "Multi-rank runs: before training, run every collective ptrain uses and a ring of sends on every "
          "group (tp, pp, dp, embed, world) with a known pattern, in the tensors' own memory, checked bit for bit "
          "(a few ms); a difference or a message that does not come within 30 s stops the run naming the group, "
          "the collective and the ranks. false skips it."),
      KEY(parallel.timeout_s, number(Bound::positive),
          "Multi-rank runs: seconds one blocking communicator call (a collective, a receive, a wait) may take; "
          "longer ends the job with a message naming the rank, the group and the call (a stuck or vanished "
          "peer). Compute is not timed: a long step does not trip it."),
      // ---- train
      KEY(train.seq_len, pos_int(), "Tokens per training sequence (T); at most model.max_seq_len."),
      KEY(train.micro_batch, pos_int(), "Sequences per micro-batch on each data-parallel rank."),
      KEY(train.global_batch, pos_int(),
          "Sequences per optimizer update over all ranks = micro_batch * dp * accumulation steps."),
      KEY(train.steps, pos_int(), "Number of optimizer updates."),
      KEY(train.seed, U64Codec{}, "Seed of parameter init, data shuffling and every other random draw."),
      KEY(train.precision, choice(kPrecisions),
          "Compute and weight dtype: fp32, bf16 or fp16 (fp16 uses dynamic loss scaling); master weights "
          "stay fp32."),
      KEY(train.grad_dtype, choice(kGradDtypes),
          "Dtype gradients are held and reduced in: fp32, or bf16 where fp32 gradients do not fit."),
      KEY(train.recompute, choice(kRecomputes),
          "Activation recomputation (bit-identical results): none; selective (the attention probabilities and the "
          "activation functions' outputs are rerun in backward); full (each block keeps only its input and reruns "
          "its forward in backward; least memory, about a third more compute)."),
      KEY(train.init_from, opt(text("a path to a weights file")),
          "HDF5 weights file (Hugging Face names and shapes, as written by ptrain export) to start from; "
          "null = random init."),
      KEY(train.eval_every, nonneg_int(), "Steps between validation passes (val_loss in metrics); 0 = never."),
      KEY(train.eval_batches, pos_int(), "Global batches per validation pass."),
      KEY(train.val_fraction, number(Bound::fraction),
          "Fraction of the data file's windows held out for validation (0 <= x < 1); 0 = none."),
      KEY(train.log_every, pos_int(), "Steps between progress lines on the console (metrics.jsonl gets every step)."),
      KEY(train.threads, nonneg_int(), "CPU threads per rank; 0 = auto (cores / ranks on this node)."),
      KEY(train.tf32, BoolCodec{}, "Allow TF32 tensor cores for fp32 GEMMs on the GPU."),
      KEY(train.offload.activations, BoolCodec{},
          "device: cuda: each decoder block's saved activations go to pinned host memory on a copy stream while "
          "the next blocks run forward, and come back ahead of the block's backward (train.offload.prefetch "
          "blocks ahead); bit-identical results. Refused on device: cpu."),
      KEY(train.offload.prefetch, pos_int(),
          "With train.offload.activations: how many blocks ahead of backward come back from the host (1 = the "
          "next block's activations copy up while this block's backward runs; more hides slower copies, at the "
          "cost of device memory)."),
      KEY(train.offload.optimizer, BoolCodec{},
          "device: cuda: keep the master weights and Adam moments in host memory, updated by the multithreaded "
          "CPU AdamW (bit-identical to the device optimizer); gradients go down and weights up on a copy stream "
          "through two pinned staging slots. With optim.grad_clip: 0 (and no fp16) each parameter's update starts "
          "in backward as its gradient is final; with clipping it waits for the global norm. Refused on device: cpu."),
      // ---- optim
      KEY(optim.name, choice(kOptimizers), "Optimizer: adamw (PyTorch semantics, decoupled weight decay)."),
      KEY(optim.lr, number(Bound::positive), "Peak learning rate, reached at the end of warmup."),
      KEY(optim.min_lr, number(Bound::non_negative), "Final learning rate of the cosine schedule; <= optim.lr."),
      KEY(optim.warmup_steps, nonneg_int(), "Linear warmup updates; <= train.steps."),
      KEY(optim.schedule, choice(kLrSchedules), "Learning rate after warmup: cosine decay to min_lr, or constant."),
      KEY(optim.betas, NumberArrayCodec<2>{number(Bound::fraction)}, "Adam's beta1 and beta2."),
      KEY(optim.eps, number(Bound::positive), "Adam's epsilon, added after the square root."),
      KEY(optim.weight_decay, number(Bound::non_negative), "Decoupled weight decay, on 2-D parameters only."),
      KEY(optim.grad_clip, number(Bound::non_negative), "Clip the global gradient norm to this; 0 = off."),
      KEY(optim.zero, IntCodec{Bound::zero_one},
          "1 = shard the optimizer state over the data-parallel ranks (ZeRO-1); a no-op with dp = 1."),
      KEY(optim.state, choice(kOptimStates),
          "Optimizer state per parameter: fp32 (fp32 master + two fp32 moments, 12 B beyond the weights), bf16-sr "
          "(the weights are the master, on the bf16 grid, updated with stochastic rounding from a counter-based RNG; "
          "fp32 moments: 8 B), 8bit (bf16-sr master and block-wise 8-bit moments, blocks of 2048 with an fp32 "
          "absmax each: about 2 B). Not with precision fp16; on device: cuda only with train.offload.optimizer."),
      KEY(optim.loss_scale.initial, number(Bound::positive), "Initial dynamic loss scale (fp16 only)."),
      KEY(optim.loss_scale.growth_interval, pos_int(),
          "Steps without overflow after which the fp16 loss scale doubles."),
      // ---- data
      KEY(data.path, text("a path to an HDF5 tokens file"),
          "HDF5 file with a 1-D integer dataset /tokens (see DESIGN.md, Data)."),
      KEY(data.shuffle, BoolCodec{}, "Shuffle the windows with a seeded permutation per epoch."),
      KEY(data.val_path, opt(text("a path to an HDF5 tokens file")),
          "Separate validation tokens file; null = hold out train.val_fraction of data.path instead."),
      // ---- checkpoint
      KEY(checkpoint.dir, text("a directory path"),
          "Run directory: step_%08d/ checkpoints and metrics.jsonl are written here."),
      KEY(checkpoint.every, nonneg_int(), "Steps between checkpoints; 0 = only at the end (and on SIGTERM)."),
      KEY(checkpoint.keep, nonneg_int(), "Newest checkpoints kept; 0 = keep all."),
      // ---- device
      KEY(device, choice(kDevices),
          "auto (a GPU when the build has CUDA and the machine has one, else the CPU), cpu, or cuda."),
  };
}
#undef KEY

/// The table, plus the section structure derived from it.
struct Schema {
  std::vector<Field> fields;
  std::set<std::string> leaves;
  std::map<std::string, std::vector<std::string>> children;  // section ("" = top) -> child names, in order

  Schema() : fields(build_fields()) {
    std::set<std::string> closed;       // sections already left: a section's keys must be contiguous
    std::vector<std::string> previous;  // sections of the previous key
    for (const Field& f : fields) {
      PT_CHECK(leaves.insert(f.path).second, "config key {} listed twice", f.path);
      const auto segs = split(f.path, '.');
      std::vector<std::string> sections;
      std::string prefix;
      for (size_t i = 0; i < segs.size(); ++i) {
        auto& kids = children[prefix];
        if (std::find(kids.begin(), kids.end(), segs[i]) == kids.end()) kids.push_back(segs[i]);
        prefix = prefix.empty() ? segs[i] : prefix + "." + segs[i];
        if (i + 1 < segs.size()) {
          PT_CHECK(!closed.count(prefix), "config section {} is not contiguous in the key table", prefix);
          sections.push_back(prefix);
        }
      }
      for (const auto& s : previous)
        if (std::find(sections.begin(), sections.end(), s) == sections.end()) closed.insert(s);
      previous = sections;
    }
  }
  bool is_leaf(const std::string& p) const { return leaves.count(p) > 0; }
  bool is_section(const std::string& p) const { return !is_leaf(p) && children.count(p) > 0; }
  std::vector<std::string> all_paths() const {
    std::vector<std::string> out;
    for (const auto& [section, kids] : children)
      for (const auto& k : kids) out.push_back(section.empty() ? k : section + "." + k);
    return out;
  }
};

const Schema& schema() {
  static const Schema s;
  return s;
}

/// "unknown key model.hiden (did you mean model.hidden?)", or the keys the section accepts.
std::string unknown_key(const std::string& path) {
  const Schema& sc = schema();
  const size_t dot = path.rfind('.');
  const std::string section = dot == std::string::npos ? "" : path.substr(0, dot);
  const std::string leaf = dot == std::string::npos ? path : path.substr(dot + 1);
  const auto paths = sc.all_paths();
  auto leaf_of = [](const std::string& p) {
    const size_t d = p.rfind('.');
    return d == std::string::npos ? p : p.substr(d + 1);
  };
  std::string best;
  // 1. the same name in another section (train.lr -> optim.lr).
  for (const auto& p : paths)
    if (leaf_of(p) == leaf) best = p;
  // 2. a close name in the same section (model.hiden -> model.hidden, model.ffn -> model.ffn_hidden).
  if (best.empty() && sc.children.count(section)) {
    size_t best_d = std::max<size_t>(1, std::min<size_t>(3, leaf.size() / 3)) + 1;
    for (const auto& k : sc.children.at(section)) {
      size_t d = edit_distance(lower(leaf), lower(k));
      if (leaf.size() >= 3 && k.find(leaf) != std::string::npos) d = std::min<size_t>(d, 1);
      if (d < best_d) best_d = d, best = section.empty() ? k : section + "." + k;
    }
  }
  // 3. a close full path anywhere (modle.hidden -> model.hidden).
  if (best.empty()) {
    size_t best_d = std::max<size_t>(2, path.size() / 4) + 1;
    for (const auto& p : paths) {
      const size_t d = edit_distance(lower(path), lower(p));
      if (d < best_d) best_d = d, best = p;
    }
  }
  if (!best.empty()) return fmt::format("unknown key {} (did you mean {}?)", path, best);
  if (sc.children.count(section)) {
    const auto& kids = sc.children.at(section);
    return section.empty() ? fmt::format("unknown key {} (top-level keys: {})", path, join(kids))
                           : fmt::format("unknown key {} (keys of {}: {})", path, section, join(kids));
  }
  return fmt::format("unknown key {} (top-level keys: {})", path, join(sc.children.at("")));
}

// ---------------------------------------------------------------- sources and lookup

struct Source {
  std::string prefix;  // "" = a whole config, else the key a --set assigns
  YAML::Node node;
  std::string origin;  // file name, "--set k=v", "JSON"
  bool has_lines = false;
};

std::string where(const Source& s, const YAML::Node& n) {
  if (s.has_lines && n.IsDefined() && n.Mark().line >= 0)
    return fmt::format(" [{} line {}]", s.origin, n.Mark().line + 1);
  return fmt::format(" [{}]", s.origin);
}

/// Refuses unknown and duplicate keys under `section` (node is that section's value).
void check_keys(const std::string& section, const YAML::Node& node, const Source& src) {
  const Schema& sc = schema();
  if (node.IsNull()) return;  // an empty section: all defaults
  if (!node.IsMap()) {
    const std::string name = section.empty() ? "the top level" : section;
    fail(fmt::format("{}: expected a mapping with keys {}, got {}{}", name, join(sc.children.at(section)),
                     describe(node), where(src, node)));
  }
  std::set<std::string> seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node k = it->first;  // a copy: it-> returns a temporary proxy
    const std::string key = k.IsScalar() ? k.Scalar() : flow(k);
    const std::string path = section.empty() ? key : section + "." + key;
    if (!seen.insert(key).second) fail(fmt::format("{}: key given twice{}", path, where(src, k)));
    if (sc.is_leaf(path)) continue;
    if (sc.is_section(path)) {
      const YAML::Node value = it->second;
      check_keys(path, value, src);
      continue;
    }
    fail(unknown_key(path) + where(src, k));
  }
}

struct Hit {
  YAML::Node node;
  const Source* source;
};

/// The value of `path` from the last source that has it.
std::optional<Hit> lookup(const std::string& path, const std::vector<Source>& sources) {
  for (auto s = sources.rbegin(); s != sources.rend(); ++s) {
    std::string rest;
    if (s->prefix == path) return Hit{s->node, &*s};
    if (s->prefix.empty())
      rest = path;
    else if (path.size() > s->prefix.size() && path.compare(0, s->prefix.size() + 1, s->prefix + ".") == 0)
      rest = path.substr(s->prefix.size() + 1);
    else
      continue;
    YAML::Node cur(s->node);
    bool found = true;
    for (const auto& seg : split(rest, '.')) {
      if (!cur.IsMap()) {
        found = false;
        break;
      }
      const YAML::Node& const_cur = cur;  // const lookup: never inserts
      YAML::Node next = const_cur[seg];
      if (!next.IsDefined()) {
        found = false;
        break;
      }
      cur.reset(next);
    }
    if (found) return Hit{cur, &*s};
  }
  return std::nullopt;
}

Config convert(const std::vector<Source>& sources) {
  Config c;
  for (const Field& f : schema().fields) {
    auto hit = lookup(f.path, sources);
    if (!hit) continue;
    try {
      f.parse(c, hit->node);
    } catch (const BadValue& e) {
      fail(fmt::format("{}: {}{}", f.path, e.msg, where(*hit->source, hit->node)));
    }
  }
  return c;
}

Source parse_set(const std::string& arg) {
  const Schema& sc = schema();
  const size_t eq = arg.find('=');
  std::string key = eq == std::string::npos ? arg : arg.substr(0, eq);
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  if (eq == std::string::npos || key.empty())
    fail(fmt::format("--set \"{}\": expected KEY=VALUE with a dotted key path, e.g. --set model.hidden=512", arg));
  Source src{key, YAML::Node(), "--set " + arg, false};
  if (!sc.is_leaf(key) && !sc.is_section(key)) fail(unknown_key(key) + where(src, src.node));
  try {
    src.node = YAML::Load(arg.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    fail(fmt::format("{}: the value of --set is not valid YAML: {}{}", key, e.msg, where(src, src.node)));
  }
  if (sc.is_section(key)) check_keys(key, src.node, src);
  return src;
}

Config parse_sources(const YAML::Node& root, const std::string& origin, bool has_lines,
                     const std::vector<std::string>& sets) {
  std::vector<Source> sources;
  sources.push_back(Source{"", root, origin, has_lines});
  if (!root.IsNull() && !root.IsMap())
    fail(fmt::format("the top level of {} must be a mapping with keys {}, got {}", origin,
                     join(schema().children.at("")), describe(root)));
  check_keys("", root, sources.back());
  for (const auto& s : sets) sources.push_back(parse_set(s));
  return convert(sources);
}

// ---------------------------------------------------------------- JSON <-> YAML nodes

YAML::Node json_to_node(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: return YAML::Node(YAML::NodeType::Null);
    case Json::value_t::boolean: return YAML::Node(j.get<bool>() ? "true" : "false");
    case Json::value_t::number_integer: return YAML::Node(std::to_string(j.get<int64_t>()));
    case Json::value_t::number_unsigned: return YAML::Node(std::to_string(j.get<uint64_t>()));
    case Json::value_t::number_float: return YAML::Node(format_double(j.get<double>()));
    case Json::value_t::string: {
      YAML::Node n(j.get<std::string>());
      n.SetTag("!");  // a JSON string stays a string: "128" is not an integer
      return n;
    }
    case Json::value_t::array: {
      YAML::Node n(YAML::NodeType::Sequence);
      for (const auto& e : j) n.push_back(json_to_node(e));
      return n;
    }
    case Json::value_t::object: {
      YAML::Node n(YAML::NodeType::Map);
      for (const auto& [k, v] : j.items()) n[k] = json_to_node(v);
      return n;
    }
    default: fail("JSON config holds a value of an unsupported type (binary)");
  }
}

bool needs_quotes(const std::string& s) {
  static const std::set<std::string> special = {"", "~", "null", "Null", "NULL"};
  return special.count(s) > 0;
}

/// Emits one JSON value as YAML (lists in flow style, floats with a '.').
void emit_json(YAML::Emitter& e, const Json& j) {
  switch (j.type()) {
    case Json::value_t::null: e << YAML::Null; break;
    case Json::value_t::boolean: e << (j.get<bool>() ? "true" : "false"); break;
    case Json::value_t::number_integer: e << std::to_string(j.get<int64_t>()); break;
    case Json::value_t::number_unsigned: e << std::to_string(j.get<uint64_t>()); break;
    case Json::value_t::number_float: e << format_double(j.get<double>()); break;
    case Json::value_t::string: {
      const auto s = j.get<std::string>();
      if (needs_quotes(s)) e << YAML::DoubleQuoted;
      e << s;
      break;
    }
    case Json::value_t::array:
      e << YAML::Flow << YAML::BeginSeq;
      for (const auto& v : j) emit_json(e, v);
      e << YAML::EndSeq;
      break;
    default: PT_CHECK(false, "emit_json: unexpected JSON type {}", j.type_name());
  }
}

std::string json_to_yaml_flow(const Json& j) {
  YAML::Emitter e;
  e.SetNullFormat(YAML::LowerNull);
  emit_json(e, j);
  return e.c_str();
}

std::string registered_list(const std::vector<std::string>& names) {
  std::vector<std::string> sorted(names);
  std::sort(sorted.begin(), sorted.end());
  return join(sorted);
}

void check_registered(const char* key, const std::string& name, const std::vector<std::string>& registry,
                      const char* what) {
  if (registry.empty()) return;
  if (std::find(registry.begin(), registry.end(), name) != registry.end()) return;
  fail(fmt::format("{}: \"{}\" is not a registered {} (registered: {}); see ptrain --list-layers", key, name,
                   what, registered_list(registry)));
}

}  // namespace

// ---------------------------------------------------------------- public API

std::string_view to_string(PipeSchedule v) { return name_in(kPipeSchedules, v); }
std::string_view to_string(Recompute v) { return name_in(kRecomputes, v); }
std::string_view to_string(LrSchedule v) { return name_in(kLrSchedules, v); }
std::string_view to_string(Optimizer v) { return name_in(kOptimizers, v); }
std::string_view to_string(OptimState v) { return name_in(kOptimStates, v); }
std::string_view to_string(DeviceChoice v) { return name_in(kDevices, v); }

int ModelConfig::head_dim() const {
  PT_CHECK(heads > 0, "model.heads = {} (call validate() first)", heads);
  return hidden / heads;
}

int ModelConfig::resolved_kv_heads() const { return kv_heads.value_or(heads); }

bool ModelConfig::resolved_tie_embeddings() const { return tie_embeddings.value_or(arch == "gpt2"); }

int ModelConfig::padded_vocab(int tp) const {
  PT_CHECK(pad_vocab_to > 0 && tp > 0, "pad_vocab_to = {}, tp = {} (call validate() first)", pad_vocab_to, tp);
  const int64_t m = std::lcm(static_cast<int64_t>(pad_vocab_to), static_cast<int64_t>(tp));
  const int64_t padded = (static_cast<int64_t>(vocab_size) + m - 1) / m * m;
  PT_CHECK(padded <= INT_MAX, "padded vocabulary {} too large", padded);
  return static_cast<int>(padded);
}

int ParallelConfig::resolved_dp(int world_size) const {
  if (dp) return *dp;
  PT_CHECK(tp > 0 && pp > 0 && world_size % (tp * pp) == 0,
           "world size {} is not a multiple of tp * pp = {} * {} (call validate() first)", world_size, tp, pp);
  return world_size / (tp * pp);
}

int Config::resolved_dp(int world_size) const { return parallel.resolved_dp(world_size); }

int Config::accumulation_steps(int world_size) const {
  const int64_t per_step = static_cast<int64_t>(train.micro_batch) * resolved_dp(world_size);
  PT_CHECK(per_step > 0 && train.global_batch % per_step == 0,
           "global_batch {} is not a multiple of micro_batch * dp = {} (call validate() first)", train.global_batch,
           per_step);
  return static_cast<int>(train.global_batch / per_step);
}

int Config::padded_vocab() const { return model.padded_vocab(parallel.tp); }

int64_t Config::tokens_per_step() const { return static_cast<int64_t>(train.global_batch) * train.seq_len; }

Config Config::resolved(int world_size) const {
  Config r = *this;
  r.parallel.dp = resolved_dp(world_size);
  r.model.kv_heads = model.resolved_kv_heads();
  r.model.tie_embeddings = model.resolved_tie_embeddings();
  return r;
}

Config parse_config(const std::string& yaml_text, const std::vector<std::string>& sets, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::ParserException& e) {
    fail(fmt::format("{} line {}, column {}: invalid YAML: {}", origin, e.mark.line + 1, e.mark.column + 1, e.msg));
  } catch (const YAML::Exception& e) {
    fail(fmt::format("{}: invalid YAML: {}", origin, e.msg));
  }
  return parse_sources(root, origin, true, sets);
}

Config load_config(const std::string& yaml_path, const std::vector<std::string>& sets) {
  std::error_code ec;
  if (std::filesystem::is_directory(yaml_path, ec))
    fail(fmt::format("cannot read config file {}: it is a directory; HINT: pass a YAML file, e.g. --cfg "
                     "configs/tiny.yaml",
                     yaml_path));
  std::ifstream in(yaml_path, std::ios::binary);
  if (!in)
    fail(fmt::format("cannot read config file {}: {}; HINT: pass a YAML file, e.g. --cfg configs/tiny.yaml",
                     yaml_path, std::strerror(errno)));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(fmt::format("cannot read config file {}: {}", yaml_path, std::strerror(errno)));
  return parse_config(text.str(), sets, yaml_path);
}

void validate(const Config& c, const ValidationContext& ctx) {
  PT_CHECK(ctx.world_size >= 1, "ValidationContext::world_size = {}", ctx.world_size);
  // Every key's own bound (sizes positive, fractions in [0, 1), choices known, ...).
  for (const Field& f : schema().fields)
    if (auto err = f.check(c)) fail(fmt::format("{}: {}", f.path, *err));

  const ModelConfig& m = c.model;
  const ParallelConfig& p = c.parallel;
  const TrainConfig& t = c.train;
  const OptimConfig& o = c.optim;

  // Registries.
  check_registered("model.arch", m.arch, ctx.archs, "architecture");
  if (m.norm) check_registered("model.norm", *m.norm, ctx.norms, "norm layer");
  if (m.mlp) check_registered("model.mlp", *m.mlp, ctx.mlps, "MLP layer");
  if (m.attention) check_registered("model.attention", *m.attention, ctx.attentions, "attention layer");

  // The fp16 loss scale moves by factors of 2 and is divided out of the gradient norm and the
  // optimizer's gradient read exactly; that needs a power of two.
  {
    int e = 0;
    if (std::frexp(o.loss_scale.initial, &e) != 0.5)
      fail(fmt::format("optim.loss_scale.initial: {} is not a power of two (unscaling must be exact). HINT: use "
                       "65536 (2^16) or another power of two",
                       o.loss_scale.initial));
  }

  // Model shapes.
  const int kv = m.resolved_kv_heads();
  if (m.hidden % m.heads != 0)
    fail(fmt::format("model.hidden: {} is not a multiple of model.heads = {}", m.hidden, m.heads));
  if (m.heads % kv != 0)
    fail(fmt::format("model.kv_heads: {} does not divide model.heads = {} (each KV head serves heads/kv_heads "
                     "query heads)",
                     kv, m.heads));
  if (m.arch == "llama" && m.head_dim() % 2 != 0)
    fail(fmt::format("model.hidden: head dim model.hidden / model.heads = {} / {} = {} is odd; llama's rotary "
                     "embedding needs an even head dim",
                     m.hidden, m.heads, m.head_dim()));
  if (m.arch == "gpt2" && kv != m.heads)
    fail(fmt::format("model.kv_heads: {} differs from model.heads = {}; gpt2 has no grouped-query attention "
                     "(set model.kv_heads: null)",
                     kv, m.heads));
  if (t.seq_len > m.max_seq_len)
    fail(fmt::format("train.seq_len: {} exceeds model.max_seq_len = {}", t.seq_len, m.max_seq_len));

  // Parallel layout: world = dp * pp * tp.
  const int64_t tp_pp = static_cast<int64_t>(p.tp) * p.pp;
  if (!p.dp) {
    if (ctx.world_size % tp_pp != 0)
      fail(fmt::format("parallel.dp: auto needs the world size {} to be a multiple of parallel.tp * parallel.pp = "
                       "{} * {} = {}",
                       ctx.world_size, p.tp, p.pp, tp_pp));
  } else if (*p.dp * tp_pp != ctx.world_size) {
    fail(fmt::format("parallel.dp: dp * pp * tp = {} * {} * {} = {} does not equal the world size {} (ranks "
                     "started); HINT: set parallel.dp: auto",
                     *p.dp, p.pp, p.tp, *p.dp * tp_pp, ctx.world_size));
  }
  const int dp = p.resolved_dp(ctx.world_size);
  if (m.heads % p.tp != 0) fail(fmt::format("parallel.tp: {} does not divide model.heads = {}", p.tp, m.heads));
  if (kv % p.tp != 0) fail(fmt::format("parallel.tp: {} does not divide model.kv_heads = {}", p.tp, kv));
  if (m.ffn_hidden % p.tp != 0)
    fail(fmt::format("parallel.tp: {} does not divide model.ffn_hidden = {}", p.tp, m.ffn_hidden));
  if (p.sequence_parallel && t.seq_len % p.tp != 0)
    fail(fmt::format("parallel.sequence_parallel: train.seq_len = {} is not a multiple of parallel.tp = {}",
                     t.seq_len, p.tp));
  const int64_t stages = static_cast<int64_t>(p.pp) * p.virtual_stages;
  if (p.virtual_stages > 1 && p.schedule != PipeSchedule::interleaved)
    fail(fmt::format("parallel.virtual_stages: {} needs parallel.schedule: interleaved (got {})", p.virtual_stages,
                     to_string(p.schedule)));
  if (m.layers < stages)
    fail(fmt::format("model.layers: {} layers cannot fill parallel.pp * parallel.virtual_stages = {} * {} = {} "
                     "stages (each needs at least one layer)",
                     m.layers, p.pp, p.virtual_stages, stages));
  if (p.stage_layers) {
    const auto& sl = *p.stage_layers;
    if (static_cast<int64_t>(sl.size()) != stages)
      fail(fmt::format("parallel.stage_layers: {} entries, expected parallel.pp * parallel.virtual_stages = {}",
                       sl.size(), stages));
    const int64_t sum = std::accumulate(sl.begin(), sl.end(), int64_t{0});
    if (sum != m.layers)
      fail(fmt::format("parallel.stage_layers: entries sum to {}, expected model.layers = {}", sum, m.layers));
  }

  // Batch: global_batch = micro_batch * dp * accumulation steps.
  const int64_t per_step = static_cast<int64_t>(t.micro_batch) * dp;
  if (t.global_batch % per_step != 0)
    fail(fmt::format("train.global_batch: {} is not a multiple of train.micro_batch * dp = {} * {} = {} "
                     "(global_batch = micro_batch * dp * accumulation steps)",
                     t.global_batch, t.micro_batch, dp, per_step));
  const int64_t micro_batches = t.global_batch / per_step;
  if (p.schedule == PipeSchedule::interleaved && micro_batches % p.pp != 0)
    fail(fmt::format("parallel.schedule: interleaved needs the micro-batches per step, train.global_batch / "
                     "(train.micro_batch * dp) = {}, to be a multiple of parallel.pp = {}",
                     micro_batches, p.pp));

  // Optimizer and schedule.
  if (o.state != OptimState::fp32 && t.precision == DType::f16)
    fail(fmt::format("optim.state: {} keeps the master on the bf16 grid, which fp16 weights cannot hold; HINT: use "
                     "train.precision: bf16 (or fp32), or optim.state: fp32",
                     to_string(o.state)));
  if (o.warmup_steps > t.steps)
    fail(fmt::format("optim.warmup_steps: {} exceeds train.steps = {}", o.warmup_steps, t.steps));
  if (o.min_lr > o.lr)
    fail(fmt::format("optim.min_lr: {} exceeds optim.lr = {}", format_double(o.min_lr), format_double(o.lr)));

  // Validation data.
  if (t.eval_every > 0 && t.val_fraction == 0 && !c.data.val_path)
    fail(fmt::format("train.eval_every: {} needs validation data; HINT: set train.val_fraction > 0 or "
                     "data.val_path",
                     t.eval_every));
  if (t.val_fraction > 0 && c.data.val_path)
    fail(fmt::format("train.val_fraction: {} and data.val_path are both set; use one source of validation data",
                     format_double(t.val_fraction)));
}

nlohmann::json to_json(const Config& cfg) {
  Json j = Json::object();
  for (const Field& f : schema().fields) {
    std::string ptr = "/" + f.path;
    std::replace(ptr.begin(), ptr.end(), '.', '/');
    j[Json::json_pointer(ptr)] = f.dump(cfg);
  }
  return j;
}

Config from_json(const nlohmann::json& j) {
  if (!j.is_object()) fail(fmt::format("the top level of a JSON config must be an object, got {}", j.type_name()));
  return parse_sources(json_to_node(j), "JSON", false, {});
}

std::string to_yaml(const Config& cfg) {
  YAML::Emitter e;
  e.SetNullFormat(YAML::LowerNull);
  e << YAML::BeginMap;
  std::vector<std::string> open;  // sections currently open
  for (const Field& f : schema().fields) {
    const auto segs = split(f.path, '.');
    size_t common = 0;
    while (common < open.size() && common + 1 < segs.size() && open[common] == segs[common]) ++common;
    while (open.size() > common) {
      e << YAML::EndMap;
      open.pop_back();
    }
    for (size_t i = common; i + 1 < segs.size(); ++i) {
      e << YAML::Key << segs[i] << YAML::Value << YAML::BeginMap;
      open.push_back(segs[i]);
    }
    e << YAML::Key << segs.back() << YAML::Value;
    emit_json(e, f.dump(cfg));
  }
  while (!open.empty()) {
    e << YAML::EndMap;
    open.pop_back();
  }
  e << YAML::EndMap;
  PT_CHECK(e.good(), "YAML emitter: {}", e.GetLastError());
  return std::string(e.c_str()) + "\n";
}

const std::vector<KeyInfo>& config_keys() {
  static const std::vector<KeyInfo> keys = [] {
    std::vector<KeyInfo> out;
    const Config defaults;
    for (const Field& f : schema().fields)
      out.push_back(KeyInfo{f.path, f.type, json_to_yaml_flow(f.dump(defaults)), f.help});
    return out;
  }();
  return keys;
}

std::string describe_keys() {
  std::string out =
      "Config keys (YAML file; override any with --set KEY=VALUE, the value parsed as YAML; see "
      "configs/README.md)\n";
  std::string section = "\x01";
  for (const KeyInfo& k : config_keys()) {
    const size_t dot = k.path.find('.');
    const std::string top = dot == std::string::npos ? "" : k.path.substr(0, dot);
    if (top != section) {
      out += "\n";
      section = top;
    }
    out += fmt::format("  {} = {}    ({})\n      {}\n", k.path, k.default_value, k.type, k.help);
  }
  return out;
}

}  // namespace ptrain::launch
