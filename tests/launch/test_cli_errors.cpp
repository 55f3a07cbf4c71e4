// tests/launch/test_cli_errors.cpp — end-to-end bad input for the `ptrain` executable.
//
// Every case runs PTRAIN_BINARY as a subprocess (posix_spawn, stdout/stderr captured to
// files, killed after a timeout) and checks the project rule for bad input:
//  * the exit status is exactly 2 (not a signal, not 1 = internal error, not a timeout);
//  * stderr is ONE line "ptrain: error: ..." naming the offending key path, option or file
//    (command-line errors may add the usage block that starts with "usage:");
//  * no "terminate called", "Aborted", "core dumped", stack trace or HDF5 error stack;
//  * nothing partial is left behind: no checkpoint of a failed run, no output file of a
//    failed `prepare`/`export`, and existing checkpoints/data files are untouched.
// A tiny valid setup (token file from `ptrain prepare`, a 2-layer llama config) is built
// first under $PTRAIN_TEST_TMP (else /tmp) in a per-process folder; the valid run itself
// must exit 0 (the control), and its checkpoints/export feed the resume and init_from cases.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "core/h5io.h"
#include "core/tensor.h"

extern char** environ;

namespace fs = std::filesystem;
using namespace ptrain;

namespace {

// ---------------------------------------------------------------- subprocess ----

struct RunResult {
  bool exited = false;     ///< normal exit (WIFEXITED)
  int code = -1;           ///< exit status when exited
  int signal = 0;          ///< terminating signal when not exited
  bool timed_out = false;  ///< killed by the guard
  std::string out, err;
  std::string cmd;         ///< the command line, for messages
};

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  ASSERT_TRUE(out.good()) << "cannot write " << p;
}

/// Runs PTRAIN_BINARY with `args`; stdout/stderr go to files in `scratch`; killed after `timeout_s`.
RunResult run_ptrain(const std::vector<std::string>& args, const fs::path& scratch, int timeout_s = 25) {
  static int counter = 0;
  RunResult r;
  r.cmd = "ptrain";
  for (const auto& a : args) r.cmd += " " + a;
  const int id = counter++;
  const fs::path out_path = scratch / ("stdout_" + std::to_string(id) + ".txt");
  const fs::path err_path = scratch / ("stderr_" + std::to_string(id) + ".txt");

  std::vector<std::string> argv_s = {PTRAIN_BINARY};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    if (kv.rfind("OMP_NUM_THREADS=", 0) == 0 || kv.rfind("OPENBLAS_NUM_THREADS=", 0) == 0) continue;
    env_s.push_back(kv);
  }
  env_s.push_back("OMP_NUM_THREADS=1");
  env_s.push_back("OPENBLAS_NUM_THREADS=1");
  std::vector<char*> envp;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = std::string("posix_spawn failed: ") + std::strerror(rc);
    return r;
  }
  int status = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  for (;;) {
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (std::chrono::steady_clock::now() > deadline) {
      r.timed_out = true;
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (WIFEXITED(status)) {
    r.exited = true;
    r.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    r.signal = WTERMSIG(status);
  }
  r.out = read_text(out_path);
  r.err = read_text(err_path);
  return r;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> lines;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  while (!lines.empty() && lines.back().empty()) lines.pop_back();
  return lines;
}

std::string describe(const RunResult& r) {
  std::ostringstream s;
  s << "\n  command: " << r.cmd << "\n  status: ";
  if (r.timed_out) s << "TIMED OUT (killed)";
  else if (r.exited) s << "exit " << r.code;
  else s << "signal " << r.signal;
  s << "\n  stderr: <<<" << r.err << ">>>\n  stdout: <<<" << r.out.substr(0, 2000) << ">>>";
  return s.str();
}

enum class Usage { forbidden, allowed };

/// The bad-input contract: exit 2, one-line "ptrain: error: ..." naming every needle, no crash text.
void expect_bad_input(const RunResult& r, const std::vector<std::string>& needles, Usage usage = Usage::forbidden) {
  const std::string d = describe(r);
  ASSERT_FALSE(r.timed_out) << "ptrain did not finish" << d;
  EXPECT_TRUE(r.exited) << "killed by a signal instead of exiting" << d;
  EXPECT_EQ(r.code, 2) << "bad input must exit with status 2" << d;
  for (const char* bad : {"terminate called", "Aborted", "core dumped", "Segmentation fault", "internal error",
                          "what():", "HDF5-DIAG", "Stack trace", "stack trace", "#0 ", "backtrace"}) {
    EXPECT_EQ(r.err.find(bad), std::string::npos) << "stderr holds '" << bad << "'" << d;
    EXPECT_EQ(r.out.find(bad), std::string::npos) << "stdout holds '" << bad << "'" << d;
  }
  const auto lines = split_lines(r.err);
  ASSERT_GE(lines.size(), 1u) << "no message on stderr" << d;
  EXPECT_EQ(lines[0].rfind("ptrain: error: ", 0), 0u) << "the message must start with 'ptrain: error: '" << d;
  if (usage == Usage::allowed && lines.size() > 1) {
    EXPECT_EQ(lines[1], "usage:") << "only the usage block may follow the one-line message" << d;
    for (size_t i = 2; i < lines.size(); ++i)
      EXPECT_EQ(lines[i].rfind("  ptrain", 0), 0u) << "line " << i + 1 << " is not part of the usage block" << d;
  } else {
    EXPECT_EQ(lines.size(), 1u) << "the message must be a single line" << d;
  }
  for (const auto& n : needles)
    EXPECT_NE(lines[0].find(n), std::string::npos) << "the message does not name '" << n << "'" << d;
}

/// Names of the step_* entries of a run directory (complete or not).
std::vector<std::string> step_entries(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return names;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("step_", 0) == 0) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// Every regular file under `dir` with its bytes (to prove a failed command changed nothing).
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = read_text(e.path());
  return files;
}

