// data/sampler.h — the deterministic, resumable batch sampler (DESIGN.md "Data", exact).
//
// With N tokens and T = seq_len, window w is tokens[w*T : w*T+T+1] (inputs the first T,
// targets the last T) and the file has W = floor((N-1)/T) windows. A sampler covers the
// window range [first_window, first_window + W') (default: all W; a held-out validation
// split uses the last windows). Window order over positions p = 0, 1, 2, ...:
//   shuffle off: first_window + (p mod W')
//   shuffle on:  first_window + perm_e[p mod W'], e = p / W', perm_e =
//                random_permutation(make_key(seed, "data.epoch", e), W') (Fisher–Yates, Philox)
// Step s (0-based) uses positions s*G + j, j = 0..G-1 (G = global batch in sequences);
// DP rank r takes j in [r*G/dp, (r+1)*G/dp), in order. So the order does not depend on
// the DP split, and a run resumed at step s reproduces the uninterrupted one.
// Not thread-safe (the current epoch's permutation is cached).
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "data/token_file.h"

namespace ptrain::data {

struct SamplerOptions {
  int64_t seq_len = 0;       ///< T
  int64_t global_batch = 0;  ///< G, sequences per step over all DP ranks
  int64_t dp_size = 1, dp_rank = 0;
  bool shuffle = true;
  uint64_t seed = 0;
  int64_t first_window = 0;  ///< first window of the range this sampler covers
  int64_t num_windows = -1;  ///< W' (-1: all windows from first_window to the end)
};

/// W = floor((N-1)/T): windows of T+1 tokens (overlapping by one) in N tokens.
int64_t windows_in(int64_t num_tokens, int64_t seq_len);

class Sampler {
 public:
  /// Validates the options (UserError): T >= 1, G >= 1, G % dp == 0, 0 <= rank < dp, the
  /// window range inside the file and W' >= 1.
  Sampler(std::shared_ptr<const TokenDataset> data, const SamplerOptions& opt);

  const SamplerOptions& options() const { return opt_; }
  /// W': windows in this sampler's range.
  int64_t num_windows() const { return num_windows_; }
  /// Sequences this rank gets per step: G / dp.
  int64_t local_batch() const { return opt_.global_batch / opt_.dp_size; }
  /// Window (index into the whole file) at order position `position` >= 0.
  int64_t window_at(int64_t position) const;
  /// The windows this rank takes at step `step`, in order ([G/dp]).
  std::vector<int64_t> windows(int64_t step) const;
  /// Fills this rank's batch of step `step`: inputs and targets [G/dp, T], row i from
  /// windows(step)[i]. Throws UserError for a token id outside [0, model_vocab).
  void batch(int64_t step, int32_t* inputs, int32_t* targets, int64_t model_vocab) const;

  /// The position after `step` completed steps, for the checkpoint's meta.json:
  /// {step, position = step*G, epoch, window_in_epoch, num_windows, first_window,
  ///  num_tokens, seq_len, global_batch, shuffle, seed}.
  nlohmann::json position(int64_t step) const;
  /// Checks a saved position (from position()) against this sampler for a resume at
  /// `step`: throws UserError naming every field that differs (a different data file,
  /// seq_len, global batch, seed, shuffling or split would not continue the same order).
  void check_position(const nlohmann::json& saved, int64_t step) const;

 private:
  std::shared_ptr<const TokenDataset> data_;
  SamplerOptions opt_;
  int64_t num_windows_ = 0;
  mutable int64_t cached_epoch_ = -1;
  mutable std::vector<int64_t> perm_;
  mutable std::vector<int32_t> buf_;
};

}  // namespace ptrain::data
