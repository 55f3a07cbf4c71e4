// tests/core/gradcheck.h — finite-difference gradient checks in double.
//
// Usage: put every differentiable input of a kernel in a std::vector<double>,
// define loss() = sum(r ⊙ output) for a fixed random r (so dloss/doutput = r),
// get the analytic gradient from the backward kernel, then call
// expect_gradients_match(loss, x, analytic). Central differences with step h;
// each element must satisfy |fd - an| <= atol + rtol * max(|fd|, |an|).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/rng.h"

namespace ptrain::testing {

/// Deterministic values in [-scale, scale) for tests.
inline std::vector<double> random_vector(size_t n, uint64_t seed, double scale = 1.0) {
  std::vector<double> v(n);
  const auto key = make_key(seed, "test");
  for (size_t i = 0; i < n; ++i)
    v[i] = scale * (2.0 * (static_cast<double>(random_u64(key, i) >> 11) * 0x1.0p-53) - 1.0);
  return v;
}

/// Central-difference check of `analytic` = d loss / d x. Returns the number of mismatches
/// (and reports the first few through gtest).
inline int expect_gradients_match(const std::function<double()>& loss, std::vector<double>& x,
                                  const std::vector<double>& analytic, const std::string& what, double h = 1e-6,
                                  double rtol = 1e-6, double atol = 1e-8) {
  EXPECT_EQ(x.size(), analytic.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + h;
    const double lp = loss();
    x[i] = saved - h;
    const double lm = loss();
    x[i] = saved;
    const double fd = (lp - lm) / (2 * h);
    const double an = analytic[i];
    const double tol = atol + rtol * std::max(std::fabs(fd), std::fabs(an));
    if (!(std::fabs(fd - an) <= tol)) {
      if (bad < 5) ADD_FAILURE() << what << "[" << i << "]: finite difference " << fd << " vs analytic " << an;
      ++bad;
    }
  }
  return bad;
}

/// sum(r ⊙ y) in double.
inline double dot(const std::vector<double>& r, const std::vector<double>& y) {
  double s = 0;
  for (size_t i = 0; i < r.size(); ++i) s += r[i] * y[i];
  return s;
}

}  // namespace ptrain::testing