void replace_once(std::string& s, const std::string& from, const std::string& to) {
  const size_t at = s.find(from);
  ASSERT_NE(at, std::string::npos) << "'" << from << "' not in the base config";
  s.replace(at, from.size(), to);
}

// ---------------------------------------------------------------- fixture ----

class CliErrors : public ::testing::Test {
 protected:
  static inline fs::path dir_;           // per-process scratch folder
  static inline fs::path tokens_;        // valid token file (ptrain prepare)
  static inline fs::path control_cfg_;   // valid config
  static inline fs::path control_run_;   // its checkpoint.dir (step 1 and step 2)
  static inline fs::path weights_;       // control run exported (HF names), for init_from
  static inline RunResult prepare_result_, control_result_, export_result_;

  static void SetUpTestSuite() {
    const char* env = std::getenv("PTRAIN_TEST_TMP");
    dir_ = fs::path(env && *env ? env : "/tmp") / ("launch_test_cli_errors_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "logs");

    std::string text;
    for (int i = 0; i < 60; ++i)
      text += "line " + std::to_string(i) + ": the quick brown fox jumps over the lazy dog.\n";
    write_text(dir_ / "corpus.txt", text);
    tokens_ = dir_ / "tokens.h5";
    prepare_result_ = run_ptrain({"prepare", "--input", (dir_ / "corpus.txt").string(), "--out", tokens_.string()},
                                 dir_ / "logs");

    control_run_ = dir_ / "run_control";
    control_cfg_ = dir_ / "control.yaml";
    write_text(control_cfg_, base_yaml(control_run_));
    control_result_ = run_ptrain({"--cfg", control_cfg_.string(), "--quiet"}, dir_ / "logs");

    weights_ = dir_ / "control_weights.h5";
    export_result_ = run_ptrain({"export", "--run", control_run_.string(), "--out", weights_.string()}, dir_ / "logs");
  }

  static void TearDownTestSuite() {
    if (!std::getenv("PTRAIN_KEEP_TEST_TMP")) {
      std::error_code ec;
      fs::remove_all(dir_, ec);
    }
  }

  /// The valid tiny config, with checkpoint.dir = run_dir and data.path = the prepared tokens.
  static std::string base_yaml(const fs::path& run_dir) {
    return "model:\n"
           "  arch: llama\n"
           "  vocab_size: 256\n"
           "  hidden: 32\n"
           "  layers: 2\n"
           "  heads: 2\n"
           "  ffn_hidden: 64\n"
           "  max_seq_len: 32\n"
           "train:\n"
           "  seq_len: 16\n"
           "  micro_batch: 2\n"
           "  global_batch: 2\n"
           "  steps: 2\n"
           "  precision: fp32\n"
           "  eval_every: 0\n"
           "  log_every: 1\n"
           "  threads: 1\n"
           "optim:\n"
           "  lr: 1.0e-3\n"
           "  min_lr: 1.0e-4\n"
           "  warmup_steps: 1\n"
           "data:\n"
           "  path: \"" + tokens_.string() + "\"\n"
           "checkpoint:\n"
           "  dir: \"" + run_dir.string() + "\"\n"
           "  every: 1\n"
           "  keep: 2\n"
           "device: cpu\n";
  }

  /// A fresh, not yet existing run directory for case `label`.
  static fs::path run_dir(const std::string& label) { return dir_ / ("run_" + label); }

  /// Runs ptrain; stdout/stderr land in the scratch logs folder.
  static RunResult ptrain(const std::vector<std::string>& args) { return run_ptrain(args, dir_ / "logs"); }

  /// Writes a config `label`.yaml: the base config (checkpoint.dir = run_dir(label)) after `edit`.
  static fs::path cfg_file(const std::string& label, const std::function<void(std::string&)>& edit = {}) {
    std::string y = base_yaml(run_dir(label));
    if (edit) edit(y);
    const fs::path p = dir_ / (label + ".yaml");
    write_text(p, y);
    return p;
  }

  /// `ptrain --cfg <valid config with its own run dir> --quiet --set s...`.
  static RunResult train_with_sets(const std::string& label, const std::vector<std::string>& sets,
                                   const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"--cfg", cfg_file(label).string(), "--quiet"};
    for (const auto& s : sets) {
      args.push_back("--set");
      args.push_back(s);
    }
    args.insert(args.end(), extra.begin(), extra.end());
    return ptrain(args);
  }

