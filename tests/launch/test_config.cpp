// tests/launch/test_config.cpp — the typed config: parsing, --set, validation, dumps.
//
// Bad configs must throw ptrain::UserError with one line starting "config error: "
// and naming the key path; every configs/*.yaml must load and validate for the rank
// count its "# ranks: N" comment states; to_json/from_json and to_yaml round-trip;
// configs/README.md documents every key. The repo root is $PTRAIN_SOURCE_DIR, else
// found by walking up from the current directory to a folder holding configs/tiny.yaml.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>

#include "core/error.h"
#include "launch/config.h"

namespace fs = std::filesystem;
using namespace ptrain;
using namespace ptrain::launch;

namespace {

fs::path repo_root() {
  if (const char* env = std::getenv("PTRAIN_SOURCE_DIR"); env && *env) return fs::path(env);
  for (fs::path p = fs::current_path(); !p.empty(); p = p.parent_path()) {
    if (fs::exists(p / "configs" / "tiny.yaml")) return p;
    if (p == p.parent_path()) break;
  }
  // The build dir usually sits inside the source tree; fall back to this file's location.
  fs::path here = fs::path(__FILE__).parent_path().parent_path().parent_path();
  return here;
}

fs::path tmp_dir() {
  const char* env = std::getenv("PTRAIN_TEST_TMP");
  fs::path d = fs::path(env && *env ? env : "/tmp") / "launch_test_config";
  fs::create_directories(d);
  return d;
}

std::string read_text(const fs::path& p) {
  std::ifstream in(p);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

ValidationContext ctx(int world = 1) {
  ValidationContext c;
  c.world_size = world;
  c.archs = {"llama", "gpt2"};
  c.norms = {"rms_norm", "layer_norm"};
  c.mlps = {"swiglu", "gelu_mlp"};
  c.attentions = {"causal_self_attention"};
  return c;
}

/// Runs f, which must throw a one-line UserError starting "config error: " and containing every needle.
void expect_config_error(const std::function<void()>& f, const std::vector<std::string>& needles,
                         const std::string& label) {
  try {
    f();
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("config error: ", 0), 0u) << label << ": " << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << label << ": message is not one line: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << label << ": no '" << n << "' in: " << msg;
    return;
  } catch (const std::exception& e) {
    ADD_FAILURE() << label << ": expected UserError, got another exception: " << e.what();
    return;
  }
  ADD_FAILURE() << label << ": expected a UserError, nothing was thrown";
}

// A small valid config (tiny.yaml's shapes) that semantic cases modify with --set.
const char* kBase = R"(
model: {arch: llama, vocab_size: 256, hidden: 128, layers: 4, heads: 4, kv_heads: 2, ffn_hidden: 352,
        max_seq_len: 256}
train: {seq_len: 128, micro_batch: 8, global_batch: 16, steps: 300, precision: fp32}
optim: {lr: 3.0e-3, min_lr: 3.0e-4, warmup_steps: 20}
device: cpu
)";

struct BadCase {
  std::string label;
  std::string yaml;                // the file text
  std::vector<std::string> sets;   // --set overrides
  int world = 1;
  std::vector<std::string> needles;  // substrings the message must contain
};

void run_bad(const BadCase& c) {
  expect_config_error([&] { validate(parse_config(c.yaml, c.sets, "test.yaml"), ctx(c.world)); }, c.needles,
                      c.label);
}

}  // namespace

TEST(Config, BaseIsValid) {
  Config c = parse_config(kBase);
  EXPECT_NO_THROW(validate(c, ctx(1)));
  EXPECT_NO_THROW(validate(c, ctx(2)));  // dp auto = 2, 8 * 2 divides 16
}

TEST(Config, FileErrors) {
  expect_config_error([] { load_config("/nonexistent/dir/x.yaml", {}); }, {"/nonexistent/dir/x.yaml", "cannot read"},
                      "missing file");
  const fs::path dir = tmp_dir();
  expect_config_error([&] { load_config(dir.string(), {}); }, {dir.string(), "directory"}, "directory");
  const fs::path bad = dir / "bad_syntax.yaml";
  std::ofstream(bad) << "model:\n  hidden: 128\n   layers: [1,\n";
  expect_config_error([&] { load_config(bad.string(), {}); }, {bad.string(), "line 3", "invalid YAML"},
                      "syntax error");
}

