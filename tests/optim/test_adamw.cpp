// tests/optim/test_adamw.cpp — AdamW: step 1 by hand, several steps against a double-precision
// implementation of the formula, weight decay on 2-D parameters only, lazy state, resume
// through set_state, thread-count independence, and (when /usr/bin/python3 has torch) five
// steps against torch.optim.AdamW(foreach=False).
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include <fmt/format.h>

#include "optim/adamw.h"
#include "optim/lr_schedule.h"

using ptrain::DType;
using ptrain::Shape;
using ptrain::Tensor;
using ptrain::optim::AdamW;
using ptrain::optim::AdamWOptions;
using ptrain::optim::ParamRef;

namespace {

// Uniform in [-1, 1) from mt19937's portable bit stream.
float uniform(std::mt19937& gen) { return static_cast<float>(gen() >> 8) * (2.0f / 16777216.0f) - 1.0f; }

// Values of magnitude in [0.1, 1) with random signs (so a relative tolerance is meaningful).
std::vector<float> init_values(int64_t n, std::mt19937& gen) {
  std::vector<float> v(n);
  for (float& x : v) {
    const float u = uniform(gen);
    x = (u < 0 ? -1.0f : 1.0f) * (0.1f + 0.9f * std::abs(uniform(gen)));
  }
  return v;
}

// Gradients: mostly O(0.1..1), some tiny (eps matters), some exactly zero.
std::vector<float> grad_values(int64_t n, std::mt19937& gen) {
  std::vector<float> g(n);
  for (int64_t i = 0; i < n; ++i) {
    const float u = uniform(gen);
    g[i] = (i % 7 == 3) ? u * 1e-6f : (i % 11 == 5) ? 0.0f : u;
  }
  return g;
}

std::vector<ParamRef> make_params(const std::vector<Shape>& shapes, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<ParamRef> ps;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const int64_t n = ptrain::shape_numel(shapes[i]);
    ps.push_back(ParamRef{fmt::format("p{}", i), Tensor::from_vector(init_values(n, gen), shapes[i]),
                          Tensor::zeros(shapes[i])});
  }
  return ps;
}

void expect_close(const std::vector<double>& got, const std::vector<double>& want, double rel, double abs_tol,
                  const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < got.size() && bad < 5; ++i)
    if (!(std::abs(got[i] - want[i]) <= rel * std::abs(want[i]) + abs_tol)) {
      ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i];
      ++bad;
    }
}

// The formula of DESIGN.md in double: the reference the float implementation must follow.
struct RefParam {
  std::vector<double> p, m, v;
  bool decay;
};
void ref_step(RefParam& r, const std::vector<float>& g, double lr, int64_t t, const AdamWOptions& o) {
  for (size_t i = 0; i < r.p.size(); ++i) {
    if (r.decay) r.p[i] -= lr * o.weight_decay * r.p[i];
    r.m[i] = o.beta1 * r.m[i] + (1 - o.beta1) * g[i];
    r.v[i] = o.beta2 * r.v[i] + (1 - o.beta2) * double(g[i]) * g[i];
    const double mhat = r.m[i] / (1 - std::pow(o.beta1, t));
    const double vhat = r.v[i] / (1 - std::pow(o.beta2, t));
    r.p[i] -= lr * mhat / (std::sqrt(vhat) + o.eps);
  }
}

std::string tmp_dir(const std::string& name) {
  const char* base = std::getenv("PTRAIN_TEST_TMP");
  std::filesystem::path d = std::filesystem::path(base && *base ? base : "/tmp") / name;
  std::filesystem::create_directories(d);
  return d.string();
}

}  // namespace

TEST(AdamW, FirstStepByHand) {
  // step 1: mhat = g, vhat = g^2, so p -= lr * g / (|g| + eps)
  std::vector<ParamRef> ps{ParamRef{"b", Tensor::from_vector({1.0f, -2.0f, 0.5f, 3.0f}, {4}),
                                    Tensor::from_vector({0.5f, -0.25f, 0.0f, 1e-3f}, {4})}};
  AdamW opt(AdamWOptions{}, ps);
  opt.step(0.01);
  EXPECT_EQ(opt.step_count(), 1);
  const std::vector<double> want{1.0 - 0.01, -2.0 + 0.01, 0.5, 3.0 - 0.01 * 1e-3 / (1e-3 + 1e-8)};
  expect_close(ps[0].param.to_double_vector(), want, 1e-6, 0, "param");
  // moments after one step: m = (1-beta1) g, v = (1-beta2) g^2
  const std::vector<float> m = opt.exp_avg(0).to_float_vector(), v = opt.exp_avg_sq(0).to_float_vector();
  const float g[4] = {0.5f, -0.25f, 0.0f, 1e-3f};
  for (int i = 0; i < 4; ++i) {
    EXPECT_FLOAT_EQ(m[i], 0.1f * g[i]);
    EXPECT_FLOAT_EQ(v[i], 0.05f * g[i] * g[i]);
  }
}

