// parallel/schedule.cpp — pipeline schedules (per-rank action lists), their simulation,
// and the executor that runs one rank's list over a Stage and a communicator.
//
// Invariants:
//  * make_schedule is a pure function of (spec, rank): every rank computes its own list and
//    the lists of all ranks agree (zero-bubble builds all ranks' lists and returns one).
//  * Every list holds each F(c, m) and B(c, m) exactly once (W too when backward is split),
//    F(c, m) before B(c, m) before W(c, m); simulate_schedule proves the lists of all ranks
//    run to completion with in-order execution, blocking receives and non-blocking sends.
//  * Global stage of local chunk c on pipeline rank r: g = c*pp + r.
#include "parallel/schedule.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <limits>
#include <map>

#include "parallel/timeline.h"

namespace ptrain::parallel {

namespace {

constexpr int kMaxTag = 32767;  // MPI_TAG_UB is at least this on every MPI

int warm_up_1f1b(int pp, int rank, int M) { return std::min(pp - 1 - rank, M); }

std::vector<Action> gpipe(int M) {
  std::vector<Action> a;
  for (int m = 0; m < M; ++m) a.push_back({Action::F, m, 0});
  for (int m = 0; m < M; ++m) a.push_back({Action::B, m, 0});
  return a;
}

// PipeDream-flush / Megatron's forward_backward_pipelining_without_interleaving.
std::vector<Action> one_f_one_b(int pp, int rank, int M) {
  const int warm = warm_up_1f1b(pp, rank, M), steady = M - warm;
  std::vector<Action> a;
  for (int m = 0; m < warm; ++m) a.push_back({Action::F, m, 0});
  for (int i = 0; i < steady; ++i) {
    a.push_back({Action::F, warm + i, 0});
    a.push_back({Action::B, i, 0});
  }
  for (int m = steady; m < M; ++m) a.push_back({Action::B, m, 0});
  return a;
}

// Megatron's forward_backward_pipelining_with_interleaving with micro-batch groups of pp:
// the k-th forward (0 <= k < M*v) runs chunk (k/pp)%v on micro (k/(pp*v))*pp + k%pp; the
// k-th backward the same micro on chunk v-1-(k/pp)%v.
std::vector<Action> interleaved(int pp, int rank, int M, int v) {
  const int total = M * v;
  auto micro = [&](int k) { return (k / (pp * v)) * pp + k % pp; };
  auto fchunk = [&](int k) { return (k / pp) % v; };
  const int warm = std::min((pp - rank - 1) * 2 + (v - 1) * pp, total), steady = total - warm;
  std::vector<Action> a;
  for (int k = 0; k < warm; ++k) a.push_back({Action::F, micro(k), fchunk(k)});
  for (int i = 0; i < steady; ++i) {
    const int k = warm + i;
    a.push_back({Action::F, micro(k), fchunk(k)});
    a.push_back({Action::B, micro(i), v - 1 - fchunk(i)});
  }
  for (int k = steady; k < total; ++k) a.push_back({Action::B, micro(k), v - 1 - fchunk(k)});
  return a;
}

// ZB-H1 by list scheduling with unit costs F = B = W = 1 over all ranks at once (v = 1, so
// the pipeline rank is the global stage). At each integer time every free rank picks:
//   1. the oldest pending W when pp W are pending (bounds what W keeps alive);
//   2. the next B (FIFO) when its gradient has arrived (last rank: its own F is done);
//   3. the next F when its input has arrived and fewer than pp-r micro-batches sit between
//      F and B (the 1F1B activation bound);
//   4. the oldest pending W;
//   5. nothing (idle until the next completion).
// Actions done at time t are visible from t on, so the order in which ranks pick at one
// instant does not matter, and the result is deterministic.
std::vector<std::vector<Action>> zero_bubble_h1(int pp, int M) {
  constexpr int kNone = std::numeric_limits<int>::max();
  std::vector<std::vector<int>> f_end(pp, std::vector<int>(M, kNone)), b_end = f_end;
  std::vector<int> nf(pp, 0), nb(pp, 0), nw(pp, 0), free_at(pp, 0);
  std::vector<std::vector<Action>> lists(pp);
  const int total = 3 * M * pp;
  int done = 0, t = 0;
  while (done < total) {
    for (int r = 0; r < pp; ++r) {
      if (free_at[r] > t) continue;
      const int pending_w = nb[r] - nw[r];
      Action a{Action::W, -1, 0};
      if (pending_w >= pp) {
        a = {Action::W, nw[r], 0};
      } else if (nb[r] < nf[r] && f_end[r][nb[r]] <= t && (r == pp - 1 || b_end[r + 1][nb[r]] <= t)) {
        a = {Action::B, nb[r], 0};
      } else if (nf[r] < M && (r == 0 || f_end[r - 1][nf[r]] <= t) && nf[r] - nb[r] < pp - r) {
        a = {Action::F, nf[r], 0};
      } else if (pending_w > 0) {
        a = {Action::W, nw[r], 0};
      } else {
        continue;
      }
      switch (a.kind) {
        case Action::F: f_end[r][nf[r]++] = t + 1; break;
        case Action::B: b_end[r][nb[r]++] = t + 1; break;
        case Action::W: ++nw[r]; break;
      }
      free_at[r] = t + 1;
      lists[r].push_back(a);
      ++done;
    }
    int next = kNone;
    for (int r = 0; r < pp; ++r)
      if (free_at[r] > t) next = std::min(next, free_at[r]);
    PT_CHECK(next != kNone, "zero-bubble schedule generation stalled at t = {} (pp = {}, M = {})", t, pp, M);
    t = next;
  }
  return lists;
}

const char* kind_letter(Action::Kind k) { return k == Action::F ? "F" : k == Action::B ? "B" : "W"; }

}  // namespace

std::string schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::gpipe: return "gpipe";
    case ScheduleKind::one_f_one_b: return "1f1b";
    case ScheduleKind::interleaved: return "interleaved";
    case ScheduleKind::zero_bubble: return "zero-bubble";
  }
  return "?";
}