TEST(Config, BadParses) {
  const std::vector<BadCase> cases = {
      {"top level list", "- a\n- b\n", {}, 1, {"top level", "mapping", "model"}},
      {"top level scalar", "hello\n", {}, 1, {"top level", "mapping"}},
      {"unknown nested key", "model:\n  hiden: 128\n", {}, 1, {"unknown key model.hiden (did you mean model.hidden?)", "line 2"}},
      {"unknown top key", "modle: {}\n", {}, 1, {"unknown key modle", "did you mean model?"}},
      {"unknown deep key", "train:\n  offload:\n    optimiser: true\n", {}, 1,
       {"train.offload.optimiser", "did you mean train.offload.optimizer?"}},
      {"key in wrong section", "train:\n  lr: 0.1\n", {}, 1, {"train.lr", "did you mean optim.lr?"}},
      {"unknown key, no close match", "model:\n  zzzzzzzz: 1\n", {}, 1, {"model.zzzzzzzz", "keys of model:", "hidden"}},
      {"string for int", "model:\n  hidden: abc\n", {}, 1,
       {"config error: model.hidden: expected a positive integer, got \"abc\"", "line 2"}},
      {"float for int", "model:\n  hidden: 128.5\n", {}, 1, {"model.hidden", "positive integer", "128.5"}},
      {"quoted number for int", "model:\n  hidden: \"128\"\n", {}, 1, {"model.hidden", "\"128\""}},
      {"list for scalar", "model:\n  layers: [1, 2]\n", {}, 1, {"model.layers", "a list [1, 2]"}},
      {"mapping for scalar", "train:\n  steps: {a: 1}\n", {}, 1, {"train.steps", "a mapping"}},
      {"null for int", "model:\n  heads:\n", {}, 1, {"model.heads", "got null"}},
      {"int overflow", "train:\n  steps: 99999999999999999999\n", {}, 1, {"train.steps", "out of range"}},
      {"bool misspelled", "data:\n  shuffle: ture\n", {}, 1, {"data.shuffle", "true or false", "\"ture\""}},
      {"bool as yes", "train:\n  tf32: yes\n", {}, 1, {"train.tf32", "true or false"}},
      {"bad choice", "parallel:\n  schedule: foo\n", {}, 1,
       {"parallel.schedule: \"foo\" is not one of gpipe, 1f1b, interleaved, zero-bubble"}},
      {"choice case", "train:\n  precision: BF16\n", {}, 1, {"train.precision", "did you mean bf16?"}},
      {"grad dtype fp16", "train:\n  grad_dtype: fp16\n", {}, 1, {"train.grad_dtype", "fp32, bf16"}},
      {"section not a mapping", "model: 5\n", {}, 1, {"model: expected a mapping", "hidden"}},
      {"duplicate key", "model:\n  hidden: 128\n  hidden: 256\n", {}, 1, {"model.hidden", "twice", "line 3"}},
      {"betas too short", "optim:\n  betas: [0.9]\n", {}, 1, {"optim.betas", "a list of 2 numbers in [0, 1)"}},
      {"betas scalar", "optim:\n  betas: 0.9\n", {}, 1, {"optim.betas", "list"}},
      {"negative size", "model:\n  hidden: -5\n", {}, 1, {"model.hidden", "positive integer", "-5"}},
      {"stage_layers element", "parallel:\n  stage_layers: [1, x]\n", {}, 1, {"parallel.stage_layers", "element 1"}},
      {"negative seed", "train:\n  seed: -1\n", {}, 1, {"train.seed", "integer >= 0"}},
      {"dp word", "parallel:\n  dp: many\n", {}, 1, {"parallel.dp", "auto or a positive integer"}},
      {"kv_heads word", "model:\n  kv_heads: two\n", {}, 1, {"model.kv_heads", "a positive integer or null"}},
      {"number with junk", "optim:\n  lr: 3e-4x\n", {}, 1, {"optim.lr", "a number > 0"}},
      {"number inf", "optim:\n  lr: .inf\n", {}, 1, {"optim.lr"}},
      {"empty string path", "data:\n  path: \"\"\n", {}, 1, {"data.path", "got \"\""}},
      {"empty string dir", "checkpoint:\n  dir: ''\n", {}, 1, {"checkpoint.dir", "got \"\""}},
      {"stage_layers null ok, list of lists bad", "parallel:\n  stage_layers: [[1]]\n", {}, 1,
       {"parallel.stage_layers", "or null"}},
      {"list for string", "data:\n  path: [a, b]\n", {}, 1, {"data.path", "a list"}},
      {"device typo", "device: gpu\n", {}, 1, {"device: \"gpu\" is not one of auto, cpu, cuda"}},
      // --set
      {"set without =", kBase, {"model.hidden"}, 1, {"--set \"model.hidden\"", "KEY=VALUE"}},
      {"set empty key", kBase, {"=5"}, 1, {"--set \"=5\"", "KEY=VALUE"}},
      {"set unknown key", kBase, {"model.hiden=5"}, 1, {"unknown key model.hiden", "did you mean model.hidden?", "--set"}},
      {"set unknown section", kBase, {"modle.hidden=5"}, 1, {"unknown key modle.hidden", "model.hidden"}},
      {"set bad YAML", kBase, {"optim.betas=[0.9,"}, 1, {"optim.betas", "not valid YAML"}},
      {"set wrong type", kBase, {"model.hidden=abc"}, 1, {"model.hidden", "positive integer", "[--set model.hidden=abc]"}},
      {"set section unknown subkey", kBase, {"train.offload={foo: 1}"}, 1, {"train.offload.foo"}},
      {"set section scalar", kBase, {"train.offload=5"}, 1, {"train.offload: expected a mapping"}},
      {"set null for required", kBase, {"data.path=null"}, 1, {"data.path", "got null"}},
  };
  for (const auto& c : cases) run_bad(c);
}