TEST(AdamW, MatchesDoubleFormulaOverSteps) {
  const std::vector<Shape> shapes{{16, 24}, {24}, {3, 4, 5}, {10, 3}};
  auto ps = make_params(shapes, 42);
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  std::vector<RefParam> ref;
  for (const ParamRef& p : ps) {
    const auto init = p.param.to_double_vector();
    ref.push_back(RefParam{init, std::vector<double>(init.size()), std::vector<double>(init.size()),
                           p.param.ndim() == 2});
  }
  AdamW opt(o, ps);
  const ptrain::optim::LrSchedule sched{1e-2, 1e-3, 3, 10, ptrain::optim::LrSchedule::cosine};
  std::mt19937 gen(7);
  for (int64_t s = 0; s < 10; ++s) {
    const double lr = sched.at(s);
    for (size_t i = 0; i < ps.size(); ++i) {
      const auto g = grad_values(ps[i].grad.numel(), gen);
      ps[i].grad.copy_from(Tensor::from_vector(g, ps[i].grad.shape()));
      ref_step(ref[i], g, lr, s + 1, o);
    }
    opt.step(lr);
  }
  EXPECT_EQ(opt.step_count(), 10);
  for (size_t i = 0; i < ps.size(); ++i) {
    expect_close(ps[i].param.to_double_vector(), ref[i].p, 1e-6, 1e-9, ps[i].name);
    expect_close(opt.exp_avg_sq(i).to_double_vector(), ref[i].v, 1e-5, 1e-20, ps[i].name + ".exp_avg_sq");
  }
}

TEST(AdamW, WeightDecayOnMatricesOnly) {
  std::vector<ParamRef> ps{
      ParamRef{"w", Tensor::full({3, 4}, 1.0), Tensor::zeros({3, 4})},
      ParamRef{"b", Tensor::full({4}, 1.0), Tensor::zeros({4})},
      ParamRef{"k", Tensor::full({2, 2, 2}, 1.0), Tensor::zeros({2, 2, 2})},
  };
  AdamW opt(AdamWOptions{0.9, 0.95, 1e-8, 0.1}, ps);
  EXPECT_TRUE(opt.decays(0));
  EXPECT_FALSE(opt.decays(1));
  EXPECT_FALSE(opt.decays(2));
  for (int s = 0; s < 3; ++s) opt.step(0.1);  // zero gradients: only the decay moves anything
  const float f = static_cast<float>(1.0 - 0.1 * 0.1);
  for (float x : ps[0].param.to_float_vector()) EXPECT_EQ(x, ((1.0f * f) * f) * f);
  for (float x : ps[1].param.to_float_vector()) EXPECT_EQ(x, 1.0f);
  for (float x : ps[2].param.to_float_vector()) EXPECT_EQ(x, 1.0f);
  // no decay at all with weight_decay = 0
  std::vector<ParamRef> q{ParamRef{"w", Tensor::full({3, 4}, 1.0), Tensor::zeros({3, 4})}};
  AdamW opt0(AdamWOptions{0.9, 0.95, 1e-8, 0.0}, q);
  opt0.step(0.1);
  for (float x : q[0].param.to_float_vector()) EXPECT_EQ(x, 1.0f);
}

TEST(AdamW, LazyStateAndAccessors) {
  auto ps = make_params({{5, 6}, {6}}, 1);
  AdamW opt(AdamWOptions{}, ps);
  EXPECT_EQ(opt.step_count(), 0);
  EXPECT_EQ(opt.exp_avg(0).shape(), (Shape{5, 6}));
  EXPECT_EQ(opt.exp_avg_sq(1).dtype(), DType::f32);
  for (double x : opt.exp_avg(0).to_double_vector()) EXPECT_EQ(x, 0.0);
  EXPECT_EQ(opt.params().size(), 2u);
  EXPECT_TRUE(opt.params()[0].param.same(ps[0].param));
  EXPECT_THROW(opt.set_state(0, Tensor::zeros({6, 5}), Tensor::zeros({5, 6})), ptrain::Error);
  EXPECT_THROW(AdamW(AdamWOptions{1.0, 0.95, 1e-8, 0.1}, ps), ptrain::UserError);
  EXPECT_THROW(AdamW(AdamWOptions{}, {ps[0], ps[0]}), ptrain::Error);  // a tensor listed twice
}

