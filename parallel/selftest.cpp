// parallel/selftest.cpp — see selftest.h.
#include "parallel/selftest.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>

#include <fmt/format.h>

#include "core/error.h"

namespace ptrain::parallel {

namespace {

using Clock = std::chrono::steady_clock;

float pattern(int rank, int64_t k) { return static_cast<float>(((rank + 1) * 131 + 7 * k) % 251) - 125.0f; }

Tensor make(Device dev, int64_t n, int rank) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) v[static_cast<size_t>(k)] = pattern(rank, k);
  Tensor t = Tensor::from_vector(v, {n});
  return dev == Device::cpu ? t : t.to_device(dev);
}

std::vector<float> fetch(const Tensor& t) {
  const Tensor h = t.device() == Device::cpu ? t : t.to_device(Device::cpu);
  return std::vector<float>(h.data<float>(), h.data<float>() + h.numel());
}

/// Requests given up on (a message that never came): never destroyed, so never waited for.
std::vector<std::unique_ptr<Request>>& abandoned() {
  static auto* v = new std::vector<std::unique_ptr<Request>>();
  return *v;
}

/// Waits for `r` until the deadline; false (and the request abandoned) when it did not complete.
bool wait_until(std::unique_ptr<Request>& r, Clock::time_point deadline) {
  while (!r->test()) {
    if (Clock::now() > deadline) {
      abandoned().push_back(std::move(r));
      return false;
    }
    std::this_thread::yield();  // MPI moves a large message only inside its calls: poll, do not sleep
  }
  return true;
}

/// The first element that differs, as a report ("" when equal). `src(k)` names the rank the
/// element k came from (-1: a reduction over every rank).
template <class Src>
std::string compare(const std::vector<float>& got, const std::vector<float>& want, Src src) {
  if (got.size() != want.size()) return fmt::format("{} elements, expected {}", got.size(), want.size());
  for (size_t k = 0; k < got.size(); ++k)
    if (std::memcmp(&got[k], &want[k], sizeof(float)) != 0) {
      const int s = src(static_cast<int64_t>(k));
      return fmt::format("element {}{}: got {}, expected {}", k, s >= 0 ? fmt::format(" (from rank {})", s) : "",
                         got[k], want[k]);
    }
  return "";
}

/// Agrees on one check: every rank learns which ranks failed; rank 0 gets their reports.
void agree(Communicator& c, CollectiveCheck& chk, const std::string& mine, double seconds) {
  const int P = c.size(), r = c.rank();
  std::vector<double> v(static_cast<size_t>(P) + 1, 0.0);
  v[static_cast<size_t>(r)] = mine.empty() ? 0.0 : 1.0;
  c.all_reduce(std::span<double>(v.data(), static_cast<size_t>(P)), ReduceOp::sum);
  double slowest = seconds;
  c.all_reduce(std::span<double>(&slowest, 1), ReduceOp::max);
  chk.seconds = slowest;
  bool any = false;
  for (int q = 0; q < P; ++q) any = any || v[static_cast<size_t>(q)] != 0.0;
  chk.ok = !any;
  if (!any) return;
  const auto reports = c.gather_strings(mine, 0);
  if (r != 0) return;
  std::string d;
  for (int q = 0; q < P; ++q) {
    if (reports[static_cast<size_t>(q)].empty()) continue;
    d += fmt::format("{}rank {}: {}", d.empty() ? "" : "; ", q, reports[static_cast<size_t>(q)]);
  }
  chk.detail = d;
}

}  // namespace

double CollectiveCheck::bus_gbps(int P) const {
  const double f = collective.rfind("all_reduce", 0) == 0 ? 2.0 * (P - 1) / P
                   : collective == "all_gather" || collective == "reduce_scatter" ? static_cast<double>(P - 1)
                                                                                  : 1.0;
  return alg_gbps() * f;
}