  /// A failed run must not have created its run directory (validation before anything heavy).
  static void expect_untouched_run_dir(const std::string& label) {
    EXPECT_FALSE(fs::exists(run_dir(label))) << "a failed run created " << run_dir(label);
  }

  /// A token file written directly: /tokens (i32, or f32 when `as_float`) of `shape`, root attributes.
  static fs::path token_file(const std::string& name, const std::vector<int32_t>& ids, Shape shape, bool as_float,
                             int64_t vocab_attr, bool with_tokenizer = true, const std::string& dataset = "tokens") {
    const fs::path p = dir_ / name;
    h5::File f = h5::File::create(p.string());
    if (as_float) {
      std::vector<float> v(ids.begin(), ids.end());
      h5::write(f, dataset, Tensor::from_vector(v, shape), DType::f32);
    } else {
      h5::write(f, dataset, Tensor::from_vector_i32(ids, shape), DType::i32);
    }
    if (with_tokenizer) h5::write_attr(f, "/", "tokenizer", std::string("byte"));
    if (vocab_attr > 0) h5::write_attr(f, "/", "vocab_size", vocab_attr);
    f.close();
    return p;
  }

  static std::vector<int32_t> byte_ids(int n) {
    std::vector<int32_t> v(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) v[static_cast<size_t>(i)] = 32 + (i * 7) % 90;
    return v;
  }

  /// A copy of the control run directory (for resume cases that damage or reuse it).
  static fs::path copy_control(const std::string& label) {
    const fs::path d = run_dir(label);
    fs::remove_all(d);
    fs::copy(control_run_, d, fs::copy_options::recursive);
    return d;
  }

  void SetUp() override {
    ASSERT_FALSE(prepare_result_.timed_out) << describe(prepare_result_);
    ASSERT_EQ(prepare_result_.code, 0) << "setup: ptrain prepare of the valid corpus failed" << describe(prepare_result_);
    ASSERT_TRUE(fs::exists(tokens_));
  }
};

// ---------------------------------------------------------------- the control ----

TEST_F(CliErrors, ControlRunTrainsAndExports) {
  ASSERT_EQ(control_result_.code, 0) << "the valid tiny config must train" << describe(control_result_);
  EXPECT_TRUE(control_result_.err.empty()) << describe(control_result_);
  EXPECT_EQ(step_entries(control_run_), (std::vector<std::string>{"step_00000001", "step_00000002"}));
  EXPECT_TRUE(fs::exists(control_run_ / "step_00000002" / "meta.json"));
  ASSERT_EQ(export_result_.code, 0) << describe(export_result_);
  EXPECT_TRUE(fs::exists(weights_));
  // --resume of a finished run is fine too (nothing to do, exit 0, no new checkpoint).
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--resume"});
  EXPECT_EQ(r.code, 0) << describe(r);
  EXPECT_EQ(step_entries(control_run_), (std::vector<std::string>{"step_00000001", "step_00000002"}));
}

// ---------------------------------------------------------------- command line ----

TEST_F(CliErrors, UnknownOption) {
  auto r = ptrain({"--cfg", control_cfg_.string(), "--bogus-flag"});
  expect_bad_input(r, {"bogus-flag"}, Usage::allowed);
}

