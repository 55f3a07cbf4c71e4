// optim/lr_schedule.h — the learning rate as a function of the update index.
//
// Contract (DESIGN.md, "Optimizer"): the learning rate of update s (0-based) of `steps` is
//   s < warmup:            lr * (s+1) / warmup                       (linear warmup)
//   cosine, s >= warmup:   min_lr + (lr-min_lr) * (1 + cos(pi*(s-warmup)/(steps-warmup))) / 2
//   constant, s >= warmup: lr
// all in double. A skipped step (fp16 overflow) does not advance s.
//
// Edge cases (at() is total and never divides by zero):
//  * warmup == 0: no warmup; update 0 already uses the decay branch (cosine starts at lr).
//  * cosine and s >= steps (past the last update): the end value min_lr. This also covers
//    steps == warmup, where the cosine segment is empty: every real update (s < steps) is a
//    warmup update ending at lr, and the decay formula would divide by zero.
//  * warmup > steps: the run ends inside the warmup (allowed; lr is never reached).
//  * constant and s >= steps: lr (the constant's end value; warmup still applies if s < warmup).
#pragma once
#include <cstdint>
#include <string>

namespace ptrain::optim {

struct LrSchedule {
  double lr = 3.0e-4;      ///< peak learning rate (optim.lr)
  double min_lr = 3.0e-5;  ///< end of the cosine (optim.min_lr); unused by constant
  int64_t warmup = 0;      ///< warmup updates (optim.warmup_steps)
  int64_t steps = 1;       ///< total updates of the run (train.steps)
  enum Kind { cosine, constant } kind = cosine;  ///< optim.schedule

  /// Learning rate of update s (0-based, s >= 0); formulas in the file comment.
  double at(int64_t s) const;

  /// Throws ptrain::UserError (naming the config key) for lr < 0, min_lr < 0, min_lr > lr
  /// (cosine), warmup < 0, steps < 1, or non-finite values.
  void validate() const;

  /// "cosine" | "constant"; anything else throws ptrain::UserError listing the accepted values.
  static Kind parse(const std::string& name);
  static const char* name(Kind k);
};

}  // namespace ptrain::optim
