// tests/parallel/numeric_stage.h — a Stage with exact arithmetic, to test schedule executors.
//
// Global stage g maps x (width w(g) = 2 + g % 2) to y (width w(g+1)):
//   y_j = a_g * x_{j mod w(g)} + m,   a_g = 1 + g % 3 (its one "weight"),   m = micro index,
// stage 0's input is x0_i = i + 1 + m, the loss of a micro-batch is sum(y) of the last stage.
// Backward: dx_i = a_g * sum_{j mod w(g) = i} dy_j, da_g = sum_j x_{j mod w(g)} dy_j. All
// values are small integers, exact in f32, so every check is an equality. Every input,
// gradient, loss, input gradient of stage 0 and weight gradient is compared with a
// reference computed in the constructor; every call is counted.
#pragma once
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <map>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "parallel/schedule.h"
#include "parallel/stage.h"

namespace ptrain::parallel::testing {

class NumericStage : public Stage {
 public:
  NumericStage(const ScheduleSpec& s, int pp_rank)
      : s_(s), rank_(pp_rank), S_(s.pp * s.virtual_stages), M_(s.micro_batches), split_(splits_backward(s.kind)) {
    act_.assign(S_ + 1, std::vector<std::vector<double>>(M_));
    grad_.assign(S_ + 1, std::vector<std::vector<double>>(M_));
    ref_da_.assign(S_, 0.0);
    da_.assign(S_, 0.0);
    ref_loss_.assign(M_, 0.0);
    for (int m = 0; m < M_; ++m) {
      for (int i = 0; i < width(0); ++i) act_[0][m].push_back(i + 1 + m);
      for (int g = 0; g < S_; ++g) act_[g + 1][m] = forward_ref(g, m, act_[g][m]);
      for (double y : act_[S_][m]) ref_loss_[m] += y;
      grad_[S_][m].assign(width(S_), 1.0);
      for (int g = S_ - 1; g >= 0; --g) {
        grad_[g][m].assign(width(g), 0.0);
        for (int j = 0; j < width(g + 1); ++j) {
          grad_[g][m][j % width(g)] += a(g) * grad_[g + 1][m][j];
          ref_da_[g] += act_[g][m][j % width(g)] * grad_[g + 1][m][j];
        }
      }
    }
  }

  static int width(int g) { return 2 + g % 2; }
  static double a(int g) { return 1 + g % 3; }
  int global(int chunk) const { return chunk * s_.pp + rank_; }

  Shape input_shape(int chunk) const override { return {width(global(chunk))}; }
  DType activation_dtype() const override { return DType::f32; }

  Tensor forward(int chunk, int micro, const Tensor& input) override {
    const int g = global(chunk);
    ++calls_[{'F', chunk, micro}];
    std::vector<double> x;
    if (g == 0) {
      if (input.defined()) fail("F", chunk, micro, "stage 0 got an input");
      x = act_[0][micro];
    } else {
      x = values(input);
      if (x != act_[g][micro]) fail("F", chunk, micro, "wrong input " + str(x) + " expected " + str(act_[g][micro]));
    }
    saved_x_[{chunk, micro}] = x;
    const std::vector<double> y = forward_ref(g, micro, x);
    if (g == S_ - 1) {
      double l = 0;
      for (double v : y) l += v;
      loss_[micro] = l;
      return Tensor();
    }
    return tensor(y);
  }

  Tensor backward(int chunk, int micro, const Tensor& grad_output, bool split) override {
    const int g = global(chunk);
    ++calls_[{'B', chunk, micro}];
    if (split != split_) fail("B", chunk, micro, "wrong split flag");
    std::vector<double> dy;
    if (g == S_ - 1) {
      if (grad_output.defined()) fail("B", chunk, micro, "last stage got a gradient");
      dy.assign(width(S_), 1.0);
    } else {
      dy = values(grad_output);
      if (dy != grad_[g + 1][micro]) fail("B", chunk, micro, "wrong grad " + str(dy) + " expected " + str(grad_[g + 1][micro]));
    }
    auto it = saved_x_.find({chunk, micro});
    if (it == saved_x_.end()) {
      fail("B", chunk, micro, "backward before forward");
      return Tensor();
    }
    std::vector<double> dx(width(g), 0.0);
    for (int j = 0; j < width(g + 1); ++j) dx[j % width(g)] += a(g) * dy[j];
    if (split) {
      saved_dy_[{chunk, micro}] = dy;
    } else {
      weight_grad(g, it->second, dy);
      saved_x_.erase(it);
    }
    if (g == 0) {
      if (dx != grad_[0][micro]) fail("B", chunk, micro, "wrong input gradient of stage 0");
      dx0_[micro] = dx;
      return Tensor();
    }
    return tensor(dx);
  }