TEST(AdamW, ResumeThroughSetStateIsBitIdentical) {
  const std::vector<Shape> shapes{{8, 9}, {9}};
  auto a = make_params(shapes, 3);
  auto b = make_params(shapes, 3);
  AdamW oa(AdamWOptions{}, a);
  AdamW ob(AdamWOptions{}, b);
  std::mt19937 gen(5);
  std::vector<std::vector<std::vector<float>>> grads(10);
  for (auto& step : grads)
    for (const Shape& s : shapes) step.push_back(grad_values(ptrain::shape_numel(s), gen));
  auto run = [&](AdamW& opt, std::vector<ParamRef>& ps, int from, int to) {
    for (int s = from; s < to; ++s) {
      for (size_t i = 0; i < ps.size(); ++i) ps[i].grad.copy_from(Tensor::from_vector(grads[s][i], ps[i].grad.shape()));
      opt.step(1e-3 * (s + 1));
    }
  };
  run(oa, a, 0, 10);
  run(ob, b, 0, 5);
  // "checkpoint" b, load into a fresh optimizer over fresh tensors, continue
  std::vector<ParamRef> c;
  for (const ParamRef& p : b) c.push_back(ParamRef{p.name, p.param.clone(), Tensor::zeros(p.param.shape())});
  AdamW oc(AdamWOptions{}, c);
  for (size_t i = 0; i < c.size(); ++i) oc.set_state(i, ob.exp_avg(i).clone(), ob.exp_avg_sq(i).clone());
  oc.set_step_count(ob.step_count());
  run(oc, c, 5, 10);
  EXPECT_EQ(oc.step_count(), 10);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(c[i].param.to_float_vector(), a[i].param.to_float_vector());
    EXPECT_EQ(oc.exp_avg(i).to_float_vector(), oa.exp_avg(i).to_float_vector());
    EXPECT_EQ(oc.exp_avg_sq(i).to_float_vector(), oa.exp_avg_sq(i).to_float_vector());
  }
}

TEST(AdamW, Bf16GradsEqualTheirF32Values) {
  auto a = make_params({{4, 6}}, 9);
  auto b = make_params({{4, 6}}, 9);
  std::mt19937 gen(1);
  const auto g = grad_values(24, gen);
  b[0].grad = Tensor::from_vector(g, {4, 6}, DType::bf16);  // rounded to bf16 on store
  a[0].grad = b[0].grad.to(DType::f32);
  AdamW oa(AdamWOptions{}, a), ob(AdamWOptions{}, b);
  oa.step(1e-3);
  ob.step(1e-3);
  EXPECT_EQ(a[0].param.to_float_vector(), b[0].param.to_float_vector());
}

TEST(AdamW, BitIdenticalAcrossThreadCounts) {
  auto run = [](int threads) {
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    auto ps = make_params({{1000, 1000}, {1000}}, 17);
    std::mt19937 gen(2);
    for (ParamRef& p : ps) p.grad.copy_from(Tensor::from_vector(grad_values(p.grad.numel(), gen), p.grad.shape()));
    AdamW opt(AdamWOptions{}, ps);
    for (int s = 0; s < 3; ++s) opt.step(1e-3);
    omp_set_num_threads(saved);
    return ps[0].param.to_float_vector();
  };
  EXPECT_EQ(run(1), run(3));
}