TEST(Config, BadSemantics) {
  const std::vector<BadCase> cases = {
      {"hidden % heads", kBase, {"model.hidden=130"}, 1, {"model.hidden", "model.heads = 4"}},
      {"heads % kv_heads", kBase, {"model.kv_heads=3"}, 1, {"model.kv_heads", "model.heads = 4"}},
      {"kv_heads > heads", kBase, {"model.kv_heads=8"}, 1, {"model.kv_heads"}},
      {"odd llama head dim", kBase, {"model.hidden=12"}, 1, {"model.hidden", "odd", "even head dim"}},
      {"gpt2 with GQA", kBase, {"model.arch=gpt2"}, 1, {"model.kv_heads", "gpt2"}},
      {"seq_len > max_seq_len", kBase, {"train.seq_len=512"}, 1, {"train.seq_len", "model.max_seq_len = 256"}},
      {"global % micro*dp", kBase, {"train.global_batch=20"}, 1, {"train.global_batch", "train.micro_batch"}},
      {"global % micro*dp (dp 2)", kBase, {"train.global_batch=24"}, 2, {"train.global_batch", "8 * 2 = 16"}},
      {"global < micro", kBase, {"train.global_batch=4"}, 1, {"train.global_batch"}},
      {"steps < 1", kBase, {"train.steps=0"}, 1, {"train.steps"}},
      {"warmup > steps", kBase, {"optim.warmup_steps=301"}, 1, {"optim.warmup_steps", "train.steps = 300"}},
      {"warmup < 0", kBase, {"optim.warmup_steps=-1"}, 1, {"optim.warmup_steps"}},
      {"lr = 0", kBase, {"optim.lr=0"}, 1, {"optim.lr", "> 0"}},
      {"lr < 0", kBase, {"optim.lr=-1e-3"}, 1, {"optim.lr"}},
      {"min_lr > lr", kBase, {"optim.min_lr=0.01"}, 1, {"optim.min_lr", "optim.lr"}},
      {"min_lr < 0", kBase, {"optim.min_lr=-0.1"}, 1, {"optim.min_lr", ">= 0"}},
      {"beta = 1", kBase, {"optim.betas=[0.9, 1.0]"}, 1, {"optim.betas", "[0, 1)"}},
      {"beta < 0", kBase, {"optim.betas=[-0.1, 0.9]"}, 1, {"optim.betas"}},
      {"eps = 0", kBase, {"optim.eps=0"}, 1, {"optim.eps"}},
      {"weight_decay < 0", kBase, {"optim.weight_decay=-0.1"}, 1, {"optim.weight_decay"}},
      {"grad_clip < 0", kBase, {"optim.grad_clip=-1"}, 1, {"optim.grad_clip"}},
      {"zero = 2", kBase, {"optim.zero=2"}, 1, {"optim.zero", "0 or 1"}},
      {"keep < 0", kBase, {"checkpoint.keep=-1"}, 1, {"checkpoint.keep"}},
      {"every < 0", kBase, {"checkpoint.every=-5"}, 1, {"checkpoint.every"}},
      {"val_fraction = 1", kBase, {"train.val_fraction=1.0"}, 1, {"train.val_fraction", "[0, 1)"}},
      {"val_fraction < 0", kBase, {"train.val_fraction=-0.1"}, 1, {"train.val_fraction"}},
      {"eval without data", kBase, {"train.eval_every=10"}, 1, {"train.eval_every", "train.val_fraction", "data.val_path"}},
      {"two val sources", kBase, {"train.val_fraction=0.1", "data.val_path=v.h5"}, 1, {"train.val_fraction", "data.val_path"}},
      {"norm_eps = 0", kBase, {"model.norm_eps=0"}, 1, {"model.norm_eps"}},
      {"rope_theta < 0", kBase, {"model.rope_theta=-1.0"}, 1, {"model.rope_theta"}},
      {"loss scale 0", kBase, {"optim.loss_scale.initial=0"}, 1, {"optim.loss_scale.initial"}},
      {"arch unregistered", kBase, {"model.arch=mamba"}, 1, {"model.arch", "\"mamba\"", "registered: gpt2, llama"}},
      {"norm unregistered", kBase, {"model.norm=batch_norm"}, 1, {"model.norm", "layer_norm, rms_norm"}},
      {"mlp unregistered", kBase, {"model.mlp=moe"}, 1, {"model.mlp", "gelu_mlp, swiglu"}},
      {"attention unregistered", kBase, {"model.attention=linear"}, 1, {"model.attention", "causal_self_attention"}},
      {"world != dp*pp*tp", kBase, {"parallel.dp=2"}, 3, {"parallel.dp", "world size 3"}},
      {"world not divisible (auto)", kBase, {"parallel.pp=2"}, 3, {"parallel.dp", "parallel.tp * parallel.pp"}},
      {"heads % tp", kBase, {"parallel.tp=3"}, 3, {"parallel.tp", "model.heads = 4"}},
      {"kv_heads % tp", kBase, {"parallel.tp=4", "train.global_batch=16"}, 4, {"parallel.tp", "model.kv_heads = 2"}},
      {"ffn % tp", kBase, {"parallel.tp=2", "model.ffn_hidden=351"}, 2, {"parallel.tp", "model.ffn_hidden = 351"}},
      {"sequence parallel", kBase, {"parallel.tp=2", "parallel.sequence_parallel=true", "train.seq_len=127"}, 2,
       {"parallel.sequence_parallel", "train.seq_len = 127"}},
      {"layers < pp", kBase, {"parallel.pp=8"}, 8, {"model.layers", "parallel.pp * parallel.virtual_stages"}},
      {"layers < pp*vs", kBase,
       {"parallel.pp=2", "parallel.virtual_stages=4", "parallel.schedule=interleaved"}, 2, {"model.layers", "2 * 4 = 8"}},
      {"virtual stages without interleaved", kBase, {"parallel.pp=2", "parallel.virtual_stages=2"}, 2,
       {"parallel.virtual_stages", "interleaved"}},
      {"interleaved micro-batches % pp", kBase,
       {"parallel.pp=2", "parallel.virtual_stages=2", "parallel.schedule=interleaved", "train.global_batch=24"}, 2,
       {"parallel.schedule", "= 3", "parallel.pp = 2"}},
      {"stage_layers length", kBase, {"parallel.pp=2", "parallel.stage_layers=[4]"}, 2,
       {"parallel.stage_layers", "1 entries", "= 2"}},
      {"stage_layers sum", kBase, {"parallel.pp=2", "parallel.stage_layers=[1, 2]"}, 2,
       {"parallel.stage_layers", "sum to 3", "model.layers = 4"}},
      {"stage_layers zero", kBase, {"parallel.pp=2", "parallel.stage_layers=[0, 4]"}, 2, {"parallel.stage_layers"}},
  };
  for (const auto& c : cases) run_bad(c);
}