TEST_F(CliErrors, MissingCfgOption) {
  auto r = ptrain({"--quiet"});
  expect_bad_input(r, {"--cfg"}, Usage::allowed);
}

TEST_F(CliErrors, SetWithoutValueArgument) {
  auto r = ptrain({"--cfg", control_cfg_.string(), "--set"});
  expect_bad_input(r, {"set"}, Usage::allowed);
}

TEST_F(CliErrors, NoArgumentsPrintsUsageAndExits2) {
  auto r = ptrain({});
  ASSERT_TRUE(r.exited) << describe(r);
  EXPECT_EQ(r.code, 2) << describe(r);
  EXPECT_NE((r.out + r.err).find("usage:"), std::string::npos) << describe(r);
}

// ---------------------------------------------------------------- config file ----

TEST_F(CliErrors, ConfigFileMissing) {
  auto r = ptrain({"--cfg", (dir_ / "no_such_config.yaml").string()});
  expect_bad_input(r, {"no_such_config.yaml"});
}

TEST_F(CliErrors, ConfigFileIsADirectory) {
  fs::create_directories(dir_ / "cfgdir.yaml");
  auto r = ptrain({"--cfg", (dir_ / "cfgdir.yaml").string()});
  expect_bad_input(r, {"cfgdir.yaml"});
}

TEST_F(CliErrors, YamlSyntaxError) {
  auto p = cfg_file("yaml_syntax", [](std::string& y) { replace_once(y, "  hidden: 32\n", "  hidden: [32\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"yaml_syntax.yaml", "YAML"});
  expect_untouched_run_dir("yaml_syntax");
}

TEST_F(CliErrors, TopLevelNotAMapping) {
  const fs::path p = dir_ / "list.yaml";
  write_text(p, "- model\n- train\n");
  expect_bad_input(ptrain({"--cfg", p.string()}), {"list.yaml", "model"});
}

TEST_F(CliErrors, UnknownTopLevelKey) {
  auto p = cfg_file("unknown_top", [](std::string& y) { y += "trian:\n  steps: 3\n"; });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"trian"});
  expect_untouched_run_dir("unknown_top");
}

TEST_F(CliErrors, UnknownNestedKey) {
  auto p = cfg_file("unknown_nested", [](std::string& y) { replace_once(y, "  hidden: 32\n", "  hiden: 32\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.hiden"});
  expect_untouched_run_dir("unknown_nested");
}

TEST_F(CliErrors, SectionNotAMapping) {
  auto p = cfg_file("section_scalar", [](std::string& y) { y += "parallel: 4\n"; });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"parallel"});
}

