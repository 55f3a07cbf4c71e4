// tests/parallel/test_comm_mpi.cpp — MpiCommunicator and the self communicator, 4 ranks.
//
// Every collective on the world and on groups carved out of it (sizes 1, 2, 4, with keys
// that reverse the rank order), in f32/f64/bf16/f16/i32 where the interface allows it;
// point-to-point with tags matched out of order and size mismatches that must throw (and
// consume the message); size-1 groups make no MPI call (counted through PMPI).
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cmath>
#include <numeric>
#include <thread>

#include "parallel/mpi_comm.h"
#include "tests/parallel/mpi_test_util.h"

using namespace ptrain;
using namespace ptrain::parallel;
using ptrain::parallel::testing::members_of;
using ptrain::parallel::testing::world_rank;

// ---- PMPI interception: counts collective calls made through the MPI library ----
namespace {
int g_mpi_collectives = 0;
}
extern "C" {
int MPI_Allreduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Allreduce(s, r, n, t, op, c);
}
int MPI_Iallreduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c, MPI_Request* q) {
  ++g_mpi_collectives;
  return PMPI_Iallreduce(s, r, n, t, op, c, q);
}
int MPI_Allgather(const void* s, int sn, MPI_Datatype st, void* r, int rn, MPI_Datatype rt, MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Allgather(s, sn, st, r, rn, rt, c);
}
int MPI_Reduce_scatter_block(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Reduce_scatter_block(s, r, n, t, op, c);
}
int MPI_Bcast(void* b, int n, MPI_Datatype t, int root, MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Bcast(b, n, t, root, c);
}
int MPI_Barrier(MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Barrier(c);
}
int MPI_Gather(const void* s, int sn, MPI_Datatype st, void* r, int rn, MPI_Datatype rt, int root, MPI_Comm c) {
  ++g_mpi_collectives;
  return PMPI_Gather(s, sn, st, r, rn, rt, root, c);
}
}

namespace {

std::unique_ptr<Communicator> world() { return make_mpi_communicator(MPI_COMM_WORLD, "world"); }

/// x[i] = rank-dependent values: (rank + 1) * (i + 1) / 8.
Tensor ramp(int rank, int64_t n, DType dt) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = float(rank + 1) * float(i + 1) / 8.f;
  return Tensor::from_vector(v, {n}, dt);
}

/// Checks every collective on `c`, whose members (world ranks, group order) are `members`.
void check_group(Communicator& c, const std::vector<int>& members) {
  const int n = static_cast<int>(members.size());
  ASSERT_EQ(c.size(), n);
  const int me = world_rank();
  ASSERT_EQ(members[static_cast<size_t>(c.rank())], me) << "group rank " << c.rank();
  EXPECT_EQ(members_of(c), members);

  // all_reduce sum / max of world ranks.
  std::vector<double> v{double(me), double(me)};
  c.all_reduce(std::span<double>(v.data(), 1), ReduceOp::sum);
  c.all_reduce(std::span<double>(v.data() + 1, 1), ReduceOp::max);
  EXPECT_EQ(v[0], std::accumulate(members.begin(), members.end(), 0.0));
  EXPECT_EQ(v[1], *std::max_element(members.begin(), members.end()));

  // broadcast from the last group rank.
  Tensor b = Tensor::full({3}, double(me), DType::f32);
  c.broadcast(b, n - 1);
  EXPECT_EQ(b.to_double_vector(), std::vector<double>(3, double(members.back())));

  // reduce_scatter: in[j] = me * 10 + j, j < 2n; out = rows [2 rank, 2 rank + 2) summed.
  Tensor in = Tensor::empty({2 * n, 1}, DType::f32);
  for (int j = 0; j < 2 * n; ++j) in.data<float>()[j] = float(me * 10 + j);
  Tensor out = Tensor::zeros({2, 1}, DType::f32);
  c.reduce_scatter(in, out);
  const double msum = std::accumulate(members.begin(), members.end(), 0.0);
  for (int j = 0; j < 2; ++j)
    EXPECT_EQ(out.data<float>()[j], float(msum * 10 + n * (2 * c.rank() + j))) << "row " << j;

  // gather_strings at group rank 0.
  auto strs = c.gather_strings("w" + std::to_string(me), 0);
  if (c.rank() == 0) {
    ASSERT_EQ(strs.size(), size_t(n));
    for (int i = 0; i < n; ++i) EXPECT_EQ(strs[size_t(i)], "w" + std::to_string(members[size_t(i)]));
  } else {
    EXPECT_TRUE(strs.empty());
  }

  // A ring of point-to-point messages inside the group.
  if (n >= 2) {
    const int next = (c.rank() + 1) % n, prev = (c.rank() + n - 1) % n;
    Tensor s = Tensor::full({4}, double(me), DType::f32), r = Tensor::zeros({4}, DType::f32);
    auto req = c.isend(s, next, 5);
    c.recv(r, prev, 5);
    req->wait();
    EXPECT_EQ(r.to_double_vector(), std::vector<double>(4, double(members[size_t(prev)])));
  }
  c.barrier();
}

}  // namespace