TEST(Config, EverySizeMustBePositive) {
  // Through YAML (load time) and through a Config built in code (validate()).
  const std::vector<std::pair<std::string, std::function<void(Config&)>>> sizes = {
      {"model.vocab_size", [](Config& c) { c.model.vocab_size = 0; }},
      {"model.hidden", [](Config& c) { c.model.hidden = 0; }},
      {"model.layers", [](Config& c) { c.model.layers = 0; }},
      {"model.heads", [](Config& c) { c.model.heads = 0; }},
      {"model.kv_heads", [](Config& c) { c.model.kv_heads = 0; }},
      {"model.ffn_hidden", [](Config& c) { c.model.ffn_hidden = 0; }},
      {"model.max_seq_len", [](Config& c) { c.model.max_seq_len = 0; }},
      {"model.pad_vocab_to", [](Config& c) { c.model.pad_vocab_to = 0; }},
      {"parallel.tp", [](Config& c) { c.parallel.tp = 0; }},
      {"parallel.pp", [](Config& c) { c.parallel.pp = 0; }},
      {"parallel.dp", [](Config& c) { c.parallel.dp = 0; }},
      {"parallel.virtual_stages", [](Config& c) { c.parallel.virtual_stages = 0; }},
      {"train.seq_len", [](Config& c) { c.train.seq_len = 0; }},
      {"train.micro_batch", [](Config& c) { c.train.micro_batch = 0; }},
      {"train.global_batch", [](Config& c) { c.train.global_batch = 0; }},
      {"train.steps", [](Config& c) { c.train.steps = 0; }},
      {"train.eval_batches", [](Config& c) { c.train.eval_batches = 0; }},
      {"train.log_every", [](Config& c) { c.train.log_every = 0; }},
      {"optim.loss_scale.growth_interval", [](Config& c) { c.optim.loss_scale.growth_interval = 0; }},
  };
  const Config base = parse_config(kBase);
  for (const auto& [key, set_zero] : sizes) {
    expect_config_error([&] { parse_config(kBase, {key + "=0"}); }, {key, "positive integer"}, key + " via --set");
    Config c = base;
    set_zero(c);
    expect_config_error([&] { validate(c, ctx(1)); }, {key, "positive integer"}, key + " via validate");
  }
  // Counts that may be 0 must not be negative.
  for (const std::string key : {"train.eval_every", "train.threads", "checkpoint.every", "checkpoint.keep"})
    expect_config_error([&] { parse_config(kBase, {key + "=-1"}); }, {key, "integer >= 0"}, key);
}

TEST(Config, ChoicesCheckedByValidate) {
  // Values that cannot come from YAML but can from code.
  const Config base = parse_config(kBase);
  const std::vector<std::pair<std::string, std::function<void(Config&)>>> cases = {
      {"train.precision", [](Config& c) { c.train.precision = DType::i32; }},
      {"train.grad_dtype", [](Config& c) { c.train.grad_dtype = DType::f16; }},
      {"train.recompute", [](Config& c) { c.train.recompute = static_cast<Recompute>(9); }},
      {"parallel.schedule", [](Config& c) { c.parallel.schedule = static_cast<PipeSchedule>(9); }},
      {"optim.schedule", [](Config& c) { c.optim.schedule = static_cast<LrSchedule>(9); }},
      {"device", [](Config& c) { c.device = static_cast<DeviceChoice>(9); }},
      {"data.path", [](Config& c) { c.data.path.clear(); }},
      {"optim.betas", [](Config& c) { c.optim.betas = {0.9, 1.5}; }},
  };
  for (const auto& [key, f] : cases) {
    Config c = base;
    f(c);
    expect_config_error([&] { validate(c, ctx(1)); }, {key}, key);
  }
}