// Five steps against torch.optim.AdamW(foreach=False), decay on 2-D parameters only (as two
// kinds of param groups). Skipped when /usr/bin/python3 or its torch is missing.
TEST(AdamW, MatchesTorch) {
  const char* python = "/usr/bin/python3";
  if (access(python, X_OK) != 0) GTEST_SKIP() << python << " not found";
  const std::string dir = tmp_dir("optim_test_adamw_torch");
  const std::string script = dir + "/adamw.py", in = dir + "/in.json", out = dir + "/out.json", log = dir + "/log.txt";
  std::ofstream(script) << R"PY(
import json, math, sys
try:
    import torch
except Exception:
    sys.exit(77)
torch.set_num_threads(1)
d = json.load(open(sys.argv[1]))
params = [torch.nn.Parameter(torch.tensor(p["init"], dtype=torch.float32).reshape(p["shape"])) for p in d["params"]]
groups = [{"params": [p], "weight_decay": d["weight_decay"] if p.dim() == 2 else 0.0} for p in params]
opt = torch.optim.AdamW(groups, lr=0.0, betas=(d["beta1"], d["beta2"]), eps=d["eps"], foreach=False)
for step in d["steps"]:
    for g in opt.param_groups:
        g["lr"] = step["lr"]
    for p, gr in zip(params, step["grads"]):
        p.grad = torch.tensor(gr, dtype=torch.float32).reshape(p.shape)
    opt.step()
st = [opt.state[p] for p in params]
out = {"params": [p.detach().reshape(-1).tolist() for p in params],
       "exp_avg": [s["exp_avg"].reshape(-1).tolist() for s in st],
       "exp_avg_sq": [s["exp_avg_sq"].reshape(-1).tolist() for s in st]}
# The op sequence of torch 2.x's _single_tensor_adam(decoupled_weight_decay=True), run op by op.
ps = [torch.tensor(p["init"], dtype=torch.float32).reshape(p["shape"]) for p in d["params"]]
ms = [torch.zeros_like(p) for p in ps]
vs = [torch.zeros_like(p) for p in ps]
b1, b2, eps = d["beta1"], d["beta2"], d["eps"]
for t, step in enumerate(d["steps"], start=1):
    lr = step["lr"]
    for p, m, v, gr in zip(ps, ms, vs, step["grads"]):
        g = torch.tensor(gr, dtype=torch.float32).reshape(p.shape)
        wd = d["weight_decay"] if p.dim() == 2 else 0.0
        if wd != 0:
            p.mul_(1 - lr * wd)
        m.lerp_(g, 1 - b1)
        v.mul_(b2).addcmul_(g, g, value=1 - b2)
        bias_correction1 = 1 - b1 ** float(t)
        bias_correction2 = 1 - b2 ** float(t)
        step_size = lr / bias_correction1
        denom = (v.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        p.addcdiv_(m, denom, value=-step_size)
out["seq_params"] = [p.reshape(-1).tolist() for p in ps]
out["seq_exp_avg"] = [m.reshape(-1).tolist() for m in ms]
out["seq_exp_avg_sq"] = [v.reshape(-1).tolist() for v in vs]
json.dump(out, open(sys.argv[2], "w"))
)PY";
  const std::vector<Shape> shapes{{6, 8}, {8}, {2, 3, 4}};
  auto ps = make_params(shapes, 99);
  const AdamWOptions o{0.9, 0.95, 1e-8, 0.1};
  nlohmann::json j{{"beta1", o.beta1}, {"beta2", o.beta2}, {"eps", o.eps}, {"weight_decay", o.weight_decay}};
  for (const ParamRef& p : ps) j["params"].push_back({{"shape", p.param.shape()}, {"init", p.param.to_float_vector()}});
  AdamW opt(o, ps);
  const ptrain::optim::LrSchedule sched{3e-2, 3e-3, 2, 5, ptrain::optim::LrSchedule::cosine};
  std::mt19937 gen(123);
  for (int64_t s = 0; s < 5; ++s) {
    nlohmann::json step{{"lr", sched.at(s)}};
    for (ParamRef& p : ps) {
      const auto g = grad_values(p.grad.numel(), gen);
      p.grad.copy_from(Tensor::from_vector(g, p.grad.shape()));
      step["grads"].push_back(g);
    }
    j["steps"].push_back(step);
    opt.step(sched.at(s));
  }
  std::ofstream(in) << j.dump();
  const std::string cmd = std::string(python) + " " + script + " " + in + " " + out + " > " + log + " 2>&1";
  const int rc = std::system(cmd.c_str());
  const int status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  if (status == 77) GTEST_SKIP() << python << " has no torch";
  std::stringstream log_text;
  log_text << std::ifstream(log).rdbuf();
  ASSERT_EQ(status, 0) << "python failed:\n" << log_text.str();
  nlohmann::json r;
  std::ifstream(out) >> r;
  for (size_t i = 0; i < ps.size(); ++i) {
    const auto p = ps[i].param.to_double_vector(), m = opt.exp_avg(i).to_double_vector(),
               v = opt.exp_avg_sq(i).to_double_vector();
    // torch.optim.AdamW itself: within 1e-6 relative. (torch < 2 updates exp_avg as
    // mul_(beta1).add_(grad, alpha) rather than lerp_, so m differs by ulps of |g| <= 1.)
    expect_close(p, r["params"][i].get<std::vector<double>>(), 1e-6, 1e-9, ps[i].name);
    expect_close(v, r["exp_avg_sq"][i].get<std::vector<double>>(), 1e-6, 1e-20, ps[i].name + ".exp_avg_sq");
    expect_close(m, r["exp_avg"][i].get<std::vector<double>>(), 1e-6, 1e-7, ps[i].name + ".exp_avg");
    // torch 2.x's op sequence run by torch's own kernels: with FMA (see optim/adamw.cpp) every
    // float operation is reproduced, so the trajectory is bit-identical.
#ifdef __FMA__
    const double tol = 0;
#else
    const double tol = 1e-6;
#endif
    expect_close(p, r["seq_params"][i].get<std::vector<double>>(), tol, 0, ps[i].name + " (op sequence)");
    expect_close(m, r["seq_exp_avg"][i].get<std::vector<double>>(), tol, tol * 1e-1, ps[i].name + ".exp_avg (op sequence)");
    expect_close(v, r["seq_exp_avg_sq"][i].get<std::vector<double>>(), tol, 0, ps[i].name + ".exp_avg_sq (op sequence)");
  }
}