TEST(MpiComm, World) {
  auto w = world();
  EXPECT_EQ(w->size(), 4);
  EXPECT_EQ(w->rank(), world_rank());
  EXPECT_EQ(w->name(), "world");
  EXPECT_EQ(mpi_handle(*w), MPI_COMM_WORLD);
  check_group(*w, {0, 1, 2, 3});
}

TEST(MpiComm, AllReduceF32SumAndMax) {
  auto w = world();
  const int r = w->rank();
  Tensor t = ramp(r, 1000, DType::f32);
  w->all_reduce(t);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(t.data<float>()[i], 10.f * float(i + 1) / 8.f) << i;

  // max: element i is largest on rank i % 4.
  Tensor m = Tensor::empty({8, 2}, DType::f32);
  for (int i = 0; i < 16; ++i) m.data<float>()[i] = (i % 4 == r) ? 100.f + float(i) : -float(r);
  w->all_reduce(m, ReduceOp::max);
  for (int i = 0; i < 16; ++i) EXPECT_EQ(m.data<float>()[i], 100.f + float(i)) << i;
}

TEST(MpiComm, AllReduceF64KeepsDoublePrecision) {
  auto w = world();
  // 1 + r * 1e-12: lost in float, kept in double.
  Tensor t = Tensor::from_vector_f64({1.0 + w->rank() * 1e-12, -double(w->rank())}, {2});
  w->all_reduce(t);
  EXPECT_DOUBLE_EQ(t.data<double>()[0], 4.0 + 6e-12);
  EXPECT_NE(t.data<double>()[0], 4.0);
  EXPECT_EQ(t.data<double>()[1], -6.0);
}

TEST(MpiComm, AllReduceLowPrecisionIsRoundedOnce) {
  auto w = world();
  for (DType dt : {DType::bf16, DType::f16}) {
    // rank r holds 1 + r * 2^-7 (on both grids); the sum 4 + 6 * 2^-7 = 4.046875 is not on
    // the bf16 grid at 4 (spacing 2^-5) but is on the f16 grid (spacing 2^-8).
    const float x = 1.f + float(w->rank()) / 128.f;
    Tensor t = Tensor::from_vector({x, x * 3.f}, {2}, dt);
    const float exact = 4.f + 6.f / 128.f;
    w->all_reduce(t);
    const float want0 = dt == DType::bf16 ? round_bf16(exact) : round_f16(exact);
    EXPECT_EQ(t.data<float>()[0], want0) << dtype_name(dt);
    if (dt == DType::bf16) {
      EXPECT_NE(want0, exact);
    }
    // element 1: sum of the stored (rounded) inputs, rounded.
    float sum1 = 0;
    for (int r = 0; r < 4; ++r) {
      const float xi = (1.f + float(r) / 128.f) * 3.f;
      sum1 += dt == DType::bf16 ? round_bf16(xi) : round_f16(xi);
    }
    EXPECT_EQ(t.data<float>()[1], dt == DType::bf16 ? round_bf16(sum1) : round_f16(sum1)) << dtype_name(dt);
  }
}

TEST(MpiComm, AllReduceRejectsI32) {
  auto w = world();
  Tensor t = Tensor::from_vector_i32({1}, {1});
  EXPECT_THROW(w->all_reduce(t), Error);
}

