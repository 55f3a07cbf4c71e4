// optim/loss_scaler.cpp — LossScaler (see loss_scaler.h).
#include "optim/loss_scaler.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ptrain::optim {

LossScaler::LossScaler(LossScalerOptions options) : opt_(options), scale_(options.initial_scale) {
  PT_CHECK(opt_.growth_factor > 1, "loss scaler growth_factor {} must be > 1", opt_.growth_factor);
  PT_CHECK(opt_.backoff_factor > 0 && opt_.backoff_factor < 1, "loss scaler backoff_factor {} must be in (0, 1)",
           opt_.backoff_factor);
  PT_CHECK(opt_.growth_interval >= 1, "loss scaler growth_interval {} must be >= 1", opt_.growth_interval);
  PT_CHECK(opt_.min_scale > 0 && std::isfinite(opt_.initial_scale) && opt_.initial_scale >= opt_.min_scale,
           "loss scaler initial_scale {} must be finite and >= min_scale {} > 0", opt_.initial_scale,
           opt_.min_scale);
}

bool LossScaler::update(bool found_overflow) {
  if (found_overflow) {
    scale_ = std::max(opt_.min_scale, scale_ * opt_.backoff_factor);
    good_steps_ = 0;
    ++skipped_steps_;
    return false;
  }
  if (++good_steps_ >= opt_.growth_interval) {
    scale_ *= opt_.growth_factor;
    good_steps_ = 0;
  }
  return true;
}

nlohmann::json LossScaler::to_json() const {
  return {{"scale", scale_}, {"good_steps", good_steps_}, {"skipped_steps", skipped_steps_}};
}

void LossScaler::from_json(const nlohmann::json& j) {
  PT_USER_CHECK(j.is_object(), "loss_scaler in meta.json must be an object, got {}\n"
                "HINT: the checkpoint's meta.json is damaged; resume from an older step", j.dump());
  for (const char* key : {"scale", "good_steps", "skipped_steps"})
    PT_USER_CHECK(j.contains(key) && j.at(key).is_number(), "loss_scaler.{} in meta.json is missing or not a number\n"
                  "HINT: the checkpoint's meta.json is damaged; resume from an older step", key);
  PT_USER_CHECK(j.at("good_steps").is_number_integer() && j.at("skipped_steps").is_number_integer(),
                "loss_scaler.good_steps and loss_scaler.skipped_steps in meta.json must be integers");
  const double s = j.at("scale").get<double>();
  const int64_t good = j.at("good_steps").get<int64_t>();
  const int64_t skipped = j.at("skipped_steps").get<int64_t>();
  PT_USER_CHECK(std::isfinite(s) && s >= opt_.min_scale, "loss_scaler.scale = {} in meta.json must be finite and >= {}",
                s, opt_.min_scale);
  PT_USER_CHECK(good >= 0 && skipped >= 0, "loss_scaler counters in meta.json must be >= 0 (good_steps {}, skipped_steps {})",
                good, skipped);
  scale_ = s;
  good_steps_ = good;
  skipped_steps_ = skipped;
}

}  // namespace ptrain::optim
