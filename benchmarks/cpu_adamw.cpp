// benchmarks/cpu_adamw.cpp — throughput of the CPU AdamW that train.offload.optimizer runs on
// the host, per optim.state, against the host's own copy bandwidth measured in the same run.
//
//   build-emu/benchmarks/cpu_adamw [million_params=64] [threads=0 (all)] [reps=5]
//
// Prints, per state: parameters/s, the host bytes one update touches per parameter (read and
// written: master, gradient, moments) and the GB/s that makes, beside memcpy's GB/s (read +
// write) on a buffer of the same size. A 13B step projection from these numbers is in
// benchmarks/RESULTS.md (the AdamW time plus the PCIe copies of gradients down and weights up).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/cpu/threading.h"
#include "core/rng.h"
#include "optim/adamw.h"

using namespace ptrain;
using Clock = std::chrono::steady_clock;

namespace {
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

/// Host bytes an update reads and writes per parameter (CPU tensors of every float dtype are floats).
double touched_bytes(optim::StateFormat s) {
  switch (s) {
    case optim::StateFormat::fp32: return 4 * 2 + 4 + 8 * 2;     // master r/w, grad r, moments r/w
    case optim::StateFormat::bf16_sr: return 4 * 2 + 4 + 8 * 2;  // the same floats (the bf16 grid)
    case optim::StateFormat::int8: return 4 * 2 + 4 + 2 * 2 + 16.0 / 2048;
  }
  return 0;
}
}  // namespace

int main(int argc, char** argv) {
  const int64_t n = static_cast<int64_t>((argc > 1 ? std::atof(argv[1]) : 64.0) * 1e6);
  const int threads = argc > 2 ? std::atoi(argv[2]) : 0;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 5;
  cpu::set_threads(threads > 0 ? threads : cpu::usable_cores());
  std::printf("CPU AdamW: %.1fM parameters in 64 tensors, %d threads, best of %d\n", n / 1e6,
              threads > 0 ? threads : cpu::usable_cores(), reps);

  // host copy bandwidth: memcpy of a 4n-byte buffer (read + write counted)
  {
    std::vector<float> a(static_cast<size_t>(n), 1.0f), b(static_cast<size_t>(n));
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      std::memcpy(b.data(), a.data(), a.size() * sizeof(float));
      best = std::min(best, seconds_since(t0));
    }
    std::printf("memcpy (one thread): %.2f GB/s read + write\n", 2.0 * 4 * n / best / 1e9);
  }
  std::printf("| optim.state | parameters/s | bytes touched per parameter | GB/s |\n|---|---:|---:|---:|\n");
  for (optim::StateFormat st : {optim::StateFormat::fp32, optim::StateFormat::bf16_sr, optim::StateFormat::int8}) {
    std::vector<optim::ParamRef> refs;
    const int64_t per = n / 64;
    const PhiloxKey key = make_key(1, "bench");
    for (int i = 0; i < 64; ++i) {
      std::vector<float> w(static_cast<size_t>(per)), g(w.size());
      for (int64_t k = 0; k < per; ++k) {
        w[static_cast<size_t>(k)] = static_cast<float>(random_normal(key, static_cast<uint64_t>(k)) * 0.02);
        g[static_cast<size_t>(k)] = static_cast<float>(random_normal(key, static_cast<uint64_t>(k + per)) * 1e-3);
      }
      const DType wd = st == optim::StateFormat::fp32 ? DType::f32 : DType::bf16;
      refs.push_back({"p" + std::to_string(i), Tensor::from_vector(w, {per}, wd), Tensor::from_vector(g, {per})});
    }
    optim::AdamWOptions o;
    o.state = st;
    optim::AdamW adam(o, refs);
    adam.step(1e-4);  // creates the state
    double best = 1e30;
    for (int r = 0; r < reps; ++r) {
      const auto t0 = Clock::now();
      adam.step(1e-4);
      best = std::min(best, seconds_since(t0));
    }
    const double total = static_cast<double>(per) * 64;
    const char* name = st == optim::StateFormat::fp32 ? "fp32" : st == optim::StateFormat::bf16_sr ? "bf16-sr" : "8bit";
    std::printf("| %s | %.3g | %.1f | %.2f |\n", name, total / best, touched_bytes(st), total * touched_bytes(st) / best / 1e9);
  }
  return 0;
}