TEST(Config, AllowedCorners) {
  // ZeRO-1 with dp = 1 is a no-op, not an error.
  EXPECT_NO_THROW(validate(parse_config(kBase, {"optim.zero=1"}), ctx(1)));
  // Interleaved with pp = 2, 2 virtual stages, 2 micro-batches.
  EXPECT_NO_THROW(validate(parse_config(kBase, {"parallel.pp=2", "parallel.virtual_stages=2",
                                                "parallel.schedule=interleaved"}),
                           ctx(2)));
  // Explicit stage_layers, tp with dp auto, warmup == steps, grad_clip 0, keep 0, every 0.
  EXPECT_NO_THROW(validate(parse_config(kBase, {"parallel.pp=2", "parallel.stage_layers=[1, 3]",
                                                "parallel.tp=2", "optim.warmup_steps=300", "optim.grad_clip=0",
                                                "checkpoint.keep=0", "checkpoint.every=0"}),
                           ctx(4)));
  // Empty registries disable the registry checks.
  ValidationContext none;
  EXPECT_NO_THROW(validate(parse_config(kBase, {"model.arch=mamba"}), none));
  // An empty file and an empty section give the defaults.
  EXPECT_EQ(parse_config(""), Config{});
  EXPECT_EQ(parse_config("model:\n"), Config{});
  EXPECT_EQ(parse_config("# just a comment\n"), Config{});
}

TEST(Config, SetOverrides) {
  const std::string yaml = std::string(kBase) +
                           "data: {path: a.h5}\n"
                           "optim2: null\n";
  // optim2 is unknown: make sure the file itself is checked even when --set follows.
  expect_config_error([&] { parse_config(yaml, {"model.hidden=64"}); }, {"optim2"}, "unknown key with sets");

  const std::string base = std::string(kBase);
  Config c = parse_config(base, {"optim.betas=[0.8,0.99]", "train.init_from=w.h5", "parallel.stage_layers=[1, 3]",
                                 "model.kv_heads=null", "parallel.dp=2", "device=cuda", "model.tie_embeddings=true",
                                 "data.path=a=b.h5", "model.hidden=64", "model.hidden=256",
                                 "train.seed=18446744073709551615", "parallel.schedule=zero-bubble",
                                 "train.precision=bf16", "model.norm=layer_norm"});
  EXPECT_EQ(c.optim.betas[0], 0.8);
  EXPECT_EQ(c.optim.betas[1], 0.99);
  ASSERT_TRUE(c.train.init_from.has_value());
  EXPECT_EQ(*c.train.init_from, "w.h5");
  ASSERT_TRUE(c.parallel.stage_layers.has_value());
  EXPECT_EQ(*c.parallel.stage_layers, (std::vector<int>{1, 3}));
  EXPECT_FALSE(c.model.kv_heads.has_value());  // null overrides the file's 2
  EXPECT_EQ(c.model.resolved_kv_heads(), 4);
  EXPECT_EQ(c.parallel.dp, 2);
  EXPECT_EQ(c.device, DeviceChoice::cuda);
  EXPECT_EQ(c.model.tie_embeddings, true);
  EXPECT_EQ(c.data.path, "a=b.h5");  // only the first '=' splits
  EXPECT_EQ(c.model.hidden, 256);    // the later --set wins
  EXPECT_EQ(c.train.seed, 18446744073709551615ull);
  EXPECT_EQ(c.parallel.schedule, PipeSchedule::zero_bubble);
  EXPECT_EQ(c.train.precision, DType::bf16);
  EXPECT_EQ(c.model.norm, std::optional<std::string>("layer_norm"));

  // null and empty values reset an optional; "auto" resets dp.
  Config d = parse_config("train: {init_from: w.h5, seq_len: 128}\nparallel: {dp: 2}\n",
                          {"train.init_from=null", "parallel.dp=auto"});
  EXPECT_FALSE(d.train.init_from.has_value());
  EXPECT_FALSE(d.parallel.dp.has_value());
  EXPECT_FALSE(parse_config(base, {"train.init_from=w.h5", "train.init_from="}).train.init_from.has_value());

  // A mapping value merges into its section; keys it does not name keep the file's values.
  Config e = parse_config("train:\n  offload: {activations: true}\n", {"train.offload={optimizer: true}"});
  EXPECT_TRUE(e.train.offload.activations);
  EXPECT_TRUE(e.train.offload.optimizer);
  Config f = parse_config("model: {hidden: 64, layers: 3}\n", {"model={hidden: 32}"});
  EXPECT_EQ(f.model.hidden, 32);
  EXPECT_EQ(f.model.layers, 3);
  // A --set overrides a bad value in the file (the file's value is never used).
  EXPECT_EQ(parse_config("model: {hidden: abc}\n", {"model.hidden=64"}).model.hidden, 64);
  // A --set can fill a section the file lacks.
  EXPECT_EQ(parse_config("device: cpu\n", {"checkpoint.dir=runs/x"}).checkpoint.dir, "runs/x");
  // Through load_config too.
  const fs::path p = tmp_dir() / "set_file.yaml";
  std::ofstream(p) << kBase;
  EXPECT_EQ(load_config(p.string(), {"train.steps=7", "optim.warmup_steps=3"}).train.steps, 7);
}