ScheduleKind parse_schedule_kind(const std::string& name) {
  for (auto k : {ScheduleKind::gpipe, ScheduleKind::one_f_one_b, ScheduleKind::interleaved, ScheduleKind::zero_bubble})
    if (schedule_name(k) == name) return k;
  throw UserError(fmt::format("parallel.schedule: \"{}\" is not one of gpipe, 1f1b, interleaved, zero-bubble", name));
}

void validate_schedule_spec(const ScheduleSpec& s) {
  PT_USER_CHECK(s.pp >= 1, "parallel.pp: {} must be >= 1", s.pp);
  PT_USER_CHECK(s.micro_batches >= 1, "pipeline schedule: {} micro-batches per step; at least 1 is needed", s.micro_batches);
  PT_USER_CHECK(s.virtual_stages >= 1, "parallel.virtual_stages: {} must be >= 1", s.virtual_stages);
  PT_USER_CHECK(s.virtual_stages == 1 || s.kind == ScheduleKind::interleaved,
                "parallel.virtual_stages: {} needs parallel.schedule: interleaved (got {})", s.virtual_stages,
                schedule_name(s.kind));
  PT_USER_CHECK(s.kind != ScheduleKind::interleaved || s.micro_batches % s.pp == 0,
                "parallel.schedule: interleaved needs the micro-batches per step ({}) to be a multiple of "
                "parallel.pp ({})\nHINT: change train.global_batch, or use parallel.schedule: 1f1b",
                s.micro_batches, s.pp);
  const int64_t tags = 2LL * s.micro_batches * s.pp * s.virtual_stages;
  PT_USER_CHECK(tags <= kMaxTag + 1,
                "pipeline schedule: {} micro-batches x {} global stages need {} message tags, more than the {} MPI "
                "guarantees\nHINT: use fewer micro-batches per step (a larger train.micro_batch)",
                s.micro_batches, s.pp * s.virtual_stages, tags, kMaxTag + 1);
}

std::vector<std::vector<Action>> make_all_schedules(const ScheduleSpec& s) {
  validate_schedule_spec(s);
  if (s.kind == ScheduleKind::zero_bubble) return zero_bubble_h1(s.pp, s.micro_batches);
  std::vector<std::vector<Action>> lists;
  for (int r = 0; r < s.pp; ++r) lists.push_back(make_schedule(s, r));
  return lists;
}