TEST(MpiComm, AllReduceAsync) {
  auto w = world();
  Tensor a = ramp(w->rank(), 4096, DType::f32);
  Tensor b = Tensor::full({3}, double(w->rank()), DType::bf16);
  auto ra = w->all_reduce_async(a);
  auto rb = w->all_reduce_async(b, ReduceOp::max);
  int spins = 0;
  while (!ra->test()) ++spins;
  EXPECT_TRUE(ra->test());
  ra->wait();  // idempotent
  rb->wait();
  rb->wait();
  for (int i = 0; i < 4096; ++i) ASSERT_EQ(a.data<float>()[i], 10.f * float(i + 1) / 8.f) << i;
  EXPECT_EQ(b.to_double_vector(), std::vector<double>(3, 3.0));
}

TEST(MpiComm, AllGather) {
  auto w = world();
  const int r = w->rank();
  for (DType dt : {DType::f32, DType::f64, DType::i32}) {
    Tensor in = Tensor::empty({2, 3}, dt);
    Tensor out = Tensor::zeros({8, 3}, dt);
    for (int i = 0; i < 6; ++i) {
      if (dt == DType::f32) in.data<float>()[i] = float(r * 100 + i);
      if (dt == DType::f64) in.data<double>()[i] = r * 100 + i;
      if (dt == DType::i32) in.data<int32_t>()[i] = r * 100 + i;
    }
    w->all_gather(in, out);
    auto got = out.to_double_vector();
    for (int q = 0; q < 4; ++q)
      for (int i = 0; i < 6; ++i) ASSERT_EQ(got[size_t(q * 6 + i)], q * 100 + i) << dtype_name(dt);
  }
}

