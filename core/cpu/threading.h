// core/cpu/threading.h — the CPU path's threads and its BLAS: one pool, one count.
//
// ptrain's kernels are OpenMP loops and its GEMMs go to OpenBLAS. Two pools on the same cores
// fight (libgomp's workers spin after each parallel region while OpenBLAS's own pthreads need
// those cores: 2 threads ran at a third of 1 thread's speed), so there is one pool, ptrain's
// OpenMP team: OpenBLAS runs single-threaded, and cpu::gemm cuts C into fixed tiles that the
// team shares (core/cpu/gemm.cpp; fixed tiles also keep the results independent of the thread
// count, which OpenBLAS's own splitting does not). ptrain links OpenBLAS's OpenMP build, made
// to be called from OpenMP threads, which leaves no second pool in the process at all.
// set_threads() sets the one count.
//
// OpenBLAS (DYNAMIC_ARCH) picks its kernels by CPU model when it loads; a model it does not know
// gets the generic 'Prescott' SSE3 kernels (OpenBLAS 0.3.21 on Emerald Rapids, measured 3.8x
// slower than its SkylakeX kernels there). blas_env_plan() notices that and says which core
// the CPU's instruction set supports; launch/ then re-executes ptrain with OPENBLAS_CORETYPE
// set, since OpenBLAS reads it only at load time. A core named by the user is never changed.
//
// Invariants: nothing here changes arithmetic. GEMM results do not depend on which OpenBLAS
// build runs them (same kernels) nor on the thread count where OpenBLAS splits evenly
// (1, 2, 4 measured bit-identical; 3 differs in the last bits, OpenBLAS's own partition).
#pragma once
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ptrain::cpu {

/// The BLAS this process runs on.
struct BlasInfo {
  std::string library;        ///< real path of the shared object that defines cblas_sgemm
  std::string config;         ///< openblas_get_config(), e.g. "OpenBLAS 0.3.21 ... USE_OPENMP ..."
  std::string build;          ///< "openmp" | "pthread" | "sequential" | "unknown"
  std::string core;           ///< kernels in use (openblas_get_corename), e.g. "SkylakeX"
  std::string core_detected;  ///< what OpenBLAS chose by itself (differs when ptrain set the core)
  std::string core_source;    ///< "detected" | "OPENBLAS_CORETYPE" (the user's) | "ptrain"
  std::string summary() const;  ///< one line for the start banner
};
BlasInfo blas_info();

/// Sets the one thread count of ptrain's kernels and GEMMs: OpenMP's, with OpenBLAS held at 1
/// (cpu::gemm parallelises over tiles on the OpenMP team).
void set_threads(int n);

/// CPUs this process may run on: its affinity mask (mpirun --bind-to gives each rank its share),
/// capped by a cgroup CPU quota (containers, `docker --cpus`). At least 1.
int usable_cores();
/// True when this process's affinity mask holds fewer CPUs than the machine has online.
bool affinity_bound();
/// The default thread count of a rank: usable_cores() when the process is bound to a subset of
/// the machine (its share already), else usable_cores() / ranks_on_node; at least 1.
int auto_threads(int ranks_on_node);

/// Instruction-set level: 0 SSE only, 1 AVX, 2 AVX2 + FMA, 3 AVX-512 (F, CD, BW, DQ, VL).
int cpu_isa_level();
bool cpu_is_amd();
/// The ISA level an OpenBLAS core name needs (case-insensitive; unknown names 0).
int blas_core_isa_level(std::string_view core);
/// The core to force when OpenBLAS fell back to kernels without AVX2 (level < 2) on a CPU that
/// has more, else nullopt: level 3 -> SkylakeX, 2 -> Haswell (Zen on AMD), 1 -> Sandybridge.
/// A core with AVX2 kernels is OpenBLAS's own informed choice and is kept. Never a downgrade.
std::optional<std::string> better_blas_core(std::string_view detected, int cpu_level, bool amd);

/// Environment changes that make this process's BLAS faster, to apply before the BLAS loads
/// (launch/ re-executes): OPENBLAS_CORETYPE when OpenBLAS fell back to a generic core (never
/// when the user set OPENBLAS_CORETYPE), and OMP_WAIT_POLICY=passive when the BLAS is not the
/// OpenMP build (its pthreads would otherwise fight libgomp's spinning workers; never when
/// the user set OMP_WAIT_POLICY). Empty when nothing is to change.
struct EnvPlan {
  std::vector<std::pair<std::string, std::string>> set;  ///< variable, value
  std::string why;                                       ///< one line, for the banner
};
EnvPlan blas_env_plan();

/// Name of the variable that marks a re-executed process (value: EnvPlan::why).
inline constexpr const char* kReexecMarker = "PTRAIN_BLAS_REEXEC";

}  // namespace ptrain::cpu