std::vector<CollectiveCheck> check_collectives(Communicator& c, Device dev, int64_t n, int iters, double timeout_s) {
  PT_CHECK(n >= 1 && iters >= 1, "check_collectives: {} elements, {} iterations", n, iters);
  const int P = c.size(), r = c.rank();
  std::vector<CollectiveCheck> out;
  const int64_t bytes = n * 4;
  // runs `call` `iters` times timed (after one untimed call when iters > 1), checking each
  // result; every rank makes every call whatever it finds (the collectives must match up)
  const int warm = iters > 1 ? 1 : 0;
  auto timed = [&](const std::string& name, auto&& setup, auto&& call, auto&& check) {
    CollectiveCheck chk;
    chk.collective = name;
    chk.bytes = bytes;
    std::string report;
    double secs = 0;
    for (int it = 0; it < iters + warm; ++it) {
      setup();
      const auto t0 = Clock::now();
      std::string e = call();
      const double dt = std::chrono::duration<double>(Clock::now() - t0).count();
      if (it >= warm) secs += dt;
      if (e.empty()) e = check();
      if (report.empty()) report = e;
    }
    agree(c, chk, report, secs / iters);
    out.push_back(chk);
  };

  std::vector<float> sum(static_cast<size_t>(n), 0.0f), mx(static_cast<size_t>(n), -1e30f);
  for (int q = 0; q < P; ++q)
    for (int64_t k = 0; k < n; ++k) {
      sum[static_cast<size_t>(k)] += pattern(q, k);
      mx[static_cast<size_t>(k)] = std::max(mx[static_cast<size_t>(k)], pattern(q, k));
    }
  auto all = [](int64_t) { return -1; };
  Tensor t;
  auto fresh = [&] { t = make(dev, n, r); };
  timed(
      "all_reduce(sum)", fresh,
      [&] {
        c.all_reduce(t, ReduceOp::sum);
        return std::string();
      },
      [&] { return compare(fetch(t), sum, all); });
  timed(
      "all_reduce(max)", fresh,
      [&] {
        c.all_reduce(t, ReduceOp::max);
        return std::string();
      },
      [&] { return compare(fetch(t), mx, all); });
  timed(
      "all_reduce_async(sum)", fresh,
      [&] {
        auto q = c.all_reduce_async(t, ReduceOp::sum);
        q->wait();
        return std::string();
      },
      [&] { return compare(fetch(t), sum, all); });
  {
    Tensor g;
    std::vector<float> want(static_cast<size_t>(n * P));
    for (int q = 0; q < P; ++q)
      for (int64_t k = 0; k < n; ++k) want[static_cast<size_t>(q * n + k)] = pattern(q, k);
    timed(
        "all_gather",
        [&] {
          fresh();
          g = Tensor::zeros({n * P}, DType::f32, dev);
        },
        [&] {
          c.all_gather(t, g);
          return std::string();
        },
        [&] { return compare(fetch(g), want, [&](int64_t k) { return static_cast<int>(k / n); }); });
  }
  {
    Tensor big, small;
    std::vector<float> want(static_cast<size_t>(n), 0.0f);
    for (int q = 0; q < P; ++q)
      for (int64_t k = 0; k < n; ++k) want[static_cast<size_t>(k)] += pattern(q, r * n + k);
    timed(
        "reduce_scatter",
        [&] {
          big = make(dev, n * P, r);
          small = Tensor::zeros({n}, DType::f32, dev);
        },
        [&] {
          c.reduce_scatter(big, small);
          return std::string();
        },
        [&] { return compare(fetch(small), want, all); });
  }
  for (int root : {0, P - 1}) {
    if (root == 0 && P == 1) continue;
    std::vector<float> want(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) want[static_cast<size_t>(k)] = pattern(root, k);
    timed(
        fmt::format("broadcast(root {})", root), fresh,
        [&] {
          c.broadcast(t, root);
          return std::string();
        },
        [&] { return compare(fetch(t), want, [&](int64_t) { return root; }); });
  }
  if (P > 1) {
    const int to = (r + 1) % P, from = (r + P - 1) % P;
    std::vector<float> want(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) want[static_cast<size_t>(k)] = pattern(from, k);
    Tensor in;
    // a fresh tag per ring message for the life of the process, agreed over the group (the
    // largest counter: ranks of one process may have tested other groups in between), so a
    // request abandoned by an earlier failure cannot match it
    static int next_tag = 0;
    double agreed = next_tag;
    c.all_reduce(std::span<double>(&agreed, 1), ReduceOp::max);
    next_tag = static_cast<int>(agreed);
    timed(
        "ring isend/irecv",
        [&] {
          fresh();
          in = Tensor::zeros({n}, DType::f32, dev);
        },
        [&]() -> std::string {
          const auto deadline =
              Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
          const int tag = 20000 + next_tag;
          next_tag = (next_tag + 1) % 10000;
          auto rq = c.irecv(in, from, tag);
          auto sq = c.isend(t, to, tag);
          std::string e;
          if (!wait_until(rq, deadline)) e = fmt::format("no message from rank {} within {} s", from, timeout_s);
          if (!wait_until(sq, deadline))
            e +=
                fmt::format("{}the send to rank {} did not complete within {} s", e.empty() ? "" : "; ", to, timeout_s);
          return e;
        },
        [&] { return compare(fetch(in), want, [&](int64_t) { return from; }); });
  }
  return out;
}

void self_test(Communicator& c, Device dev, double timeout_s) {
  if (c.size() == 1) return;
  const auto checks = check_collectives(c, dev, 1031, 1, timeout_s);  // 1031: no power of two
  for (const CollectiveCheck& chk : checks) {
    if (chk.ok) continue;
    throw UserError(fmt::format(
        "communicator self-test failed on group '{}' ({} ranks, {} tensors): {} returned wrong data or did not "
        "complete{}. HINT: on GeForce cards over PCIe keep GPU peer-to-peer off (NCCL_P2P_DISABLE=1); check the "
        "ranks named above, their GPUs and links; parallel.selftest: false skips this check (not advised)",
        c.name(), c.size(), device_name(dev), chk.collective,
        chk.detail.empty() ? " (rank 0 names the ranks)" : ": " + chk.detail));
  }
}

}  // namespace ptrain::parallel
