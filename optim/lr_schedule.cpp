// optim/lr_schedule.cpp — LrSchedule::at and its parsing/validation (see lr_schedule.h).
#include "optim/lr_schedule.h"

#include <cmath>
#include <numbers>

#include "core/error.h"

namespace ptrain::optim {

double LrSchedule::at(int64_t s) const {
  PT_CHECK(s >= 0, "learning rate asked for update {} (updates are 0-based)", s);
  if (kind == cosine && s >= steps) return min_lr;  // past the end (also steps <= warmup)
  if (s < warmup) return lr * static_cast<double>(s + 1) / static_cast<double>(warmup);
  if (kind == constant) return lr;
  // here warmup <= s < steps, so steps - warmup >= 1
  const double progress = static_cast<double>(s - warmup) / static_cast<double>(steps - warmup);
  return min_lr + (lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress)) / 2.0;
}

void LrSchedule::validate() const {
  PT_USER_CHECK(std::isfinite(lr) && lr >= 0, "optim.lr = {} must be a finite number >= 0", lr);
  PT_USER_CHECK(std::isfinite(min_lr) && min_lr >= 0, "optim.min_lr = {} must be a finite number >= 0", min_lr);
  PT_USER_CHECK(kind != cosine || min_lr <= lr,
                "optim.min_lr = {} is larger than optim.lr = {} (schedule cosine decays from lr to min_lr)\n"
                "HINT: set optim.min_lr <= optim.lr, or optim.schedule: constant",
                min_lr, lr);
  PT_USER_CHECK(warmup >= 0, "optim.warmup_steps = {} must be >= 0", warmup);
  PT_USER_CHECK(steps >= 1, "train.steps = {} must be >= 1", steps);
}

LrSchedule::Kind LrSchedule::parse(const std::string& s) {
  if (s == "cosine") return cosine;
  if (s == "constant") return constant;
  throw UserError("optim.schedule: unknown schedule '" + s + "'; accepted values: cosine, constant");
}

const char* LrSchedule::name(Kind k) { return k == cosine ? "cosine" : "constant"; }

}  // namespace ptrain::optim