TEST_F(CliErrors, DuplicateKey) {
  auto p = cfg_file("dup_key", [](std::string& y) { replace_once(y, "  hidden: 32\n", "  hidden: 32\n  hidden: 64\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.hidden"});
}

TEST_F(CliErrors, WrongTypeStringForInt) {
  auto p = cfg_file("type_str", [](std::string& y) { replace_once(y, "  hidden: 32\n", "  hidden: abc\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.hidden"});
  expect_untouched_run_dir("type_str");
}

TEST_F(CliErrors, WrongTypeFloatForInt) {
  auto p = cfg_file("type_float", [](std::string& y) { replace_once(y, "  layers: 2\n", "  layers: 2.5\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.layers"});
}

TEST_F(CliErrors, WrongTypeListForBool) {
  auto p = cfg_file("type_bool", [](std::string& y) { y += "parallel:\n  sequence_parallel: [1, 2]\n"; });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"parallel.sequence_parallel"});
}

TEST_F(CliErrors, IntegerOverflow) {
  auto p = cfg_file("overflow", [](std::string& y) { replace_once(y, "  hidden: 32\n", "  hidden: 99999999999\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.hidden"});
}

TEST_F(CliErrors, NonPositiveLayers) {
  auto p = cfg_file("zero_layers", [](std::string& y) { replace_once(y, "  layers: 2\n", "  layers: 0\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"model.layers"});
  expect_untouched_run_dir("zero_layers");
}

TEST_F(CliErrors, NegativeMicroBatch) {
  expect_bad_input(train_with_sets("neg_micro", {"train.micro_batch=-1"}), {"train.micro_batch"});
  expect_untouched_run_dir("neg_micro");
}

TEST_F(CliErrors, NegativeLearningRate) {
  expect_bad_input(train_with_sets("neg_lr", {"optim.lr=-0.1"}), {"optim.lr"});
}

TEST_F(CliErrors, ValFractionOutOfRange) {
  expect_bad_input(train_with_sets("val_frac", {"train.val_fraction=1.5"}), {"train.val_fraction"});
}

TEST_F(CliErrors, BetasWrongLength) {
  expect_bad_input(train_with_sets("betas", {"optim.betas=[0.9]"}), {"optim.betas"});
}

TEST_F(CliErrors, HiddenNotDivisibleByHeads) {
  expect_bad_input(train_with_sets("hid_heads", {"model.heads=3"}), {"model.hidden", "model.heads"});
  expect_untouched_run_dir("hid_heads");
}

TEST_F(CliErrors, HeadsNotDivisibleByKvHeads) {
  expect_bad_input(train_with_sets("kv_heads", {"model.heads=4", "model.kv_heads=3"}), {"model.kv_heads"});
  expect_untouched_run_dir("kv_heads");
}

TEST_F(CliErrors, SeqLenAboveMaxSeqLen) {
  expect_bad_input(train_with_sets("seq_len", {"train.seq_len=64"}), {"train.seq_len", "max_seq_len"});
  expect_untouched_run_dir("seq_len");
}

TEST_F(CliErrors, GlobalBatchNotMultipleOfMicroBatch) {
  expect_bad_input(train_with_sets("gbatch", {"train.global_batch=3"}), {"train.global_batch"});
}

TEST_F(CliErrors, WarmupLongerThanRun) {
  expect_bad_input(train_with_sets("warmup", {"optim.warmup_steps=5"}), {"optim.warmup_steps"});
}

TEST_F(CliErrors, ParallelLayoutNeedsMoreRanks) {
  expect_bad_input(train_with_sets("tp2", {"parallel.tp=2", "parallel.dp=1"}), {"parallel."});
}

TEST_F(CliErrors, BadEnumPrecision) {
  auto p = cfg_file("fp8", [](std::string& y) { replace_once(y, "  precision: fp32\n", "  precision: fp8\n"); });
  expect_bad_input(ptrain({"--cfg", p.string()}), {"train.precision", "fp8", "bf16"});
  expect_untouched_run_dir("fp8");
}

TEST_F(CliErrors, BadEnumSchedule) {
  expect_bad_input(train_with_sets("sched", {"parallel.schedule=foo"}), {"parallel.schedule", "foo", "1f1b"});
}

TEST_F(CliErrors, BadEnumDevice) {
  expect_bad_input(train_with_sets("device", {"device=tpu"}), {"device", "tpu"});
}

TEST_F(CliErrors, UnknownArch) {
  expect_bad_input(train_with_sets("arch", {"model.arch=bert"}), {"model.arch", "bert", "llama"});
  expect_untouched_run_dir("arch");
}

TEST_F(CliErrors, UnknownMlp) {
  expect_bad_input(train_with_sets("mlp", {"model.mlp=mixture"}), {"model.mlp", "mixture", "swiglu"});
  expect_untouched_run_dir("mlp");
}

// Memory features (issue 13): a value out of range is refused by the config; offload on the CPU
// refuses at start-up, before the run directory exists.
TEST_F(CliErrors, RecomputeValueOutOfRange) {
  expect_bad_input(train_with_sets("recompute_bad", {"train.recompute=partial"}),
                   {"train.recompute", "partial", "selective", "full"});
  expect_untouched_run_dir("recompute_bad");
}

TEST_F(CliErrors, OffloadOnTheCpuIsRefused) {
  expect_bad_input(train_with_sets("offload_act_cpu", {"train.offload.activations=true"}),
                   {"train.offload.activations", "device: cuda"});
  expect_untouched_run_dir("offload_act_cpu");
  expect_bad_input(train_with_sets("offload_opt_cpu", {"train.offload.optimizer=true"}),
                   {"train.offload.optimizer", "device: cuda"});
  expect_untouched_run_dir("offload_opt_cpu");
  expect_bad_input(train_with_sets("offload_not_bool", {"train.offload.optimizer=maybe"}), {"train.offload.optimizer"});
  expect_bad_input(train_with_sets("offload_prefetch_0", {"train.offload.prefetch=0"}), {"train.offload.prefetch"});
  expect_untouched_run_dir("offload_prefetch_0");
}

TEST_F(CliErrors, OptimizerStateOutOfRangeOrWithFp16) {
  expect_bad_input(train_with_sets("state_bad", {"optim.state=4bit"}), {"optim.state", "4bit", "bf16-sr", "8bit"});
  expect_untouched_run_dir("state_bad");
  expect_bad_input(train_with_sets("state_fp16", {"optim.state=8bit", "train.precision=fp16"}),
                   {"optim.state", "fp16", "bf16"});
  expect_untouched_run_dir("state_fp16");
}

TEST_F(CliErrors, SetWithoutEquals) {
  expect_bad_input(train_with_sets("set_noeq", {"model.hidden"}), {"--set", "model.hidden"});
}

TEST_F(CliErrors, SetUnknownKey) {
  expect_bad_input(train_with_sets("set_unknown", {"model.hiddn=64"}), {"model.hiddn"});
}

TEST_F(CliErrors, SetInvalidYamlValue) {
  expect_bad_input(train_with_sets("set_yaml", {"model.hidden=[1, 2"}), {"model.hidden"});
}

// ---------------------------------------------------------------- data files ----

TEST_F(CliErrors, DataFileMissing) {
  expect_bad_input(train_with_sets("data_missing", {"data.path=" + (dir_ / "absent_tokens.h5").string()}),
                   {"absent_tokens.h5"});
  expect_untouched_run_dir("data_missing");
}

TEST_F(CliErrors, DataFileIsADirectory) {
  fs::create_directories(dir_ / "tokdir.h5");
  expect_bad_input(train_with_sets("data_dir", {"data.path=" + (dir_ / "tokdir.h5").string()}), {"tokdir.h5"});
}

TEST_F(CliErrors, DataFileNotHdf5) {
  write_text(dir_ / "plain_text.h5", "this is text, not HDF5\n");
  expect_bad_input(train_with_sets("data_text", {"data.path=" + (dir_ / "plain_text.h5").string()}),
                   {"plain_text.h5", "HDF5"});
  expect_untouched_run_dir("data_text");
}

TEST_F(CliErrors, DataFileWithoutTokensDataset) {
  auto p = token_file("no_tokens.h5", byte_ids(64), {64}, false, 256, true, "ids");
  expect_bad_input(train_with_sets("data_notokens", {"data.path=" + p.string()}), {"no_tokens.h5", "/tokens"});
  expect_untouched_run_dir("data_notokens");
}

TEST_F(CliErrors, DataTokensOfFloatType) {
  auto p = token_file("float_tokens.h5", byte_ids(64), {64}, true, 256);
  expect_bad_input(train_with_sets("data_float", {"data.path=" + p.string()}), {"float_tokens.h5", "tokens"});
  expect_untouched_run_dir("data_float");
}

TEST_F(CliErrors, DataTokensTwoDimensional) {
  auto p = token_file("tokens_2d.h5", byte_ids(64), {4, 16}, false, 256);
  expect_bad_input(train_with_sets("data_2d", {"data.path=" + p.string()}), {"tokens_2d.h5", "1-D"});
}

TEST_F(CliErrors, DataWithoutVocabSizeAttribute) {
  auto p = token_file("no_vocab_attr.h5", byte_ids(64), {64}, false, /*vocab_attr=*/0);
  expect_bad_input(train_with_sets("data_novocab", {"data.path=" + p.string()}), {"no_vocab_attr.h5", "vocab_size"});
}

TEST_F(CliErrors, DataVocabLargerThanModel) {
  auto p = token_file("big_vocab.h5", byte_ids(64), {64}, false, 50257);
  expect_bad_input(train_with_sets("data_bigvocab", {"data.path=" + p.string()}),
                   {"big_vocab.h5", "50257", "model.vocab_size"});
  expect_untouched_run_dir("data_bigvocab");
}

TEST_F(CliErrors, DataTokenIdAboveModelVocab) {
  auto ids = byte_ids(256);
  for (size_t i = 0; i < ids.size(); i += 4) ids[i] = 1000;  // every window of 17 tokens holds one
  auto p = token_file("large_id.h5", ids, {256}, false, 256);
  expect_bad_input(train_with_sets("data_largeid", {"data.path=" + p.string()}),
                   {"large_id.h5", "1000", "model.vocab_size"});
  EXPECT_TRUE(step_entries(run_dir("data_largeid")).empty()) << "a checkpoint was written for a failed run";
}

TEST_F(CliErrors, DataTooShortForOneWindow) {
  auto p = token_file("short.h5", byte_ids(10), {10}, false, 256);
  expect_bad_input(train_with_sets("data_short", {"data.path=" + p.string()}), {"short.h5", "seq_len"});
  expect_untouched_run_dir("data_short");
}

TEST_F(CliErrors, ValidationFileMissing) {
  expect_bad_input(train_with_sets("val_missing", {"data.val_path=" + (dir_ / "absent_val.h5").string()}),
                   {"absent_val.h5"});
}

// ---------------------------------------------------------------- init_from ----

TEST_F(CliErrors, InitFromMissingFile) {
  expect_bad_input(train_with_sets("init_missing", {"train.init_from=" + (dir_ / "absent_weights.h5").string()}),
                   {"train.init_from", "absent_weights.h5"});
  expect_untouched_run_dir("init_missing");
}

TEST_F(CliErrors, InitFromNotHdf5) {
  write_text(dir_ / "weights_text.h5", "not weights\n");
  expect_bad_input(train_with_sets("init_text", {"train.init_from=" + (dir_ / "weights_text.h5").string()}),
                   {"weights_text.h5"});
  expect_untouched_run_dir("init_text");
}

TEST_F(CliErrors, InitFromMissingTensor) {
  ASSERT_EQ(export_result_.code, 0) << describe(export_result_);
  h5::File src = h5::File::open(weights_.string());
  const auto names = h5::list_datasets(src);
  ASSERT_GE(names.size(), 2u);
  const fs::path p = dir_ / "weights_missing_tensor.h5";
  {
    h5::File dst = h5::File::create(p.string());
    for (size_t i = 1; i < names.size(); ++i) h5::write(dst, names[i], h5::read(src, names[i]), DType::f32);
  }
  expect_bad_input(train_with_sets("init_notensor", {"train.init_from=" + p.string()}),
                   {"train.init_from", names[0]});
  expect_untouched_run_dir("init_notensor");
}

TEST_F(CliErrors, InitFromWrongShape) {
  ASSERT_EQ(export_result_.code, 0) << describe(export_result_);
  h5::File src = h5::File::open(weights_.string());
  const auto names = h5::list_datasets(src);
  ASSERT_GE(names.size(), 1u);
  const fs::path p = dir_ / "weights_wrong_shape.h5";
  {
    h5::File dst = h5::File::create(p.string());
    for (size_t i = 0; i < names.size(); ++i) {
      Tensor t = h5::read(src, names[i]);
      if (i == 0) {
        Shape s = t.shape();
        s[0] += 1;
        t = Tensor::zeros(s);
      }
      h5::write(dst, names[i], t, DType::f32);
    }
  }
  expect_bad_input(train_with_sets("init_shape", {"train.init_from=" + p.string()}), {"train.init_from", names[0]});
  expect_untouched_run_dir("init_shape");
}

// ---------------------------------------------------------------- checkpoints ----

TEST_F(CliErrors, FreshRunIntoDirWithCheckpoints) {
  const fs::path d = copy_control("existing");
  const auto before = snapshot(d);
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--set", "checkpoint.dir=" + d.string()});
  expect_bad_input(r, {"checkpoint.dir", "--resume"});
  EXPECT_EQ(snapshot(d), before) << "the existing run directory was modified";
}

TEST_F(CliErrors, ResumeWithCorruptMetaJson) {
  const fs::path d = copy_control("corrupt_meta");
  write_text(d / "step_00000002" / "meta.json", "{ \"format\": \"ptrain-checkpoint-1\", \"step\": ");
  const auto before = snapshot(d);
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--resume", "--set", "checkpoint.dir=" + d.string()});
  expect_bad_input(r, {"meta.json", "step_00000002"});
  EXPECT_EQ(step_entries(d), (std::vector<std::string>{"step_00000001", "step_00000002"}));
  EXPECT_EQ(snapshot(d), before) << "checkpoints were modified or deleted by a failed resume";
}

TEST_F(CliErrors, ResumeWithDamagedRankFile) {
  const fs::path d = copy_control("damaged_rank");
  write_text(d / "step_00000002" / "rank_00000.h5", "truncated");
  const auto before = snapshot(d);
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--resume", "--set", "checkpoint.dir=" + d.string()});
  expect_bad_input(r, {"rank_00000.h5"});
  EXPECT_EQ(snapshot(d), before) << "checkpoints were modified or deleted by a failed resume";
}

TEST_F(CliErrors, ResumeWithDifferentModelSize) {
  const fs::path d = copy_control("resize");
  const auto before = snapshot(d);
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--resume", "--set", "checkpoint.dir=" + d.string(),
                   "--set", "model.hidden=64", "--set", "train.steps=3"});
  expect_bad_input(r, {"step_00000002", "tensor ", "shape"});
  EXPECT_EQ(snapshot(d), before) << "checkpoints were modified by a failed resume";
}

TEST_F(CliErrors, ResumeWithDifferentSeqLen) {
  const fs::path d = copy_control("reseq");
  const auto before = snapshot(d);
  auto r = ptrain({"--cfg", control_cfg_.string(), "--quiet", "--resume", "--set", "checkpoint.dir=" + d.string(),
                   "--set", "train.seq_len=8", "--set", "train.steps=3"});
  expect_bad_input(r, {"seq_len"});
  EXPECT_EQ(snapshot(d), before) << "checkpoints were modified by a failed resume";
}

// ---------------------------------------------------------------- prepare ----

TEST_F(CliErrors, PrepareMissingInput) {
  const fs::path out = dir_ / "prep_missing.h5";
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "absent_corpus.txt").string(), "--out", out.string()}),
                   {"absent_corpus.txt"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(CliErrors, PrepareMalformedJson) {
  write_text(dir_ / "broken.json", "[\"first document\", {\"text\": \"second\"");
  const fs::path out = dir_ / "prep_json.h5";
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "broken.json").string(), "--out", out.string()}),
                   {"broken.json", "JSON"});
  EXPECT_FALSE(fs::exists(out)) << "a failed prepare left an output file";
  EXPECT_FALSE(fs::exists(out.string() + ".tmp")) << "a failed prepare left a temporary file";
}