std::vector<Action> make_schedule(const ScheduleSpec& s, int rank) {
  validate_schedule_spec(s);
  PT_CHECK(rank >= 0 && rank < s.pp, "pipeline rank {} out of range for pp = {}", rank, s.pp);
  switch (s.kind) {
    case ScheduleKind::gpipe: return gpipe(s.micro_batches);
    case ScheduleKind::one_f_one_b: return one_f_one_b(s.pp, rank, s.micro_batches);
    case ScheduleKind::interleaved: return interleaved(s.pp, rank, s.micro_batches, s.virtual_stages);
    case ScheduleKind::zero_bubble: return zero_bubble_h1(s.pp, s.micro_batches)[rank];
  }
  PT_CHECK(false, "unknown schedule kind {}", static_cast<int>(s.kind));
}

std::string to_string(const std::vector<Action>& list, int virtual_stages) {
  std::string out;
  for (const Action& a : list) {
    if (!out.empty()) out += ' ';
    out += kind_letter(a.kind);
    out += std::to_string(a.micro);
    if (virtual_stages > 1) {
      out += '.';
      out += std::to_string(a.chunk);
    }
  }
  return out;
}

int pipeline_tag(const ScheduleSpec& s, bool grad, int micro, int global_stage) {
  const int stages = s.pp * s.virtual_stages;
  return 2 * (micro * stages + global_stage) + (grad ? 1 : 0);
}

// ---------------------------------------------------------------------------------------
// Simulation

double PipelineSimulation::bubble() const {
  if (makespan <= 0 || busy.empty()) return 0.0;
  double idle = 0;
  for (double b : busy) idle += 1.0 - b / makespan;
  return idle / static_cast<double>(busy.size());
}

PipelineSimulation simulate_schedule(const ScheduleSpec& s, const std::vector<std::vector<Action>>& lists, double f,
                                     double b, double w) {
  validate_schedule_spec(s);
  const int pp = s.pp, v = s.virtual_stages, M = s.micro_batches, S = pp * v;
  const bool split = splits_backward(s.kind);
  PT_CHECK(static_cast<int>(lists.size()) == pp, "simulate_schedule: {} lists for pp = {}", lists.size(), pp);
  const size_t n_slots = static_cast<size_t>(3) * S * M;
  auto index = [&](Action::Kind k, int g, int m) { return (static_cast<size_t>(k) * S + g) * M + m; };
  std::vector<char> seen(n_slots, 0);
  for (int r = 0; r < pp; ++r) {
    const size_t expected = static_cast<size_t>(M) * v * (split ? 3 : 2);
    for (const Action& a : lists[r]) {
      PT_CHECK(a.micro >= 0 && a.micro < M && a.chunk >= 0 && a.chunk < v,
               "schedule of pipeline rank {}: {}{} on chunk {} is out of range (M = {}, v = {})", r,
               kind_letter(a.kind), a.micro, a.chunk, M, v);
      PT_CHECK(split || a.kind != Action::W, "schedule of pipeline rank {}: W{} in a schedule without split backward",
               r, a.micro);
      char& n = seen[index(a.kind, a.chunk * pp + r, a.micro)];
      PT_CHECK(n == 0, "schedule of pipeline rank {}: {}{} on chunk {} appears twice", r, kind_letter(a.kind), a.micro,
               a.chunk);
      n = 1;
    }
    PT_CHECK(lists[r].size() == expected, "schedule of pipeline rank {}: {} actions, expected {}", r, lists[r].size(),
             expected);
  }

  // End time of (kind, global stage, micro); -1 = not run yet.
  std::vector<double> done(n_slots, -1.0);
  PipelineSimulation sim;
  sim.start.resize(pp);
  sim.end.resize(pp);
  sim.busy.assign(pp, 0.0);
  std::vector<size_t> next(pp, 0);
  std::vector<double> free_at(pp, 0.0);
  // Each rank runs its list in order; an action starts once its rank is free and its inputs
  // are done. Sweeping the ranks until none can advance gives exactly the in-order execution
  // with blocking receives (sends never block).
  for (bool progressed = true; progressed;) {
    progressed = false;
    for (int r = 0; r < pp; ++r) {
      while (next[r] < lists[r].size()) {
        const Action& a = lists[r][next[r]];
        const int g = a.chunk * pp + r;
        double ready = free_at[r], cost = 0;
        auto need = [&](Action::Kind k, int gs) {
          const double e = done[index(k, gs, a.micro)];
          if (e < 0) return false;
          ready = std::max(ready, e);
          return true;
        };
        bool ok = true;
        switch (a.kind) {
          case Action::F:
            ok = g == 0 || need(Action::F, g - 1);
            cost = f;
            break;
          case Action::B:
            ok = need(Action::F, g) && (g == S - 1 || need(Action::B, g + 1));
            cost = split ? b : b + w;
            break;
          case Action::W:
            ok = need(Action::B, g);
            cost = w;
            break;
        }
        if (!ok) break;
        sim.start[r].push_back(ready);
        sim.end[r].push_back(ready + cost);
        done[index(a.kind, g, a.micro)] = ready + cost;
        free_at[r] = ready + cost;
        sim.busy[r] += cost;
        ++next[r];
        progressed = true;
      }
    }
  }
  std::string stuck;
  for (int r = 0; r < pp; ++r)
    if (next[r] < lists[r].size()) {
      const Action& a = lists[r][next[r]];
      stuck += fmt::format("\n  pipeline rank {} waits at action {}: {}{} on chunk {}", r, next[r],
                           kind_letter(a.kind), a.micro, a.chunk);
    }
  PT_CHECK(stuck.empty(), "pipeline schedule {} (pp = {}, M = {}, v = {}) deadlocks:{}", schedule_name(s.kind), pp, M,
           v, stuck);
  for (int r = 0; r < pp; ++r) sim.makespan = std::max(sim.makespan, free_at[r]);
  return sim;
}