TEST(MpiComm, AllGatherAndReduceScatterCheckShapes) {
  auto w = world();
  Tensor in = Tensor::zeros({2, 3});
  Tensor bad = Tensor::zeros({7, 3});
  try {
    w->all_gather(in, bad);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[7, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[2, 3]"), std::string::npos) << e.what();
  }
  Tensor bad_cols = Tensor::zeros({8, 2});
  EXPECT_THROW(w->all_gather(in, bad_cols), Error);
  Tensor bad_dtype = Tensor::zeros({8, 3}, DType::f64);
  EXPECT_THROW(w->all_gather(in, bad_dtype), Error);
  Tensor big = Tensor::zeros({8, 3}), small = Tensor::zeros({3, 3});
  try {
    w->reduce_scatter(big, small);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[8, 3]"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("[3, 3]"), std::string::npos) << e.what();
  }
  w->barrier();
}

TEST(MpiComm, ReduceScatterValues) {
  auto w = world();
  const int r = w->rank();
  // in [8, 2]: in[row][col] = (r + 1) * (row * 2 + col); out = my 2 rows summed over ranks.
  for (DType dt : {DType::f32, DType::f64, DType::bf16}) {
    Tensor in = Tensor::empty({8, 2}, dt);
    std::vector<double> vals(16);
    for (int i = 0; i < 16; ++i) vals[size_t(i)] = (r + 1) * i * (dt == DType::bf16 ? 1.0 + 1.0 / 64 : 1.0);
    if (dt == DType::f64) {
      in = Tensor::from_vector_f64(vals, {8, 2});
    } else {
      in = Tensor::from_vector(std::vector<float>(vals.begin(), vals.end()), {8, 2}, dt);
    }
    Tensor out = Tensor::zeros({2, 2}, dt);
    w->reduce_scatter(in, out);
    auto got = out.to_double_vector();
    for (int j = 0; j < 4; ++j) {
      const int i = r * 4 + j;
      double want = 10.0 * i;
      if (dt == DType::bf16) {
        float s = 0;
        for (int q = 0; q < 4; ++q) s += round_bf16(float((q + 1) * i * (1.0 + 1.0 / 64)));
        want = round_bf16(s);
        EXPECT_EQ(round_bf16(float(got[size_t(j)])), float(got[size_t(j)])) << "not on the bf16 grid";
      }
      EXPECT_EQ(got[size_t(j)], want) << dtype_name(dt) << " element " << j;
    }
  }
}

TEST(MpiComm, BroadcastFromNonZeroRoot) {
  auto w = world();
  const int r = w->rank();
  Tensor f = Tensor::full({5}, r == 2 ? 7.5 : -1.0, DType::f32);
  Tensor i = Tensor::from_vector_i32({r, r * 10}, {2});
  w->broadcast(f, 2);
  w->broadcast(i, 3);
  EXPECT_EQ(f.to_double_vector(), std::vector<double>(5, 7.5));
  EXPECT_EQ(i.data<int32_t>()[0], 3);
  EXPECT_EQ(i.data<int32_t>()[1], 30);
  EXPECT_THROW(w->broadcast(f, 4), Error);
}

TEST(MpiComm, SendRecvMatchesTagsOutOfOrder) {
  auto w = world();
  const int r = w->rank();
  const int peer = r ^ 1;  // pairs (0, 1), (2, 3)
  if (r % 2 == 0) {
    Tensor a = Tensor::full({4}, 1.0 + r, DType::f32);
    Tensor b = Tensor::from_vector_f64({2.0 + r, 3.0 + r}, {2});
    Tensor c = Tensor::from_vector_i32({40 + r}, {1});
    auto ra = w->isend(a, peer, 1);
    auto rb = w->isend(b, peer, 2);
    auto rc = w->isend(c, peer, 3);
    ra->wait();
    rb->wait();
    rc->wait();
  } else {
    Tensor a = Tensor::zeros({4}), b = Tensor::zeros({2}, DType::f64), c = Tensor::zeros({1}, DType::i32);
    auto rc = w->irecv(c, peer, 3);  // last sent, first posted
    w->recv(b, peer, 2);
    w->recv(a, peer, 1);
    while (!rc->test()) {
    }
    EXPECT_EQ(a.to_double_vector(), std::vector<double>(4, 1.0 + peer));
    EXPECT_EQ(b.to_double_vector(), (std::vector<double>{2.0 + peer, 3.0 + peer}));
    EXPECT_EQ(c.data<int32_t>()[0], 40 + peer);
  }
  EXPECT_THROW(w->isend(Tensor::zeros({1}), r, 0), Error);  // to itself
  EXPECT_THROW(w->isend(Tensor::zeros({1}), peer, -1), Error);
  w->barrier();
}

TEST(MpiComm, LargeMessagesBothWays) {
  // 4 MiB each way at once: the rendezvous protocol (no single-copy mechanism in containers).
  auto w = world();
  const int r = w->rank(), peer = r ^ 1;
  const int64_t n = 1 << 20;
  Tensor s = Tensor::empty({n}), got = Tensor::zeros({n});
  for (int64_t i = 0; i < n; ++i) s.data<float>()[i] = float(r * n + i);
  auto req = w->isend(s, peer, 21);
  auto in = w->irecv(got, peer, 21);
  in->wait();
  req->wait();
  for (int64_t i = 0; i < n; i += 4099) ASSERT_EQ(got.data<float>()[i], float(peer * n + i)) << i;
  ASSERT_EQ(got.data<float>()[n - 1], float(peer * n + n - 1));
  Tensor big = Tensor::full({n}, double(r + 1));
  w->all_reduce(big);
  EXPECT_EQ(big.data<float>()[0], 10.f);
  EXPECT_EQ(big.data<float>()[n - 1], 10.f);
}

/// After a barrier, nothing may be left to receive on `c` (a mismatched message was consumed).
void expect_no_pending_message(Communicator& c) {
  c.barrier();
  int flag = 1;
  MPI_Status st;
  MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, mpi_handle(c), &flag, &st);
  EXPECT_FALSE(flag) << "unmatched message from " << st.MPI_SOURCE << " tag " << st.MPI_TAG;
  c.barrier();
}