TEST(Config, NumbersAndStrings) {
  Config c = parse_config(
      "optim: {lr: 1e-3, min_lr: 0, eps: 1.0E-8, weight_decay: .5, grad_clip: +2}\n"
      "model: {rope_theta: 500000, norm_eps: 1e-6, hidden: +64}\n"
      "checkpoint: {dir: 2024}\n"
      "data: {path: \"true\", val_path: \"null\"}\n");
  EXPECT_EQ(c.optim.lr, 1e-3);
  EXPECT_EQ(c.optim.min_lr, 0.0);
  EXPECT_EQ(c.optim.eps, 1e-8);
  EXPECT_EQ(c.optim.weight_decay, 0.5);
  EXPECT_EQ(c.optim.grad_clip, 2.0);
  EXPECT_EQ(c.model.rope_theta, 500000.0);
  EXPECT_EQ(c.model.norm_eps, 1e-6);
  EXPECT_EQ(c.model.hidden, 64);
  EXPECT_EQ(c.checkpoint.dir, "2024");
  EXPECT_EQ(c.data.path, "true");
  EXPECT_EQ(c.data.val_path, std::optional<std::string>("null"));  // a quoted "null" is a string
  // ... and survives the YAML and JSON round trips.
  EXPECT_EQ(parse_config(to_yaml(c)), c);
  EXPECT_EQ(from_json(nlohmann::json::parse(to_json(c).dump())), c);
}

TEST(Config, DerivedHelpers) {
  Config c = parse_config(kBase);
  EXPECT_EQ(c.model.head_dim(), 32);
  EXPECT_EQ(c.model.resolved_kv_heads(), 2);
  EXPECT_FALSE(c.model.resolved_tie_embeddings());
  EXPECT_EQ(c.resolved_dp(1), 1);
  EXPECT_EQ(c.resolved_dp(2), 2);
  EXPECT_EQ(c.accumulation_steps(1), 2);
  EXPECT_EQ(c.accumulation_steps(2), 1);
  EXPECT_EQ(c.padded_vocab(), 256);
  EXPECT_EQ(c.tokens_per_step(), 16 * 128);

  ModelConfig m;
  m.vocab_size = 50257;
  m.pad_vocab_to = 128;
  EXPECT_EQ(m.padded_vocab(1), 50304);
  EXPECT_EQ(m.padded_vocab(2), 50304);
  EXPECT_EQ(m.padded_vocab(3), 50304);  // lcm(128, 3) = 384; 131 * 384
  EXPECT_EQ(m.padded_vocab(5), 50560);  // lcm(128, 5) = 640; 79 * 640
  m.pad_vocab_to = 1;
  EXPECT_EQ(m.padded_vocab(1), 50257);
  EXPECT_EQ(m.padded_vocab(4), 50260);

  m.arch = "gpt2";
  EXPECT_TRUE(m.resolved_tie_embeddings());
  m.tie_embeddings = false;
  EXPECT_FALSE(m.resolved_tie_embeddings());
  m.arch = "llama";
  m.tie_embeddings = true;
  EXPECT_TRUE(m.resolved_tie_embeddings());

  Config r = parse_config(kBase, {"parallel.tp=2"}).resolved(4);
  EXPECT_EQ(r.parallel.dp, 2);
  EXPECT_EQ(r.model.kv_heads, 2);
  EXPECT_EQ(r.model.tie_embeddings, false);
  EXPECT_NO_THROW(validate(r, ctx(4)));
  EXPECT_EQ(r.accumulation_steps(4), 1);
}