double simulated_bubble(const ScheduleSpec& s, double f, double b, double w) {
  return simulate_schedule(s, make_all_schedules(s), f, b, w).bubble();
}

double theoretical_bubble(const ScheduleSpec& s) {
  validate_schedule_spec(s);
  const double p = s.pp, M = s.micro_batches, v = s.virtual_stages;
  switch (s.kind) {
    case ScheduleKind::gpipe:
    case ScheduleKind::one_f_one_b: return (p - 1) / (M + p - 1);
    case ScheduleKind::interleaved: return (p - 1) / (v * M + p - 1);
    case ScheduleKind::zero_bubble: return simulated_bubble(s);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// Executor

namespace {

using SteadyClock = std::chrono::steady_clock;

double seconds_since(SteadyClock::time_point t0) {
  return std::chrono::duration<double>(SteadyClock::now() - t0).count();
}

struct PendingSend {
  std::unique_ptr<Request> request;
  Tensor tensor;  // kept alive until the request completes
};

}  // namespace

ScheduleStats run_schedule(const ScheduleSpec& s, Stage& stage, Communicator& pp, Timeline* timeline) {
  const auto t_begin = SteadyClock::now();
  PT_CHECK(pp.size() == s.pp, "run_schedule: the {} communicator has {} ranks, the schedule pp = {}", pp.name(),
           pp.size(), s.pp);
  const int rank = pp.rank(), P = s.pp, S = s.pp * s.virtual_stages;
  const std::vector<Action> list = make_schedule(s, rank);
  const bool split = splits_backward(s.kind);
  Timeline* tl = timeline && timeline->recording() ? timeline : nullptr;

  ScheduleStats stats;
  std::vector<PendingSend> sends;
  std::map<int, Tensor> local;  // tag -> tensor handed between chunks of this rank (pp = 1)
  // Shape of each forward output (c, m): the gradient coming back for it has that shape.
  std::map<std::pair<int, int>, Shape> out_shape;

  auto poll_sends = [&] { std::erase_if(sends, [](PendingSend& p) { return p.request->test(); }); };
  // Sends t from local chunk c to global stage `to` (its activation input when !grad, else
  // its output gradient).
  auto send = [&](const Tensor& t, int c, int to, bool grad, int micro) {
    const int tag = pipeline_tag(s, grad, micro, to), dst = to % P;
    if (dst == rank) {  // consecutive global stages on one rank (pp = 1 with v > 1): a copy,
      local[tag] = t.clone();  // like a message (a fresh tensor, never an autograd handle)
      return;
    }
    Timeline::Scope span(tl, fmt::format("send {} m{} c{}", grad ? "grad" : "act", micro, c), "comm");
    sends.push_back({pp.isend(t, dst, tag), t});
  };
  // Receives what enters global stage g of this rank: its activation input, or (grad) the
  // gradient of its output, of shape `shape`.
  auto receive = [&](int g, bool grad, int micro, const Shape& shape) -> Tensor {
    const int tag = pipeline_tag(s, grad, micro, g);
    const int src = (grad ? g + 1 : g - 1) % P;
    if (src == rank) {
      auto it = local.find(tag);
      PT_CHECK(it != local.end(), "pipeline: the local hand-over for tag {} is missing (schedule bug)", tag);
      Tensor t = it->second;
      local.erase(it);
      return t;
    }
    Tensor t = Tensor::empty(shape, stage.activation_dtype(), stage.activation_device());
    Timeline::Scope span(tl, fmt::format("recv {} m{} c{}", grad ? "grad" : "act", micro, g / P), "comm");
    pp.recv(t, src, tag);
    return t;
  };
  auto check_returned = [&](const Tensor& t, const char* what, int c, int m, const Shape* want) {
    PT_CHECK(t.defined(), "pipeline: Stage::{} of chunk {}, micro-batch {} returned an undefined tensor", what, c, m);
    PT_CHECK(t.dtype() == stage.activation_dtype() && (!want || t.shape() == *want),
             "pipeline: Stage::{} of chunk {}, micro-batch {} returned {} {}, expected {} {}", what, c, m,
             shape_str(t.shape()), dtype_name(t.dtype()), want ? shape_str(*want) : "any shape",
             dtype_name(stage.activation_dtype()));
  };
  // Runs one Stage call, counting its time as compute and recording its span.
  auto timed = [&](auto&& fn, std::string name) {
    const auto t0 = SteadyClock::now();
    const double us0 = tl ? tl->now_us() : 0;
    fn();
    stats.compute_s += seconds_since(t0);
    if (tl) tl->add(std::move(name), "compute", us0, tl->now_us());
  };

  for (const Action& a : list) {
    const int g = a.chunk * P + rank, m = a.micro, c = a.chunk;
    switch (a.kind) {
      case Action::F: {
        Tensor in = g > 0 ? receive(g, false, m, stage.input_shape(c)) : Tensor();
        Tensor out;
        timed([&] { out = stage.forward(c, m, in); }, fmt::format("F m{} c{}", m, c));
        in = Tensor();
        if (g < S - 1) {
          check_returned(out, "forward", c, m, nullptr);
          out_shape[{c, m}] = out.shape();
          send(out, c, g + 1, false, m);
        }
        break;
      }
      case Action::B: {
        Tensor grad_out;
        if (g < S - 1) {
          auto it = out_shape.find({c, m});
          PT_CHECK(it != out_shape.end(), "pipeline: B before F for chunk {}, micro-batch {} (schedule bug)", c, m);
          grad_out = receive(g, true, m, it->second);
          out_shape.erase(it);
        }
        Tensor grad_in;
        timed([&] { grad_in = stage.backward(c, m, grad_out, split); }, fmt::format("B m{} c{}", m, c));
        grad_out = Tensor();
        if (g > 0) {
          const Shape want = stage.input_shape(c);
          check_returned(grad_in, "backward", c, m, &want);
          send(grad_in, c, g - 1, true, m);
        }
        break;
      }
      case Action::W:
        timed([&] { stage.backward_weights(c, m); }, fmt::format("W m{} c{}", m, c));
        break;
    }
    poll_sends();
  }
  if (!sends.empty()) {
    Timeline::Scope span(tl, "wait sends", "comm");
    for (PendingSend& p : sends) p.request->wait();
    sends.clear();
  }
  PT_CHECK(local.empty(), "pipeline: {} local hand-overs left unconsumed (schedule bug)", local.size());
  stats.wall_s = seconds_since(t_begin);
  return stats;
}

}  // namespace ptrain::parallel
