// parallel/schedule.h — pipeline schedules as per-rank action lists, and their executor.
//
// A schedule is, for each pipeline rank, the ordered list of compute actions it runs in
// one step: F (forward), B (backward; with zero-bubble only the input gradient), W (the
// deferred weight gradient). Communication is implied: before F(c, m) on a global stage
// > 0 the rank receives the activation from the previous global stage; after it, on a
// global stage < last, it sends its output on; B mirrors this with gradients. Sends are
// non-blocking, receives blocking; every list is a topological order of the step's
// dependency graph consistent with the other ranks' lists, so executing them cannot deadlock.
//
//   gpipe        all F (m = 0..M-1), then all B in the same order           memory M
//                (FIFO: B(0) first, so the oldest activations are freed first;
//                with unit costs the step time equals the reverse-order variant)
//   1f1b         min(pp-1-r, M) warm-up F, then alternate F/B, cool-down B    memory pp-r
//   interleaved  Megatron's interleaved 1F1B over v chunks (M % pp == 0): the k-th forward
//                runs chunk (k/pp)%v on micro (k/(pp*v))*pp + k%pp, the k-th backward
//                chunk v-1-(k/pp)%v; warm-up min((pp-r-1)*2 + (v-1)*pp, M*v) F, then
//                F/B alternating, then cool-down B                           bubble / v
//   zero-bubble  ZB-H1 (Qi et al. 2023): B split into B (input grad) and W (weight grad);
//                W fills what would be bubbles. Built by a deterministic list-scheduling
//                simulation with F = B = W = 1 (see schedule.cpp): a free rank runs, in
//                priority, W if pp W are pending, B if its gradient has arrived, F if its
//                input has arrived and fewer than pp-r micro-batches are between F and B,
//                else the oldest pending W. Guarantees: at most pp-r micro-batches between
//                F and B (as 1F1B), at most pp micro-batches between B and W, every W
//                within the step. With f = b = w the step takes M(f+b+w) + (pp-1)(f+b-w)
//                for M >= pp: a third of 1F1B's bubble.
//
// Only interleaved has v > 1. With pp = 1 and v > 1 consecutive global stages sit on the
// same rank: the executor hands those tensors over locally instead of sending them.
//
// Messages go over the `pp` communicator (group rank = pipeline rank). With S = pp*v global
// stages, the activation entering global stage g for micro-batch m has tag 2*(m*S + g), the
// gradient entering global stage g (sent back by g+1) tag 2*(m*S + g) + 1 (pipeline_tag()).
// Tags stay in [0, 2*M*S) and below 32767 (the MPI_TAG_UB every MPI guarantees); a larger
// M*S is refused. Nothing else may use tags in that range on the `pp` communicator while a
// step runs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "parallel/comm.h"
#include "parallel/stage.h"