TEST(Config, JsonAndYamlRoundTrip) {
  // Every key away from its default.
  Config c;
  c.model = {"gpt2", 50257, 768, 12, 12, 12, 3072, 1024, 1e-6, 500000.0, true, 64, "layer_norm", "gelu_mlp",
             "causal_self_attention"};
  c.parallel = {2, 2, 3, PipeSchedule::interleaved, 2, true, std::vector<int>{3, 3, 3, 3}};
  c.train.seq_len = 512;
  c.train.micro_batch = 3;
  c.train.global_batch = 36;
  c.train.steps = 77;
  c.train.seed = 42;
  c.train.precision = DType::f16;
  c.train.grad_dtype = DType::bf16;
  c.train.recompute = Recompute::selective;
  c.train.init_from = "w.h5";
  c.train.eval_every = 5;
  c.train.eval_batches = 2;
  c.train.val_fraction = 0.1;
  c.train.log_every = 3;
  c.train.threads = 6;
  c.train.tf32 = true;
  c.train.offload = {true, true, 3};
  c.optim = {Optimizer::adamw, 1.234e-4, 1.1e-5, 7, LrSchedule::constant, {0.85, 0.975}, 1e-7, 0.01, 0.5, 1,
             {1024.0, 100}, OptimState::int8};
  c.data = {"d/x.h5", false, std::nullopt};
  c.checkpoint = {"runs/rt", 9, 0};
  c.device = DeviceChoice::cuda;

  const nlohmann::json j = to_json(c);
  EXPECT_EQ(j["model"]["hidden"], 768);
  EXPECT_EQ(j["parallel"]["schedule"], "interleaved");
  EXPECT_EQ(j["train"]["precision"], "fp16");
  EXPECT_EQ(j["train"]["offload"]["optimizer"], true);
  EXPECT_EQ(j["train"]["offload"]["prefetch"], 3);
  EXPECT_EQ(j["optim"]["betas"], nlohmann::json({0.85, 0.975}));
  EXPECT_EQ(j["optim"]["loss_scale"]["growth_interval"], 100);
  EXPECT_TRUE(j["data"]["val_path"].is_null());
  EXPECT_EQ(j["device"], "cuda");
  EXPECT_EQ(from_json(j), c);
  EXPECT_EQ(from_json(nlohmann::json::parse(j.dump())), c);  // through text: doubles exact
  EXPECT_EQ(parse_config(to_yaml(c)), c);

  const Config d;
  const nlohmann::json dj = to_json(d);
  EXPECT_EQ(dj["parallel"]["dp"], "auto");
  EXPECT_TRUE(dj["model"]["kv_heads"].is_null());
  EXPECT_TRUE(dj["model"]["tie_embeddings"].is_null());
  EXPECT_EQ(dj["train"]["precision"], "bf16");
  EXPECT_EQ(dj["parallel"]["schedule"], "1f1b");
  EXPECT_EQ(from_json(dj), d);
  EXPECT_EQ(parse_config(to_yaml(d)), d);
  // Missing keys take defaults; unknown keys and wrong types are refused.
  EXPECT_EQ(from_json(nlohmann::json::object()), d);
  EXPECT_EQ(from_json(nlohmann::json{{"model", {{"hidden", 64}}}}).model.hidden, 64);
  expect_config_error([] { from_json(nlohmann::json{{"model", {{"hiden", 64}}}}); }, {"model.hiden"}, "json unknown");
  expect_config_error([] { from_json(nlohmann::json{{"model", {{"hidden", "64"}}}}); }, {"model.hidden", "\"64\""},
                      "json string for int");
  expect_config_error([] { from_json(nlohmann::json{{"model", {{"hidden", 64.5}}}}); }, {"model.hidden"},
                      "json float for int");
  expect_config_error([] { from_json(nlohmann::json::array()); }, {"JSON"}, "json array");
  // The YAML dump is grouped by section, floats keep a '.', null is spelled null.
  const std::string y = to_yaml(d);
  EXPECT_NE(y.find("model:\n  arch: llama\n"), std::string::npos) << y;
  EXPECT_NE(y.find("norm_eps: 1.0e-05"), std::string::npos) << y;
  EXPECT_NE(y.find("rope_theta: 10000.0"), std::string::npos) << y;
  EXPECT_NE(y.find("kv_heads: null"), std::string::npos) << y;
  EXPECT_NE(y.find("betas: [0.9, 0.95]"), std::string::npos) << y;
  EXPECT_NE(y.find("  offload:\n    activations: false\n"), std::string::npos) << y;
  EXPECT_NE(y.find("\ndevice: auto"), std::string::npos) << y;
}

TEST(Config, KeysAreTheContract) {
  // Key names are part of the contract: renaming one must fail here.
  const std::vector<std::string> expected = {
      "model.arch", "model.vocab_size", "model.hidden", "model.layers", "model.heads", "model.kv_heads",
      "model.ffn_hidden", "model.max_seq_len", "model.norm_eps", "model.rope_theta", "model.tie_embeddings",
      "model.pad_vocab_to", "model.norm", "model.mlp", "model.attention", "parallel.tp", "parallel.pp",
      "parallel.dp", "parallel.schedule", "parallel.virtual_stages", "parallel.sequence_parallel",
      "parallel.stage_layers", "parallel.selftest", "parallel.timeout_s", "train.seq_len", "train.micro_batch", "train.global_batch", "train.steps",
      "train.seed", "train.precision", "train.grad_dtype", "train.recompute", "train.init_from",
      "train.eval_every", "train.eval_batches", "train.val_fraction", "train.log_every", "train.threads",
      "train.tf32", "train.offload.activations", "train.offload.prefetch", "train.offload.optimizer", "optim.name",
      "optim.lr",
      "optim.min_lr", "optim.warmup_steps", "optim.schedule", "optim.betas", "optim.eps", "optim.weight_decay",
      "optim.grad_clip", "optim.zero", "optim.state", "optim.loss_scale.initial", "optim.loss_scale.growth_interval",
      "data.path", "data.shuffle", "data.val_path", "checkpoint.dir", "checkpoint.every", "checkpoint.keep",
      "device"};
  std::vector<std::string> got;
  for (const auto& k : config_keys()) got.push_back(k.path);
  EXPECT_EQ(got, expected);
  // Defaults are read from the struct and shown as YAML.
  auto def = [](const std::string& path) {
    for (const auto& k : config_keys())
      if (k.path == path) return k.default_value;
    return std::string("<missing>");
  };
  EXPECT_EQ(def("model.hidden"), "4096");
  EXPECT_EQ(def("model.kv_heads"), "null");
  EXPECT_EQ(def("parallel.dp"), "auto");
  EXPECT_EQ(def("parallel.schedule"), "1f1b");
  EXPECT_EQ(def("optim.betas"), "[0.9, 0.95]");
  EXPECT_EQ(def("optim.lr"), "0.0003");
  EXPECT_EQ(def("train.seed"), "1234");
  EXPECT_EQ(def("device"), "auto");
  for (const auto& k : config_keys()) {
    EXPECT_FALSE(k.help.empty()) << k.path;
    EXPECT_FALSE(k.type.empty()) << k.path;
  }
  const std::string text = describe_keys();
  for (const auto& k : config_keys()) {
    EXPECT_NE(text.find(k.path + " = " + k.default_value), std::string::npos) << k.path;
    EXPECT_NE(text.find(k.help), std::string::npos) << k.path;
  }
}