TEST_F(CliErrors, PrepareMalformedJsonlLine) {
  write_text(dir_ / "broken.jsonl", "{\"text\": \"ok\"}\n{\"text\": oops}\n");
  const fs::path out = dir_ / "prep_jsonl.h5";
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "broken.jsonl").string(), "--out", out.string()}),
                   {"broken.jsonl", "line 2"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(CliErrors, PrepareFailureKeepsExistingOutput) {
  write_text(dir_ / "broken2.json", "{\"text\": ");
  const fs::path out = dir_ / "prep_keep.h5";
  fs::copy_file(tokens_, out, fs::copy_options::overwrite_existing);
  const std::string before = read_text(out);
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "broken2.json").string(), "--out", out.string()}),
                   {"broken2.json"});
  EXPECT_EQ(read_text(out), before) << "a failed prepare damaged the existing output file";
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(CliErrors, PrepareUnknownTokenizer) {
  const fs::path out = dir_ / "prep_tok.h5";
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "corpus.txt").string(), "--out", out.string(), "--tokenizer",
                           "gpt7"}),
                   {"gpt7", "byte"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(CliErrors, PrepareNoOut) {
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "corpus.txt").string()}), {"--out"}, Usage::allowed);
}

TEST_F(CliErrors, PrepareUnknownOption) {
  expect_bad_input(ptrain({"prepare", "--input", (dir_ / "corpus.txt").string(), "--out", (dir_ / "x.h5").string(),
                           "--vocab", "9"}),
                   {"vocab"}, Usage::allowed);
  EXPECT_FALSE(fs::exists(dir_ / "x.h5"));
}

