// launch/cli.cpp — subcommands: train (default), plan, commcheck, prepare, export, info; --list-layers,
// --help-config.
#include "launch/cli.h"

#include "launch/mpi_session.h"

#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>

#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/cpu/threading.h"
#if PTRAIN_HAVE_CUDA
#include "core/cuda/device.h"
#include "core/cuda/launch_stats.h"
#endif
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "launch/checkpoint.h"
#include "launch/config.h"
#include "launch/memory_plan.h"
#include "launch/trainer.h"
#include "launch/weights_io.h"
#include "layers/registry.h"
#include "parallel/selftest.h"

namespace po = boost::program_options;

namespace ptrain::launch {

namespace {

constexpr const char* kUsage =
    "usage:\n"
    "  ptrain --cfg FILE.yaml [--set key.path=value]... [--resume]   train\n"
    "  ptrain plan --cfg FILE.yaml [--set k=v]... --gpu NAME --np N [--host-mem GiB] [--json]   memory per rank, fits?\n"
    "  ptrain commcheck [--device cpu|cuda] [--min-bytes 4K] [--max-bytes 256M] [--iters 5] [--json]   (under mpirun) collectives: bandwidth, bit-exact check\n"
    "  ptrain prepare --input FILE... --out FILE.h5 [--tokenizer byte]  text/JSON -> HDF5 tokens\n"
    "  ptrain export --run DIR [--step N] --out FILE.h5 [--dtype fp32|bf16]  checkpoint -> HF-named weights\n"
    "  ptrain info                                                    CPU threads and BLAS, as JSON\n"
    "  ptrain --list-layers | --help-config | --help\n";

ValidationContext validation_context(int world) {
  ValidationContext c;
  c.world_size = world;
  c.archs = layers::layer_names(layers::LayerKind::arch);
  c.norms = layers::layer_names(layers::LayerKind::norm);
  c.mlps = layers::layer_names(layers::LayerKind::mlp);
  c.attentions = layers::layer_names(layers::LayerKind::attention);
  return c;
}

void on_signal(int sig) { stop_signal().store(sig); }

int world_from_env(const char* var) {
  const char* v = std::getenv(var);
  return v ? std::max(1, std::atoi(v)) : 1;
}

/// Applies cpu::blas_env_plan() (a faster OpenBLAS core where OpenBLAS fell back to generic
/// kernels; passive OpenMP waits with a non-OpenMP BLAS) by re-executing this program with the
/// variables set: OpenBLAS and libgomp read them only when they load. Runs before MPI_Init
/// (the process keeps its pid, so mpirun sees nothing); at most once (cpu::kReexecMarker).
/// When exec fails, ptrain goes on with the BLAS as loaded and says so.
void apply_blas_env(char** argv) {
  const cpu::EnvPlan plan = cpu::blas_env_plan();
  if (plan.set.empty()) return;
  for (const auto& [k, v] : plan.set) setenv(k.c_str(), v.c_str(), 1);
  setenv(cpu::kReexecMarker, plan.why.c_str(), 1);
  execv("/proc/self/exe", argv);
  const int err = errno;
  for (const auto& [k, v] : plan.set) unsetenv(k.c_str());
  unsetenv(cpu::kReexecMarker);
  std::cerr << fmt::format("ptrain: warning: could not re-execute to apply {} ({}); going on with the BLAS as loaded\n",
                           plan.why, std::strerror(err));
}

/// `ptrain info`: what the CPU path runs on, one JSON object (the benchmarks read it).
int cmd_info() {
  const cpu::BlasInfo b = cpu::blas_info();
  const int local = world_from_env("OMPI_COMM_WORLD_LOCAL_SIZE");
  nlohmann::json j = {
      {"blas",
       {{"library", b.library}, {"config", b.config}, {"build", b.build}, {"core", b.core},
        {"core_detected", b.core_detected}, {"core_source", b.core_source}}},
      {"cpu_isa_level", cpu::cpu_isa_level()},
      {"usable_cores", cpu::usable_cores()},
      {"affinity_bound", cpu::affinity_bound()},
      {"local_ranks", local},
      {"threads_auto", cpu::auto_threads(local)},
  };
  std::cout << j.dump() << "\n";
  return 0;
}

int cmd_train(int argc, char** argv) {
  po::options_description desc("ptrain training options");
  std::string cfg_path;
  std::vector<std::string> sets;
  desc.add_options()("cfg", po::value(&cfg_path), "YAML config file")(
      "set", po::value(&sets)->composing(), "override a key: --set model.hidden=256 (value parsed as YAML)")(
      "resume", "continue from the newest complete checkpoint in checkpoint.dir")("quiet", "no progress lines");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  po::notify(vm);
  if (cfg_path.empty()) throw UserError(fmt::format("missing --cfg FILE.yaml\n{}", kUsage));

  RunOptions opt;
  opt.resume = vm.count("resume") > 0;
  opt.quiet = vm.count("quiet") > 0;
  MpiSession mpi;
  opt.world_size = mpi.size();
  opt.rank = mpi.rank();
  opt.local_ranks = world_from_env("OMPI_COMM_WORLD_LOCAL_SIZE");
  if (const char* lr = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) opt.local_rank = std::max(0, std::atoi(lr));
  std::unique_ptr<Trainer> trainer;
  try {
    Config cfg = load_config(cfg_path, sets);
    validate(cfg, validation_context(opt.world_size));
    std::signal(SIGTERM, on_signal);
    std::signal(SIGINT, on_signal);
    trainer = std::make_unique<Trainer>(std::move(cfg), opt, mpi.world());
    return trainer->run();
  } catch (const std::exception& e) {
    if (mpi.size() <= 1) throw;
    const bool user = dynamic_cast<const UserError*>(&e) != nullptr;
    const int code = user ? 2 : 1;
    if (!trainer || !trainer->collectives_started()) {
      // Before any collective every rank checks the same inputs, and Trainer::setup agrees on
      // the outcome: when all failed, rank 0 speaks for them; otherwise each failing rank says
      // why and the others (PeerFailed) stay quiet but for rank 0's one line.
      const bool peer = dynamic_cast<const PeerFailed*>(&e) != nullptr;
      const bool everywhere = !trainer || trainer->inputs_failed_everywhere();
      if (mpi.rank() == 0 || (!peer && !everywhere)) std::cerr << "ptrain: error: " << e.what() << "\n";
      return code;
    }
    // Mid-run: the peers may be waiting in a collective; end the whole job now.
    std::cerr << fmt::format("ptrain: {}error on rank {}: {}\n", user ? "" : "internal ", mpi.rank(), e.what());
    mpi.abort(code);
  }
}

/// `ptrain plan`: the model of memory (launch/memory_plan.h) of a config on --np GPUs of one
/// kind and one host; no MPI, no allocation. Exit 0 with the verdict (fits or not), 2 for bad input.
int cmd_plan(int argc, char** argv) {
  po::options_description desc("ptrain plan");
  std::string cfg_path, gpu_name;
  std::vector<std::string> sets;
  int np = 0;
  double host_gib = 0;
  desc.add_options()("cfg", po::value(&cfg_path), "YAML config file")(
      "set", po::value(&sets)->composing(), "override a key: --set train.recompute=full")(
      "gpu", po::value(&gpu_name), "GPU of every rank")("np", po::value(&np), "ranks (GPUs)")(
      "host-mem", po::value(&host_gib), "host memory in GiB (default: this machine's MemTotal)")(
      "json", "print one JSON object");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  po::notify(vm);
  PT_USER_CHECK(!cfg_path.empty(), "plan: missing --cfg FILE.yaml\n{}", kUsage);
  PT_USER_CHECK(!gpu_name.empty(), "plan: missing --gpu NAME (known: {})", known_gpu_names());
  PT_USER_CHECK(vm.count("np") && np >= 1, "plan: --np N (the number of ranks, >= 1) is required");
  const GpuSpec* gpu = find_gpu(gpu_name);
  PT_USER_CHECK(gpu, "plan: --gpu {} is not a GPU the model of memory knows (known: {})", gpu_name, known_gpu_names());
  PT_USER_CHECK(!vm.count("host-mem") || host_gib > 0, "plan: --host-mem {} must be a positive number of GiB",
                host_gib);
  Config cfg = load_config(cfg_path, sets);
  validate(cfg, validation_context(np));
  const int64_t host = vm.count("host-mem") ? static_cast<int64_t>(host_gib * 1024.0 * 1024.0 * 1024.0)
                                            : host_memory_bytes();
  const MemoryPlan plan = plan_memory(cfg, np, *gpu, host);
  const std::vector<PlanChange> advice = plan_advice(cfg, np, *gpu, host, plan);
  if (vm.count("json"))
    std::cout << plan_to_json(plan, advice).dump() << "\n";
  else
    std::cout << fmt::format("config: {}\n", cfg_path) << format_plan(plan, advice);
  return 0;
}

/// "4K", "256M", "1G", "4096": bytes (powers of 1024).
int64_t parse_bytes(const std::string& s, const char* what) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(s, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  const std::string unit = s.substr(used);
  const double mult = unit.empty() || unit == "B" ? 1 : unit == "K" || unit == "KB" ? 1024.0
                      : unit == "M" || unit == "MB" ? 1024.0 * 1024 : unit == "G" || unit == "GB" ? 1024.0 * 1024 * 1024 : -1;
  PT_USER_CHECK(used > 0 && mult > 0 && v * mult >= 4 && v * mult <= 16.0 * 1024 * 1024 * 1024,
                "commcheck: {} {} is not a size from 4 bytes to 16G (examples: 4096, 4K, 256M, 1G)", what, s);
  return static_cast<int64_t>(v * mult);
}

std::string human_bytes(int64_t b) {
  if (b >= (int64_t{1} << 30)) return fmt::format("{:.0f} GiB", static_cast<double>(b) / (1 << 30));
  if (b >= (int64_t{1} << 20)) return fmt::format("{:.0f} MiB", static_cast<double>(b) / (1 << 20));
  if (b >= 1024) return fmt::format("{:.0f} KiB", static_cast<double>(b) / 1024);
  return fmt::format("{} B", b);
}

/// `ptrain commcheck` (under mpirun, like nccl-tests' all_reduce_perf): every collective ptrain
/// uses and a ring of sends over all ranks, at sizes from --min-bytes to --max-bytes (x4 each
/// step), timed and checked bit for bit (parallel/selftest.h). Exit 0 when every check passed,
/// 1 when one failed, 2 for bad input.
int cmd_commcheck(int argc, char** argv) {
  po::options_description desc("ptrain commcheck");
  std::string device = "cpu", min_s = "4K", max_s = "256M";
  int iters = 5;
  constexpr double timeout = 30;  // seconds a message may take before it counts as lost (as the self-test)
  desc.add_options()("device", po::value(&device), "cpu | cuda: where the buffers live")(
      "min-bytes", po::value(&min_s), "smallest buffer per rank (default 4K)")(
      "max-bytes", po::value(&max_s), "largest buffer per rank (default 256M)")(
      "iters", po::value(&iters), "timed calls per collective and size (default 5; one more untimed first)")(
      "json", "print one JSON object");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  po::notify(vm);
  PT_USER_CHECK(device == "cpu" || device == "cuda", "commcheck: --device {} (accepted: cpu, cuda)", device);
  PT_USER_CHECK(iters >= 1 && iters <= 1000, "commcheck: --iters {} must be in [1, 1000]", iters);
  const int64_t lo = parse_bytes(min_s, "--min-bytes"), hi = parse_bytes(max_s, "--max-bytes");
  PT_USER_CHECK(lo <= hi, "commcheck: --min-bytes {} exceeds --max-bytes {}", min_s, max_s);
  MpiSession mpi;
  PT_USER_CHECK(mpi.size() > 1, "commcheck: one rank has no one to talk to. HINT: mpirun -np 2 ptrain commcheck");
  int local_ranks = world_from_env("OMPI_COMM_WORLD_LOCAL_SIZE"), local_rank = 0;
  if (const char* lr = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK")) local_rank = std::max(0, std::atoi(lr));
  const Device dev = device == "cuda" ? resolve_device(DeviceChoice::cuda, mpi.size(), local_ranks) : Device::cpu;
#if PTRAIN_HAVE_CUDA
  if (dev == Device::cuda) cuda::select_device(cuda::emulated() ? 0 : local_rank % std::max(1, cuda::device_count()));
#else
  (void)local_rank;
#endif
  auto world = mpi.world();
  const int P = world->size();
  nlohmann::json out = {{"ranks", P},          {"device", device}, {"communicator", "mpi"},
                         {"iters", iters},      {"results", nlohmann::json::array()}};
  bool ok = true;
  const bool json = vm.count("json") > 0, root = world->rank() == 0;
  if (root && !json)
    fmt::print("commcheck: {} ranks, {} tensors, MPI communicator{}\n{:<22} {:>9} {:>12} {:>12} {:>12}  {}\n", P,
               device, dev == Device::cuda ? " (device tensors staged through host memory)" : "", "collective", "size",
               "time (us)", "algbw GB/s", "busbw GB/s", "check");
  for (int64_t bytes = lo;; bytes *= 4) {
    const int64_t b = std::min(bytes, hi);
    const auto checks = parallel::check_collectives(*world, dev, std::max<int64_t>(1, b / 4), iters, timeout);
    for (const auto& c : checks) {
      ok = ok && c.ok;
      out["results"].push_back({{"collective", c.collective}, {"bytes", c.bytes}, {"time_s", c.seconds},
                                {"algbw_gbps", c.alg_gbps()}, {"busbw_gbps", c.bus_gbps(P)}, {"ok", c.ok},
                                {"detail", c.detail}});
      if (root && !json)
        fmt::print("{:<22} {:>9} {:>12.1f} {:>12.3f} {:>12.3f}  {}\n", c.collective, human_bytes(c.bytes),
                   c.seconds * 1e6, c.alg_gbps(), c.bus_gbps(P), c.ok ? "ok" : "WRONG: " + c.detail);
    }
    if (b >= hi) break;
  }
  out["ok"] = ok;
  if (root) {
    if (json)
      std::cout << out.dump() << "\n";
    else
      fmt::print("verdict: {}\n", ok ? "every collective correct at every size"
                                     : "WRONG RESULTS (see the lines above). HINT: on GeForce cards over PCIe keep GPU "
                                       "peer-to-peer off (NCCL_P2P_DISABLE=1); check the ranks named, their GPUs and "
                                       "links");
    std::fflush(stdout);
  }
  return ok ? 0 : 1;
}

int cmd_prepare(int argc, char** argv) {
  po::options_description desc("ptrain prepare");
  data::PrepareOptions o;
  desc.add_options()("input", po::value(&o.inputs)->multitoken()->composing(), "input files (.txt, .json, .jsonl)")(
      "out", po::value(&o.out), "output HDF5 file")("tokenizer", po::value(&o.tokenizer)->default_value("byte"),
                                                      "tokenizer name");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  po::notify(vm);
  PT_USER_CHECK(!o.inputs.empty(), "prepare: no --input files given\n{}", kUsage);
  PT_USER_CHECK(!o.out.empty(), "prepare: no --out file given\n{}", kUsage);
  auto st = data::prepare(o);
  fmt::print("prepared {}: {} documents, {} tokens ({} tokenizer)\n", o.out, st.documents, st.tokens, o.tokenizer);
  return 0;
}

int cmd_export(int argc, char** argv) {
  po::options_description desc("ptrain export");
  std::string run, out, dtype = "fp32";
  int64_t step = -1;
  desc.add_options()("run", po::value(&run), "run directory (checkpoint.dir)")(
      "step", po::value(&step), "checkpoint step (default: the newest)")("out", po::value(&out), "output HDF5 file")(
      "dtype", po::value(&dtype), "stored dtype: fp32 | bf16");
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(desc).run(), vm);
  po::notify(vm);
  PT_USER_CHECK(!run.empty() && !out.empty(), "export: --run DIR and --out FILE.h5 are required\n{}", kUsage);
  PT_USER_CHECK(dtype == "fp32" || dtype == "bf16", "export: --dtype {} is not a stored dtype (accepted: fp32, bf16)",
                dtype);
  const DType store = parse_dtype(dtype);
  if (step < 0) {
    auto latest = latest_checkpoint(run, false);
    PT_USER_CHECK(latest.has_value(), "export: no complete checkpoint in {}", run);
    step = *latest;
  }
  PT_USER_CHECK(std::filesystem::exists(std::filesystem::path(run) / step_dir_name(step) / "meta.json"),
                "export: {} has no complete checkpoint for step {}", run, step);
  auto meta = read_meta(run, step);
  Config cfg = from_json(meta.at("config"));
  auto spec = model_spec(cfg);
  spec.dtype = DType::f32;
  auto model = layers::make_model(spec);
  auto ws = model->external_weights();
  const bool low = is_low_precision(cfg.train.precision);
  std::vector<CkptEntry> entries;
  std::vector<Tensor> sources;
  for (auto& w : ws) {
    Shape full = w.param->value.shape();
    if (w.rows >= 0) full[0] = w.rows;
    Tensor t = Tensor::zeros(w.param->value.shape());
    entries.push_back({low ? "master" : "param", w.name, t, full, {}, DType::f32, true});
    sources.push_back(t);
  }
  read_checkpoint(run, step, entries);
  write_external_weights(out, ws, sources, store);
  fmt::print("exported {} tensors of {}/{} to {} ({})\n", ws.size(), run, step_dir_name(step), out, dtype_name(store));
  return 0;
}

}  // namespace

int main_entry(int argc, char** argv) {
  try {
    const std::string sub = argc > 1 ? argv[1] : "";
    if (sub == "plan") return cmd_plan(argc - 1, argv + 1);
    if (sub == "commcheck") return cmd_commcheck(argc - 1, argv + 1);
    if (sub == "prepare") return cmd_prepare(argc - 1, argv + 1);
    if (sub == "export") return cmd_export(argc - 1, argv + 1);
    if (sub == "info") {
      PT_USER_CHECK(argc == 2, "info takes no arguments\n{}", kUsage);
      apply_blas_env(argv);
      return cmd_info();
    }
    if (sub == "--help" || sub == "-h" || sub.empty()) {
      std::cout << kUsage;
      return sub.empty() ? 2 : 0;
    }
    if (sub == "--list-layers") {
      std::cout << layers::describe_registry() << "\ntokenizers:\n" << data::describe_tokenizers();
      return 0;
    }
    if (sub == "--help-config") {
      std::cout << describe_keys();
      return 0;
    }
    apply_blas_env(argv);
    return cmd_train(argc, argv);
  } catch (const UserError& e) {
    std::cerr << "ptrain: error: " << e.what() << "\n";
    return 2;
  } catch (const po::error& e) {
    std::cerr << "ptrain: error: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "ptrain: internal error: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace ptrain::launch