TEST(MpiComm, RecvSizeMismatchThrowsAndConsumesTheMessage) {
  auto w = world();
  const int r = w->rank();
  const int peer = r ^ 1;
  // Even ranks send 5 floats (tag 7), then 3 floats (tag 8), then 4 floats (tag 9) ...
  if (r % 2 == 0) {
    Tensor five = Tensor::full({5}, 1.0), three = Tensor::full({3}, 2.0), four = Tensor::full({4}, 3.0);
    auto a = w->isend(five, peer, 7);
    auto b = w->isend(three, peer, 8);
    auto c = w->isend(four, peer, 9);
    a->wait();
    b->wait();
    c->wait();
  } else {
    // ... odd ranks expect 4 floats each time: the first two are errors, the third arrives.
    Tensor t = Tensor::zeros({4});
    try {
      w->recv(t, peer, 7);
      ADD_FAILURE() << "no error for a larger message";
    } catch (const Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("from rank " + std::to_string(peer)), std::string::npos) << m;
      EXPECT_NE(m.find("tag 7"), std::string::npos) << m;
      EXPECT_NE(m.find("expected 16 bytes"), std::string::npos) << m;
      EXPECT_NE(m.find("got 20 bytes"), std::string::npos) << m;
      EXPECT_NE(m.find("'world'"), std::string::npos) << m;
    }
    try {
      w->recv(t, peer, 8);
      ADD_FAILURE() << "no error for a smaller message";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("got 12 bytes"), std::string::npos) << e.what();
    }
    w->recv(t, peer, 9);
    EXPECT_EQ(t.to_double_vector(), std::vector<double>(4, 3.0));
  }
  expect_no_pending_message(*w);
}

TEST(MpiComm, IrecvSizeMismatchThrows) {
  auto w = world();
  const int r = w->rank();
  const int peer = r ^ 1;
  if (r % 2 == 0) {
    Tensor five = Tensor::full({5}, 1.0), three = Tensor::full({3}, 2.0);
    auto a = w->isend(five, peer, 11);
    auto b = w->isend(three, peer, 12);
    a->wait();
    b->wait();
  } else {
    Tensor t = Tensor::zeros({4});
    auto big = w->irecv(t, peer, 11);
    try {
      big->wait();
      ADD_FAILURE() << "no error for a larger message";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("tag 11"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("expected 16 bytes"), std::string::npos) << e.what();
    }
    Tensor u = Tensor::zeros({4});
    auto small = w->irecv(u, peer, 12);
    try {
      small->wait();
      ADD_FAILURE() << "no error for a smaller message";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("got 12 bytes"), std::string::npos) << e.what();
    }
  }
  expect_no_pending_message(*w);
}

TEST(MpiComm, GatherStrings) {
  auto w = world();
  const int r = w->rank();
  std::string s(size_t(r * 3), char('a' + r));
  if (r == 2) s = std::string("x\0y", 3);  // embedded NUL
  auto all = w->gather_strings(s, 1);
  if (r == 1) {
    ASSERT_EQ(all.size(), 4u);
    EXPECT_EQ(all[0], "");
    EXPECT_EQ(all[1], "bbb");
    EXPECT_EQ(all[2], std::string("x\0y", 3));
    EXPECT_EQ(all[3], "ddddddddd");
  } else {
    EXPECT_TRUE(all.empty());
  }
}

TEST(MpiComm, BarrierWaitsForTheLastRank) {
  auto w = world();
  w->barrier();
  const auto t0 = std::chrono::steady_clock::now();
  if (w->rank() == 3) std::this_thread::sleep_for(std::chrono::milliseconds(300));
  w->barrier();
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GT(ms, 150.0);  // every rank waited (most of) rank 3's sleep
}