// ---------------------------------------------------------------- export ----

TEST_F(CliErrors, ExportNonexistentRun) {
  const fs::path out = dir_ / "export_none.h5";
  expect_bad_input(ptrain({"export", "--run", (dir_ / "no_such_run").string(), "--out", out.string()}),
                   {"no_such_run"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

TEST_F(CliErrors, ExportNonexistentStep) {
  const fs::path out = dir_ / "export_step.h5";
  expect_bad_input(ptrain({"export", "--run", control_run_.string(), "--step", "7", "--out", out.string()}),
                   {"step 7"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliErrors, ExportBadDtype) {
  const fs::path out = dir_ / "export_dtype.h5";
  expect_bad_input(ptrain({"export", "--run", control_run_.string(), "--out", out.string(), "--dtype", "fp8"}),
                   {"--dtype", "fp8", "bf16"});
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(CliErrors, ExportMissingOut) {
  expect_bad_input(ptrain({"export", "--run", control_run_.string()}), {"--out"}, Usage::allowed);
}

TEST_F(CliErrors, ExportCorruptMeta) {
  const fs::path d = copy_control("export_corrupt");
  write_text(d / "step_00000002" / "meta.json", "not json at all");
  const fs::path out = dir_ / "export_corrupt.h5";
  expect_bad_input(ptrain({"export", "--run", d.string(), "--out", out.string()}), {"meta.json"});
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out.string() + ".tmp"));
}

}  // namespace