TEST(Config, ReadmeDocumentsEveryKey) {
  const fs::path readme = repo_root() / "configs" / "README.md";
  ASSERT_TRUE(fs::exists(readme)) << readme;
  const std::string text = read_text(readme);
  for (const auto& k : config_keys())
    EXPECT_NE(text.find("`" + k.path + "`"), std::string::npos) << "configs/README.md does not document `" << k.path
                                                                  << "`";
}

TEST(Config, ShippedConfigsLoadAndValidate) {
  const fs::path dir = repo_root() / "configs";
  ASSERT_TRUE(fs::exists(dir / "tiny.yaml")) << dir;
  std::set<std::string> seen;
  const std::regex ranks_re(R"(^# ranks: (\d+))");
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    const std::string name = entry.path().filename().string();
    seen.insert(name);
    std::istringstream lines(read_text(entry.path()));
    int ranks = 0;
    for (std::string line; std::getline(lines, line);) {
      std::smatch m;
      if (std::regex_search(line, m, ranks_re)) ranks = std::stoi(m[1]);
    }
    ASSERT_GT(ranks, 0) << name << " has no '# ranks: N' line";
    Config c;
    ASSERT_NO_THROW(c = load_config(entry.path().string(), {})) << name;
    EXPECT_NO_THROW(validate(c, ctx(ranks))) << name;
    // The dump of a shipped config loads back to the same config.
    EXPECT_EQ(parse_config(to_yaml(c)), c) << name;
  }
  for (const char* required : {"tiny.yaml", "tiny-gpt2.yaml", "125m.yaml", "1b.yaml", "7b.yaml", "13b.yaml"})
    EXPECT_TRUE(seen.count(required)) << required;

  const Config tiny = load_config((dir / "tiny.yaml").string(), {});
  EXPECT_EQ(tiny.model.arch, "llama");
  EXPECT_EQ(tiny.model.vocab_size, 256);
  EXPECT_EQ(tiny.model.hidden, 128);
  EXPECT_EQ(tiny.model.layers, 4);
  EXPECT_EQ(tiny.model.heads, 4);
  EXPECT_EQ(tiny.model.kv_heads, 2);
  EXPECT_EQ(tiny.model.ffn_hidden, 352);
  EXPECT_EQ(tiny.model.max_seq_len, 256);
  EXPECT_EQ(tiny.train.seq_len, 128);
  EXPECT_EQ(tiny.train.micro_batch, 8);
  EXPECT_EQ(tiny.train.global_batch, 16);
  EXPECT_EQ(tiny.train.steps, 300);
  EXPECT_EQ(tiny.train.precision, DType::f32);
  EXPECT_EQ(tiny.optim.lr, 3e-3);
  EXPECT_EQ(tiny.optim.min_lr, 3e-4);
  EXPECT_EQ(tiny.optim.warmup_steps, 20);
  EXPECT_EQ(tiny.data.path, "data/corpus/nlp-corpus.h5");
  EXPECT_TRUE(tiny.data.shuffle);
  EXPECT_EQ(tiny.train.eval_every, 50);
  EXPECT_EQ(tiny.train.val_fraction, 0.02);
  EXPECT_EQ(tiny.checkpoint.dir, "runs/tiny");
  EXPECT_EQ(tiny.checkpoint.every, 100);
  EXPECT_EQ(tiny.checkpoint.keep, 2);
  EXPECT_EQ(tiny.device, DeviceChoice::automatic);
  EXPECT_EQ(tiny.padded_vocab(), 256);

  const Config gpt2 = load_config((dir / "tiny-gpt2.yaml").string(), {});
  EXPECT_EQ(gpt2.model.arch, "gpt2");
  EXPECT_EQ(gpt2.model.ffn_hidden, 512);
  EXPECT_TRUE(gpt2.model.resolved_tie_embeddings());

  const Config b13 = load_config((dir / "13b.yaml").string(), {});
  EXPECT_EQ(b13.model.hidden, 5120);
  EXPECT_EQ(b13.model.layers, 40);
  EXPECT_EQ(b13.model.heads, 40);
  EXPECT_EQ(b13.model.ffn_hidden, 13824);
  EXPECT_EQ(b13.parallel.pp, 4);
  EXPECT_EQ(b13.train.precision, DType::bf16);
  EXPECT_EQ(b13.train.grad_dtype, DType::bf16);
  EXPECT_EQ(b13.train.recompute, Recompute::full);
  EXPECT_TRUE(b13.train.offload.optimizer);
  EXPECT_EQ(b13.accumulation_steps(4), 64);
  EXPECT_EQ(b13.resolved_dp(4), 1);
  // 13b does not fit on one rank's layout: validate at world 1 refuses it.
  expect_config_error([&] { validate(b13, ctx(1)); }, {"parallel.dp"}, "13b on one rank");
}
