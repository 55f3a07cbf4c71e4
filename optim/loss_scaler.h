// optim/loss_scaler.h — dynamic loss scaling for fp16 training (as torch.cuda.amp.GradScaler).
//
// The loss is multiplied by scale() before backward; the gradients are unscaled (by
// 1/scale()) before clipping. After each backward, update(found_overflow):
//  * overflow (an Inf/NaN gradient): scale = max(min_scale, scale*backoff_factor), the
//    clean-step counter restarts, skipped_steps += 1, and the step must be skipped (returns
//    false): the batch is used up, Adam's step count and the schedule do not advance;
//  * clean: good_steps += 1; after growth_interval consecutive clean steps
//    scale *= growth_factor and good_steps restarts at 0; returns true.
// Invariant: min_scale <= scale(); the state (scale, good_steps, skipped_steps) goes into the
// checkpoint's meta.json (to_json/from_json) so a resumed run continues bit for bit.
#pragma once
#include <cstdint>

#include <nlohmann/json.hpp>

namespace ptrain::optim {

struct LossScalerOptions {
  double initial_scale = 65536.0;
  double growth_factor = 2.0;      ///< > 1
  double backoff_factor = 0.5;     ///< in (0, 1)
  int64_t growth_interval = 2000;  ///< consecutive clean steps before growing, >= 1
  double min_scale = 1.0;          ///< > 0
};

class LossScaler {
 public:
  /// PT_CHECKs the option ranges above and initial_scale >= min_scale.
  explicit LossScaler(LossScalerOptions options = {});

  /// The factor the loss is multiplied by before backward.
  double scale() const { return scale_; }
  /// Records the outcome of one backward (see file comment); true when the step is applied.
  bool update(bool found_overflow);

  /// Consecutive clean steps since the last growth or backoff (the growth tracker).
  int64_t good_steps() const { return good_steps_; }
  /// Steps skipped for overflow since the start of the run.
  int64_t skipped_steps() const { return skipped_steps_; }

  /// {"scale": double, "good_steps": int, "skipped_steps": int}
  nlohmann::json to_json() const;
  /// Restores what to_json wrote; throws ptrain::UserError naming the bad or missing key.
  void from_json(const nlohmann::json& j);

  const LossScalerOptions& options() const { return opt_; }

 private:
  LossScalerOptions opt_;
  double scale_;
  int64_t good_steps_ = 0;
  int64_t skipped_steps_ = 0;
};

}  // namespace ptrain::optim