namespace ptrain::parallel {

class Timeline;

enum class ScheduleKind : uint8_t { gpipe, one_f_one_b, interleaved, zero_bubble };

struct Action {
  enum Kind : uint8_t { F, B, W } kind;
  int micro;
  int chunk;  ///< local chunk (0..v-1); global stage = chunk * pp + pp_rank
  bool operator==(const Action&) const = default;
};

struct ScheduleSpec {
  ScheduleKind kind = ScheduleKind::one_f_one_b;
  int pp = 1;              ///< pipeline ranks
  int micro_batches = 1;   ///< M per step (per DP rank)
  int virtual_stages = 1;  ///< v (interleaved only; 1 otherwise)
};

/// The action list of pipeline rank `rank`. Throws ptrain::Error for an impossible spec
/// (interleaved with M % pp != 0, v > 1 without interleaved, pp/M/v < 1, rank out of
/// range, more than 32768 tags 2*M*pp*v); the message names the parallel.* config keys.
std::vector<Action> make_schedule(const ScheduleSpec& s, int rank);
/// make_schedule for every pipeline rank, [rank][i].
std::vector<std::vector<Action>> make_all_schedules(const ScheduleSpec& s);
/// Throws ptrain::UserError when `s` cannot be scheduled (what make_schedule refuses).
void validate_schedule_spec(const ScheduleSpec& s);

/// Whether backward is split into B (input gradient) and W (weight gradient).
inline bool splits_backward(ScheduleKind k) { return k == ScheduleKind::zero_bubble; }
/// "gpipe" | "1f1b" | "interleaved" | "zero-bubble" (the parallel.schedule spelling).
std::string schedule_name(ScheduleKind k);
/// Inverse of schedule_name; throws ptrain::UserError naming the accepted values.
ScheduleKind parse_schedule_kind(const std::string& name);
/// "F0 F1 B0 ..." (with v > 1: "F0.1" = micro 0 on chunk 1).
std::string to_string(const std::vector<Action>& list, int virtual_stages = 1);
/// Tag of the activation (grad = false) or gradient (grad = true) entering global stage
/// `global_stage` for `micro`: 2*(micro*pp*v + global_stage) + grad.
int pipeline_tag(const ScheduleSpec& s, bool grad, int micro, int global_stage);

/// Every rank's lists executed in order with fixed costs, communication free: F costs f,
/// B costs b (b + w when the schedule does not split backward), W costs w. An action starts
/// when its rank is free and its inputs are done: F on global stage g > 0 needs F on g-1,
/// B on g needs its own F and (g < last) B on g+1, W needs its own B. Every rank starts at 0.
struct PipelineSimulation {
  std::vector<std::vector<double>> start, end;  ///< [rank][action index]
  std::vector<double> busy;                     ///< compute time per rank
  double makespan = 0;                          ///< latest end over all ranks
  /// Mean over ranks of the idle fraction 1 - busy_r / makespan.
  double bubble() const;
};
/// Simulates `lists` ([rank][i], any lists, not only make_schedule's). Throws ptrain::Error
/// when a list is inconsistent (an action out of range, repeated or missing) or when the
/// lists deadlock under in-order execution with blocking receives (naming each stuck rank's
/// next action).
PipelineSimulation simulate_schedule(const ScheduleSpec& s, const std::vector<std::vector<Action>>& lists,
                                     double f = 1.0, double b = 1.0, double w = 1.0);
/// Bubble fraction when F, B and W take fixed times f, b, w (without split, B costs b + w):
/// simulate_schedule(s, make_all_schedules(s), f, b, w).bubble(), i.e. the mean over ranks
/// of idle / step time, the step ending when the last rank finishes. For 1f1b and gpipe
/// this is (pp-1)/(M+pp-1) whatever f, b, w.
double simulated_bubble(const ScheduleSpec& s, double f = 1.0, double b = 1.0, double w = 1.0);
/// The textbook value: (pp-1)/(M+pp-1) for gpipe/1f1b, (pp-1)/(v*M+pp-1) interleaved,
/// simulated_bubble() for zero-bubble.
double theoretical_bubble(const ScheduleSpec& s);

struct ScheduleStats {
  double wall_s = 0;     ///< time inside run_schedule
  double compute_s = 0;  ///< time inside Stage calls
  double bubble() const { return wall_s > 0 ? 1.0 - compute_s / wall_s : 0.0; }
};

/// Runs this rank's list: Stage calls plus the implied send/recv over `pp` (group rank =
/// pipeline rank; pp.size() must equal s.pp). Received activations are CPU tensors of shape
/// stage.input_shape(c), dtype stage.activation_dtype(); the gradient received for (c, m) has
/// the shape of what forward(c, m) returned. What forward/backward return is sent as is
/// (contiguous CPU tensors of dtype activation_dtype(); backward's of shape input_shape(c)),
/// and kept until its isend completes (polled after every action): the Stage must not write
/// into a tensor it returned. Records spans "F m3 c0", "B m3 c0", "W m3 c0" (compute) and
/// "recv act m3 c1", "recv grad ..", "send act ..", "send grad .." (comm; c = this rank's
/// chunk) on `timeline` when given and recording. Waits for all of its sends before
/// returning. compute_s counts the time inside Stage calls only.
ScheduleStats run_schedule(const ScheduleSpec& s, Stage& stage, Communicator& pp, Timeline* timeline = nullptr);

}  // namespace ptrain::parallel
