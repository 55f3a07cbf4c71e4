// benchmarks/pipeline_bubble.cpp — measured pipeline bubble of every schedule, one rank per stage.
//
//   mpirun -np 4 build/benchmarks/pipeline_bubble [--f-ms 20] [--b-ms 20] [--w-ms 20] [--micro 8]
//          [--virtual 2] [--steps 2] [--out DIR] [--schedules gpipe,1f1b,interleaved,zero-bubble]
//   (benchmarks/pipeline_bubble.sh adds the right mpirun flags)
//
// pp = the number of ranks. A synthetic Stage *sleeps* fixed times per action (forward F,
// input-gradient B, weight-gradient W per rank and micro-batch; a chunk of an interleaved
// schedule sleeps 1/v of them; a non-split backward sleeps B + W), so ranks sharing cores
// (4 ranks on 2) do not distort each other. Before timing, the same step runs once with
// a correctness check: the activation carries the number of stages it went through and the
// gradient the number it came back through, every F / B / W must run exactly once.
//
// Measured bubble = mean over ranks of 1 - compute_r / step, where compute_r is the time
// rank r spent inside Stage calls and step the step's wall time (from a common barrier to
// the last rank's end; the same definition as simulated_bubble()). The best (lowest) of
// --steps steps is reported. Prints a table with the simulated (same costs) and textbook
// bubbles, the ratio to 1F1B measured in the same run, writes each schedule's Chrome trace
// to DIR/pipeline_bubble_<schedule>.json, and ends with one line "RESULT {json}".
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "parallel/mpi_comm.h"
#include "parallel/schedule.h"
#include "parallel/timeline.h"

using namespace ptrain;
using namespace ptrain::parallel;

namespace {

struct Options {
  double f_ms = 20, b_ms = 20, w_ms = 20;
  int micro = 8, virtual_stages = 2, steps = 2;
  std::string out = "benchmarks/results";
  std::vector<std::string> schedules = {"gpipe", "1f1b", "interleaved", "zero-bubble"};
};

// Sleeps for the actions' costs; carries a counter through the pipeline to check routing.
class SleepStage : public Stage {
 public:
  SleepStage(const ScheduleSpec& s, int rank, const Options& o) : s_(s), rank_(rank) {
    const double v = s.virtual_stages;
    f_ = o.f_ms / v;
    b_ = (splits_backward(s.kind) ? o.b_ms : o.b_ms + o.w_ms) / v;
    w_ = o.w_ms / v;
  }
  Shape input_shape(int) const override { return {4}; }
  DType activation_dtype() const override { return DType::f32; }

  Tensor forward(int c, int m, const Tensor& in) override {
    const int g = c * s_.pp + rank_;
    ++calls_[{'F', c, m}];
    const float got = g == 0 ? m * 1000.0f : in.data<float>()[0];
    if (got != static_cast<float>(g + m * 1000)) ++errors_;
    sleep(f_);
    if (g == stages() - 1) return Tensor();
    return Tensor::full({4}, g + 1 + m * 1000);
  }
  Tensor backward(int c, int m, const Tensor& grad, bool split) override {
    const int g = c * s_.pp + rank_;
    ++calls_[{'B', c, m}];
    const float got = g == stages() - 1 ? m * 1000.0f : grad.data<float>()[0];
    if (got != static_cast<float>(stages() - 1 - g + m * 1000) || split != splits_backward(s_.kind)) ++errors_;
    sleep(b_);
    if (g == 0) return Tensor();
    return Tensor::full({4}, stages() - g + m * 1000);
  }
  void backward_weights(int c, int m) override {
    ++calls_[{'W', c, m}];
    if (!splits_backward(s_.kind)) ++errors_;
    sleep(w_);
  }
  /// Whether every action ran exactly once with the right inputs.
  bool ok() const {
    const size_t per = splits_backward(s_.kind) ? 3 : 2;
    if (errors_ || calls_.size() != per * s_.micro_batches * s_.virtual_stages) return false;
    return std::all_of(calls_.begin(), calls_.end(), [](const auto& kv) { return kv.second == 1; });
  }

 private:
  int stages() const { return s_.pp * s_.virtual_stages; }
  static void sleep(double ms) { std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms)); }
  ScheduleSpec s_;
  int rank_;
  double f_ = 0, b_ = 0, w_ = 0;
  std::map<std::tuple<char, int, int>, int> calls_;
  int errors_ = 0;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw UserError(fmt::format("{} needs a value", a));
      return argv[++i];
    };
    if (a == "--f-ms") o.f_ms = std::stod(value());
    else if (a == "--b-ms") o.b_ms = std::stod(value());
    else if (a == "--w-ms") o.w_ms = std::stod(value());
    else if (a == "--micro") o.micro = std::stoi(value());
    else if (a == "--virtual") o.virtual_stages = std::stoi(value());
    else if (a == "--steps") o.steps = std::max(1, std::stoi(value()));
    else if (a == "--out") o.out = value();
    else if (a == "--schedules") o.schedules = split_list(value());
    else if (a == "--help" || a == "-h") {
      std::printf(
          "pipeline_bubble [--f-ms 20] [--b-ms 20] [--w-ms 20] [--micro 8] [--virtual 2] [--steps 2]\n"
          "                [--out DIR] [--schedules gpipe,1f1b,interleaved,zero-bubble]\n"
          "Run under mpirun; pp = number of ranks. See benchmarks/pipeline_bubble.sh.\n");
      std::exit(0);
    } else {
      throw UserError(fmt::format("unknown option {}\nHINT: pipeline_bubble --help", a));
    }
  }
  return o;
}

