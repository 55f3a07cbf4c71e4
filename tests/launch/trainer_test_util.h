// tests/launch/trainer_test_util.h — helpers of the end-to-end trainer tests
// (tests/launch/test_trainer.cpp on the CPU, tests/cuda/test_device_training.cpp on the
// device): a fresh run folder, a small token file, single-process training, metrics rows.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/prepare.h"
#include "launch/config.h"
#include "launch/trainer.h"

namespace ptrain::test {

/// $PTRAIN_TEST_TMP (else /tmp)/<prefix><name>, emptied.
inline std::filesystem::path fresh_dir(const std::string& prefix, const std::string& name) {
  const char* env = std::getenv("PTRAIN_TEST_TMP");
  std::filesystem::path d = std::filesystem::path(env && *env ? env : "/tmp") / (prefix + name);
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

/// A small English-like corpus of `words` words with structure a tiny model can learn.
inline std::string corpus(int words) {
  const char* w[] = {"the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "to", "see", "big", "red", "ball"};
  std::mt19937 rng(5);
  std::string s;
  for (int i = 0; i < words; ++i) {
    s += w[rng() % 14];
    s += (i % 9 == 8) ? ".\n" : " ";
  }
  return s;
}

/// dir/tokens.h5 made by `ptrain prepare` (byte tokenizer) from corpus(words); returns its path.
inline std::string make_data(const std::filesystem::path& dir, int words) {
  const auto txt = dir / "corpus.txt";
  std::ofstream(txt) << corpus(words);
  data::PrepareOptions o;
  o.inputs = {txt.string()};
  o.out = (dir / "tokens.h5").string();
  data::prepare(o);
  return o.out;
}

/// A validated single-process config from YAML text and --set overrides.
inline launch::Config config(const std::string& yaml_text, const std::vector<std::string>& sets) {
  launch::Config cfg = launch::parse_config(yaml_text, sets);
  launch::validate(cfg, launch::ValidationContext{});
  return cfg;
}

/// Trains one process to the end (quiet); returns Trainer::run's status.
inline int train(const std::string& yaml_text, bool resume, const std::vector<std::string>& sets = {}) {
  launch::RunOptions opt;
  opt.resume = resume;
  opt.quiet = true;
  opt.local_ranks = 1;
  launch::Trainer t(config(yaml_text, sets), opt);
  return t.run();
}

/// The rows of run/metrics.jsonl.
inline std::vector<nlohmann::json> metrics(const std::filesystem::path& run) {
  std::vector<nlohmann::json> rows;
  std::ifstream in(run / "metrics.jsonl");
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

}  // namespace ptrain::test