  void backward_weights(int chunk, int micro) override {
    const int g = global(chunk);
    ++calls_[{'W', chunk, micro}];
    auto x = saved_x_.find({chunk, micro});
    auto dy = saved_dy_.find({chunk, micro});
    if (!split_ || x == saved_x_.end() || dy == saved_dy_.end()) {
      fail("W", chunk, micro, "W without a split B before it");
      return;
    }
    weight_grad(g, x->second, dy->second);
    saved_x_.erase(x);
    saved_dy_.erase(dy);
  }

  /// Everything that went wrong, empty when the step was exact and complete.
  std::vector<std::string> verify() const {
    std::vector<std::string> errors = errors_;
    for (int c = 0; c < s_.virtual_stages; ++c) {
      const int g = global(c);
      for (int m = 0; m < M_; ++m)
        for (char k : {'F', 'B', 'W'}) {
          auto it = calls_.find({k, c, m});
          const int n = it == calls_.end() ? 0 : it->second, want = (k == 'W' && !split_) ? 0 : 1;
          if (n != want) errors.push_back(fmt::format("{} chunk {} micro {} called {} times, expected {}", k, c, m, n, want));
        }
      if (da_[g] != ref_da_[g]) errors.push_back(fmt::format("stage {}: da = {}, expected {}", g, da_[g], ref_da_[g]));
      if (g == S_ - 1)
        for (int m = 0; m < M_; ++m)
          if (!loss_.count(m) || loss_.at(m) != ref_loss_[m])
            errors.push_back(fmt::format("loss of micro {} wrong or missing (expected {})", m, ref_loss_[m]));
      if (g == 0)
        for (int m = 0; m < M_; ++m)
          if (!dx0_.count(m)) errors.push_back(fmt::format("input gradient of micro {} missing", m));
    }
    if (!saved_x_.empty() || !saved_dy_.empty()) errors.push_back("saved tensors left after the step");
    return errors;
  }

 private:
  std::vector<double> forward_ref(int g, int m, const std::vector<double>& x) const {
    std::vector<double> y(width(g + 1));
    for (int j = 0; j < width(g + 1); ++j) y[j] = a(g) * x[j % width(g)] + m;
    return y;
  }
  void weight_grad(int g, const std::vector<double>& x, const std::vector<double>& dy) {
    for (int j = 0; j < width(g + 1); ++j) da_[g] += x[j % width(g)] * dy[j];
  }
  static std::vector<double> values(const Tensor& t) { return t.defined() ? t.to_double_vector() : std::vector<double>{}; }
  static Tensor tensor(const std::vector<double>& v) {
    return Tensor::from_vector(std::vector<float>(v.begin(), v.end()), {static_cast<int64_t>(v.size())});
  }
  static std::string str(const std::vector<double>& v) { return fmt::format("[{}]", fmt::join(v, ", ")); }
  void fail(const char* what, int c, int m, const std::string& msg) {
    errors_.push_back(fmt::format("{} chunk {} micro {}: {}", what, c, m, msg));
  }

  ScheduleSpec s_;
  int rank_, S_, M_;
  bool split_;
  std::vector<std::vector<std::vector<double>>> act_, grad_;  // [g][m]: input of g / grad of input of g
  std::vector<double> ref_da_, da_, ref_loss_;
  std::map<std::tuple<char, int, int>, int> calls_;
  std::map<std::pair<int, int>, std::vector<double>> saved_x_, saved_dy_;
  std::map<int, double> loss_;
  std::map<int, std::vector<double>> dx0_;
  std::vector<std::string> errors_;
};

}  // namespace ptrain::parallel::testing