struct Result {
  std::string name;
  ScheduleSpec spec;
  double measured = 0, simulated = 0, theoretical = 0, step_ms = 0, predicted_ms = 0;
};

int run(int argc, char** argv) {
  const Options o = parse(argc, argv);
  auto world = make_mpi_communicator(MPI_COMM_WORLD, "world");
  const int pp = world->size(), rank = world->rank();
  std::vector<Result> results;
  for (const std::string& name : o.schedules) {
    ScheduleSpec s{parse_schedule_kind(name), pp, o.micro, 1};
    if (s.kind == ScheduleKind::interleaved) s.virtual_stages = o.virtual_stages;
    validate_schedule_spec(s);

    // Correctness first: one step with the routing check.
    {
      SleepStage stage(s, rank, o);
      world->barrier();
      run_schedule(s, stage, *world);
      double bad = stage.ok() ? 0 : 1;
      world->all_reduce(std::span<double>(&bad, 1));
      PT_CHECK(bad == 0, "pipeline_bubble: schedule {} computed wrong values on {} rank(s)", name, bad);
    }
    // Timed steps (the best is kept, with its trace).
    Result best{name, s, 2.0};
    Timeline best_tl;
    for (int step = 0; step < o.steps; ++step) {
      SleepStage stage(s, rank, o);
      Timeline tl;
      world->barrier();
      tl.start();
      const auto t0 = std::chrono::steady_clock::now();
      const ScheduleStats st = run_schedule(s, stage, *world, &tl);
      const double end_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      tl.stop();
      // step = the last rank's end; bubble_r = 1 - compute_r / step
      double step_s = end_s;
      world->all_reduce(std::span<double>(&step_s, 1), ReduceOp::max);
      double idle = 1.0 - st.compute_s / step_s;
      world->all_reduce(std::span<double>(&idle, 1));
      const double measured = idle / pp;
      if (measured < best.measured) {
        best.measured = measured;
        best.step_ms = step_s * 1e3;
        best_tl = tl;
      }
    }
    const double v = s.virtual_stages;
    const double f = o.f_ms / v, b = o.b_ms / v, w = o.w_ms / v;
    const PipelineSimulation sim = simulate_schedule(s, make_all_schedules(s), f, b, w);
    best.simulated = sim.bubble();
    best.predicted_ms = sim.makespan;
    best.theoretical = theoretical_bubble(s);
    results.push_back(best);
    const std::string path = fmt::format("{}/pipeline_bubble_{}.json", o.out, name);
    write_chrome_trace(best_tl, *world, fmt::format("(pp {}) {}", rank, name), path);
  }

  if (rank == 0) {
    double ref = -1;
    for (const Result& r : results)
      if (r.spec.kind == ScheduleKind::one_f_one_b) ref = r.measured;
    std::printf("pipeline bubble: pp = %d ranks, M = %d micro-batches, F = %.1f ms, B = %.1f ms, W = %.1f ms "
                "per rank and micro-batch (sleeps)\n",
                pp, o.micro, o.f_ms, o.b_ms, o.w_ms);
    std::printf("%-12s %3s %10s %10s %11s %10s %12s %9s\n", "schedule", "v", "measured", "simulated", "theoretical",
                "step ms", "predicted ms", "vs 1f1b");
    nlohmann::json j = {{"pp", pp}, {"micro_batches", o.micro}, {"f_ms", o.f_ms}, {"b_ms", o.b_ms},
                        {"w_ms", o.w_ms}, {"schedules", nlohmann::json::object()}};
    for (const Result& r : results) {
      const std::string ratio = ref > 0 ? fmt::format("{:.2f}x", r.measured / ref) : "-";
      std::printf("%-12s %3d %10.4f %10.4f %11.4f %10.1f %12.1f %9s\n", r.name.c_str(), r.spec.virtual_stages,
                  r.measured, r.simulated, r.theoretical, r.step_ms, r.predicted_ms, ratio.c_str());
      j["schedules"][r.name] = {{"virtual_stages", r.spec.virtual_stages}, {"measured_bubble", r.measured},
                                {"simulated_bubble", r.simulated}, {"theoretical_bubble", r.theoretical},
                                {"step_ms", r.step_ms}, {"predicted_step_ms", r.predicted_ms},
                                {"trace", fmt::format("{}/pipeline_bubble_{}.json", o.out, r.name)}};
    }
    std::printf("traces: %s/pipeline_bubble_<schedule>.json (open in https://ui.perfetto.dev)\n", o.out.c_str());
    std::printf("RESULT %s\n", j.dump().c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  int provided = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  error_rank() = rank;
  int rc = 0;
  try {
    rc = run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pipeline_bubble [rank %d]: %s\n", rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);  // a peer may be blocked in a receive
  }
  MPI_Finalize();
  return rc;
}
