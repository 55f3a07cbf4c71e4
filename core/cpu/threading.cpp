// core/cpu/threading.cpp — thread count, CPU share and the BLAS build/core (see threading.h).
#include "core/cpu/threading.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <fmt/format.h>

namespace ptrain::cpu {

namespace {

std::string lower(std::string_view s) {
  std::string r(s);
  for (char& c : r) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return r;
}

const char* env(const char* name) {
  const char* v = std::getenv(name);
  return v && *v ? v : nullptr;
}

/// Name of the variable in which a re-executed process finds the core OpenBLAS chose itself.
constexpr const char* kDetectedVar = "PTRAIN_BLAS_CORE_DETECTED";
/// Tests only: pretend OpenBLAS detected this core (to exercise the re-execution anywhere).
constexpr const char* kTestDetectedVar = "PTRAIN_TEST_BLAS_CORE_DETECTED";

std::string loaded_core() {
  const char* c = openblas_get_corename();
  return c ? std::string(c) : std::string("unknown");
}

/// CPUs of a cgroup quota (v2 cpu.max, v1 cfs quota/period), or 0 when unlimited/unknown.
int cgroup_cpus() {
  auto from = [](double quota, double period) {
    return quota > 0 && period > 0 ? std::max(1, static_cast<int>(quota / period)) : 0;
  };
  std::ifstream v2("/sys/fs/cgroup/cpu.max");
  std::string q;
  double p = 0;
  if (v2 >> q >> p) return q == "max" ? 0 : from(std::atof(q.c_str()), p);
  std::ifstream vq("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), vp("/sys/fs/cgroup/cpu/cpu.cfs_period_us");
  double quota = 0, period = 0;
  if (vq >> quota && vp >> period) return from(quota, period);
  return 0;
}

int affinity_cpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 0;
  return CPU_COUNT(&set);
}

int online_cpus() {
  const long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? static_cast<int>(n) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

std::string BlasInfo::summary() const {
  std::string version = config.substr(0, config.find(' ', config.find(' ') + 1));  // "OpenBLAS 0.3.21"
  std::string s = fmt::format("BLAS {} ({} build), core {}", version.empty() ? "?" : version, build, core);
  if (core_source == "ptrain")
    s += fmt::format(" (set by ptrain: OpenBLAS chose the generic '{}' for this CPU; OPENBLAS_CORETYPE overrides)",
                     core_detected);
  else if (core_source == "OPENBLAS_CORETYPE")
    s += " (OPENBLAS_CORETYPE)";
  return s;
}

BlasInfo blas_info() {
  BlasInfo b;
  Dl_info dl{};
  if (dladdr(reinterpret_cast<void*>(&cblas_sgemm), &dl) && dl.dli_fname) {
    std::error_code ec;
    auto p = std::filesystem::canonical(dl.dli_fname, ec);
    b.library = ec ? std::string(dl.dli_fname) : p.string();
  }
  const char* cfg = openblas_get_config();
  b.config = cfg ? cfg : "";
  switch (openblas_get_parallel()) {
    case 0: b.build = "sequential"; break;
    case 1: b.build = "pthread"; break;
    case 2: b.build = "openmp"; break;
    default: b.build = "unknown";
  }
  b.core = loaded_core();
  if (const char* d = env(kDetectedVar); d && env(kReexecMarker)) {
    b.core_detected = d;
    b.core_source = "ptrain";
  } else {
    const bool user = env("OPENBLAS_CORETYPE") != nullptr;
    b.core_detected = user ? "" : b.core;  // OpenBLAS did not probe the CPU: the user named the core
    b.core_source = user ? "OPENBLAS_CORETYPE" : "detected";
  }
  return b;
}

void set_threads(int n) {
  openblas_set_num_threads(1);  // (the OpenMP build's call also sets OpenMP's count: first)
  omp_set_num_threads(std::max(1, n));
}

int usable_cores() {
  int n = affinity_cpus();
  if (n <= 0) n = online_cpus();
  if (const int q = cgroup_cpus(); q > 0) n = std::min(n, q);
  return std::max(1, n);
}

bool affinity_bound() {
  const int a = affinity_cpus();
  return a > 0 && a < online_cpus();
}

int auto_threads(int ranks_on_node) {
  const int cores = usable_cores();
  if (affinity_bound()) return cores;  // mpirun --bind-to core/socket: the mask is this rank's share
  return std::max(1, cores / std::max(1, ranks_on_node));
}

int cpu_isa_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return 3;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return 2;
  if (__builtin_cpu_supports("avx")) return 1;
#endif
  return 0;
}

bool cpu_is_amd() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  return __builtin_cpu_is("amd");
#else
  return false;
#endif
}

int blas_core_isa_level(std::string_view core) {
  const std::string c = lower(core);
  for (const char* n : {"skylakex", "cooperlake", "sapphirerapids"})
    if (c == n) return 3;
  for (const char* n : {"haswell", "zen", "excavator", "skylake"})
    if (c == n) return 2;
  for (const char* n : {"sandybridge", "bulldozer", "piledriver", "steamroller"})
    if (c == n) return 1;
  return 0;
}

std::optional<std::string> better_blas_core(std::string_view detected, int cpu_level, bool amd) {
  // Only a fallback is replaced: a core with AVX2 kernels is OpenBLAS's informed choice (on some
  // AVX-512 parts it prefers Haswell's kernels on purpose), never second-guessed.
  const int have = blas_core_isa_level(detected);
  if (have >= 2 || cpu_level <= have) return std::nullopt;
  switch (cpu_level) {
    case 3: return std::string("SkylakeX");
    case 2: return std::string(amd ? "Zen" : "Haswell");
    case 1: return std::string("Sandybridge");
    default: return std::nullopt;
  }
}

EnvPlan blas_env_plan() {
  EnvPlan plan;
  if (env(kReexecMarker)) return plan;  // already re-executed once: never loop
  std::vector<std::string> why;
  if (!env("OPENBLAS_CORETYPE")) {
    const char* fake = env(kTestDetectedVar);
    const std::string detected = fake ? std::string(fake) : loaded_core();
    if (auto core = better_blas_core(detected, cpu_isa_level(), cpu_is_amd())) {
      plan.set.emplace_back("OPENBLAS_CORETYPE", *core);
      plan.set.emplace_back(kDetectedVar, detected);
      why.push_back(fmt::format("OpenBLAS chose the generic '{}' kernels; this CPU runs '{}'", detected, *core));
    }
  }
  if (openblas_get_parallel() != 2 && !env("OMP_WAIT_POLICY")) {
    plan.set.emplace_back("OMP_WAIT_POLICY", "passive");
    why.push_back("the BLAS is not OpenBLAS's OpenMP build: OpenMP threads wait passively");
  }
  if (!plan.set.empty()) {
    std::string w;
    for (const auto& s : why) w += (w.empty() ? "" : "; ") + s;
    plan.why = w;
  }
  return plan;
}

}  // namespace ptrain::cpu