TEST(MpiComm, SplitSizes421) {
  auto w = world();
  const int r = w->rank();
  // size 4, rank order reversed by key.
  auto all = split_communicator(*w, 0, 3 - r, "rev");
  EXPECT_EQ(all->name(), "rev");
  check_group(*all, {3, 2, 1, 0});
  // size 2: {0, 1} and {2, 3}, reversed inside.
  auto pairs = split_communicator(*w, r / 2, -r, "pairs");
  check_group(*pairs, r < 2 ? std::vector<int>{1, 0} : std::vector<int>{3, 2});
  // size 2, strided: {0, 2} and {1, 3}; then split again.
  auto strided = split_communicator(*w, r % 2, r, "strided");
  check_group(*strided, r % 2 == 0 ? std::vector<int>{0, 2} : std::vector<int>{1, 3});
  auto single = split_communicator(*strided, strided->rank(), 0, "single");
  check_group(*single, {r});
  // messages on one group do not match receives on another (separate MPI contexts).
  if (r == 0) {
    Tensor x = Tensor::full({1}, 1.0), y = Tensor::full({1}, 2.0);
    auto a = pairs->isend(x, pairs->rank() ^ 1, 0);  // to rank 1 on `pairs`
    auto b = w->isend(y, 1, 0);                      // to rank 1 on world
    a->wait();
    b->wait();
  } else if (r == 1) {
    Tensor on_world = Tensor::zeros({1}), on_pairs = Tensor::zeros({1});
    w->recv(on_world, 0, 0);
    pairs->recv(on_pairs, pairs->rank() ^ 1, 0);
    EXPECT_EQ(on_world.data<float>()[0], 2.f);
    EXPECT_EQ(on_pairs.data<float>()[0], 1.f);
  }
  w->barrier();
}

TEST(MpiComm, SizeOneGroupsMakeNoMpiCall) {
  auto w = world();
  auto single = split_communicator(*w, w->rank(), 0, "one");
  auto self = make_self_communicator("self");
  EXPECT_EQ(mpi_handle(*self), MPI_COMM_NULL);
  EXPECT_NE(mpi_handle(*single), MPI_COMM_NULL);
  for (Communicator* c : {single.get(), self.get()}) {
    SCOPED_TRACE(c->name());
    ASSERT_EQ(c->size(), 1);
    ASSERT_EQ(c->rank(), 0);
    const int before = g_mpi_collectives;
    Tensor t = Tensor::full({3}, 2.5, DType::bf16);
    c->all_reduce(t);
    c->all_reduce(t, ReduceOp::max);
    c->all_reduce_async(t)->wait();
    std::vector<double> v{1.5};
    c->all_reduce(std::span<double>(v));
    c->broadcast(t, 0);
    c->barrier();
    EXPECT_EQ(t.to_double_vector(), std::vector<double>(3, 2.5));
    EXPECT_EQ(v[0], 1.5);
    Tensor in = Tensor::from_vector({1, 2, 3, 4}, {2, 2}), out = Tensor::zeros({2, 2});
    c->all_gather(in, out);
    EXPECT_EQ(out.to_double_vector(), (std::vector<double>{1, 2, 3, 4}));
    Tensor out2 = Tensor::zeros({2, 2});
    c->reduce_scatter(in, out2);
    EXPECT_EQ(out2.to_double_vector(), (std::vector<double>{1, 2, 3, 4}));
    EXPECT_EQ(c->gather_strings("abc", 0), std::vector<std::string>{"abc"});
    EXPECT_EQ(g_mpi_collectives, before) << "a size-1 group called MPI";
    Tensor bad = Tensor::zeros({3, 2});
    EXPECT_THROW(c->all_gather(in, bad), Error);
    EXPECT_THROW(c->isend(in, 0, 0), Error);
    EXPECT_THROW(c->recv(out, 0, 0), Error);
    EXPECT_THROW(c->broadcast(t, 1), Error);
  }
  // The counter itself works: a world all_reduce is counted.
  const int before = g_mpi_collectives;
  w->barrier();
  EXPECT_EQ(g_mpi_collectives, before + 1);
  // A self communicator splits into a self communicator.
  auto sub = split_communicator(*self, 0, 0, "sub");
  EXPECT_EQ(sub->size(), 1);
  EXPECT_EQ(sub->name(), "sub");
  EXPECT_EQ(mpi_handle(*sub), MPI_COMM_NULL);
}

TEST(MpiComm, MpiCheckNamesGroupAndError) {
  try {
    MPI_CHECK("tp", MPI_ERR_COUNT);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("group 'tp'"), std::string::npos) << m;
    EXPECT_NE(m.find("count"), std::string::npos) << m;  // MPI_Error_string: "MPI_ERR_COUNT: invalid count argument"
    EXPECT_NE(m.find("[rank " + std::to_string(world_rank()) + "]"), std::string::npos) << m;
  }
}
