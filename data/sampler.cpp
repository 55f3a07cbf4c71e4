// data/sampler.cpp — window order, batches and resumable positions (see sampler.h).
#include "data/sampler.h"

#include <algorithm>
#include <cstring>

#include "core/error.h"
#include "core/rng.h"

namespace ptrain::data {

int64_t windows_in(int64_t num_tokens, int64_t seq_len) {
  PT_CHECK(seq_len >= 1, "seq_len must be >= 1, got {}", seq_len);
  return num_tokens >= 1 ? (num_tokens - 1) / seq_len : 0;
}

Sampler::Sampler(std::shared_ptr<const TokenDataset> data, const SamplerOptions& opt)
    : data_(std::move(data)), opt_(opt) {
  PT_CHECK(data_ != nullptr, "Sampler needs a token dataset");
  const int64_t T = opt_.seq_len, G = opt_.global_batch, N = data_->num_tokens();
  PT_USER_CHECK(T >= 1, "train.seq_len = {} must be >= 1", T);
  PT_USER_CHECK(G >= 1, "train.global_batch = {} must be >= 1", G);
  PT_USER_CHECK(opt_.dp_size >= 1 && opt_.dp_rank >= 0 && opt_.dp_rank < opt_.dp_size,
                "data-parallel rank {} is outside [0, dp = {})", opt_.dp_rank, opt_.dp_size);
  PT_USER_CHECK(G % opt_.dp_size == 0,
                "train.global_batch = {} is not divisible by the data-parallel size dp = {}. HINT: make the global "
                "batch a multiple of {}",
                G, opt_.dp_size, opt_.dp_size);
  const int64_t W = windows_in(N, T);
  PT_USER_CHECK(W >= 1,
                "data file '{}' has {} tokens: not enough for one window of seq_len+1 = {} tokens. HINT: lower "
                "train.seq_len or prepare more text",
                data_->path(), N, T + 1);
  PT_USER_CHECK(opt_.first_window >= 0 && opt_.first_window < W,
                "data split starts at window {}, but data file '{}' has {} windows of seq_len+1 = {} tokens",
                opt_.first_window, data_->path(), W, T + 1);
  num_windows_ = opt_.num_windows < 0 ? W - opt_.first_window : opt_.num_windows;
  PT_USER_CHECK(num_windows_ >= 1 && opt_.first_window + num_windows_ <= W,
                "data split [{}, {}) is not a non-empty range of the {} windows of data file '{}' ({} tokens, "
                "seq_len {}). HINT: use a smaller validation split or more data",
                opt_.first_window, opt_.first_window + num_windows_, W, data_->path(), N, T);
}

int64_t Sampler::window_at(int64_t position) const {
  PT_CHECK(position >= 0, "negative sampler position {}", position);
  const int64_t epoch = position / num_windows_, i = position % num_windows_;
  if (!opt_.shuffle) return opt_.first_window + i;
  if (epoch != cached_epoch_) {
    perm_ = random_permutation(make_key(opt_.seed, "data.epoch", static_cast<uint64_t>(epoch)), num_windows_);
    cached_epoch_ = epoch;
  }
  return opt_.first_window + perm_[static_cast<size_t>(i)];
}

std::vector<int64_t> Sampler::windows(int64_t step) const {
  PT_CHECK(step >= 0, "negative step {}", step);
  const int64_t B = local_batch(), j0 = opt_.dp_rank * B;
  std::vector<int64_t> w(static_cast<size_t>(B));
  for (int64_t j = 0; j < B; ++j) w[static_cast<size_t>(j)] = window_at(step * opt_.global_batch + j0 + j);
  return w;
}

void Sampler::batch(int64_t step, int32_t* inputs, int32_t* targets, int64_t model_vocab) const {
  const int64_t T = opt_.seq_len;
  const auto ws = windows(step);
  buf_.resize(static_cast<size_t>(T + 1));
  for (size_t b = 0; b < ws.size(); ++b) {
    data_->read(ws[b] * T, T + 1, buf_.data(), model_vocab);  // [T+1]
    std::memcpy(inputs + static_cast<int64_t>(b) * T, buf_.data(), static_cast<size_t>(T) * sizeof(int32_t));
    std::memcpy(targets + static_cast<int64_t>(b) * T, buf_.data() + 1, static_cast<size_t>(T) * sizeof(int32_t));
  }
}

nlohmann::json Sampler::position(int64_t step) const {
  PT_CHECK(step >= 0, "negative step {}", step);
  const int64_t p = step * opt_.global_batch;
  return nlohmann::json{{"step", step},
                        {"position", p},
                        {"epoch", p / num_windows_},
                        {"window_in_epoch", p % num_windows_},
                        {"num_windows", num_windows_},
                        {"first_window", opt_.first_window},
                        {"num_tokens", data_->num_tokens()},
                        {"seq_len", opt_.seq_len},
                        {"global_batch", opt_.global_batch},
                        {"shuffle", opt_.shuffle},
                        {"seed", opt_.seed}};
}

void Sampler::check_position(const nlohmann::json& saved, int64_t step) const {
  PT_USER_CHECK(saved.is_object(), "checkpoint sampler position is not a JSON object: {}", saved.dump());
  const nlohmann::json now = position(step);
  std::string diffs;
  for (const auto& [key, value] : now.items()) {
    if (!saved.contains(key)) {
      diffs += fmt::format("; '{}' is missing", key);
    } else if (saved[key] != value) {
      diffs += fmt::format("; {} was {}, now {}", key, saved[key].dump(), value.dump());
    }
  }
  PT_USER_CHECK(diffs.empty(),
                "the checkpoint's data sampler position does not match this run at step {}{} (data file '{}'). "
                "HINT: resume with the same data file, train.seq_len, train.global_batch, train.seed and "
                "data.shuffle, or start a new run in another checkpoint.dir",
                step, diffs, data_->path());
}

}  // namespace ptrain::data
