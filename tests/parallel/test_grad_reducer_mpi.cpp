// tests/parallel/test_grad_reducer_mpi.cpp — GradReducer over 4 ranks (the world) and over dp
// groups of 2 carved out of it.
//
// Values are chosen so every sum is exact in the wire type whatever MPI's summation order
// (small dyadic numbers), so results are compared bit for bit with the sum computed here;
// bf16/f16 values are integers on their grid whose 4-way sums need more bits than the
// format has, so rounding on store is exercised (expected: the exact sum rounded once).
// MPI_Iallreduce is intercepted (PMPI) to see independently when buckets really start.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "parallel/grad_reducer.h"
#include "parallel/mpi_comm.h"
#include "tests/parallel/mpi_test_util.h"

using namespace ptrain;
using namespace ptrain::parallel;
using ptrain::parallel::testing::members_of;
using ptrain::parallel::testing::world_rank;

namespace {
int g_iallreduce_calls = 0;
}
extern "C" int MPI_Iallreduce(const void* s, void* r, int n, MPI_Datatype t, MPI_Op op, MPI_Comm c, MPI_Request* q) {
  ++g_iallreduce_calls;
  return PMPI_Iallreduce(s, r, n, t, op, c, q);
}

namespace {

std::unique_ptr<Communicator> world() { return make_mpi_communicator(MPI_COMM_WORLD, "world"); }

/// Value of element j of gradient i on world rank r at step s: exact in the dtype, and the
/// sum over any 4 ranks is exact in f32/f64 (bf16/f16: exact in f32, then rounded once).
double value(DType t, size_t i, int64_t j, int r, int s) {
  const auto k = static_cast<int64_t>(i) * 7 + j * 3 + r * 5 + s * 11;
  switch (t) {
    case DType::f32: return static_cast<double>(k % 41 - 20) * 0.125;
    case DType::f64: return static_cast<double>(k % 97 - 48) * 0x1p-20;
    case DType::bf16: return (j % 2 ? -1.0 : 1.0) * static_cast<double>(128 + k % 128);    // 8 significant bits
    case DType::f16: return (j % 2 ? -1.0 : 1.0) * static_cast<double>(1024 + k % 1024);  // 11 significant bits
    default: return 0;
  }
}

void fill(Tensor& g, size_t i, int r, int s) {
  for (int64_t j = 0; j < g.numel(); ++j) {
    const double v = value(g.dtype(), i, j, r, s);
    if (g.dtype() == DType::f64)
      g.data<double>()[j] = v;
    else
      g.data<float>()[j] = static_cast<float>(v);
  }
}

/// The expected reduced gradient i: the sum over `ranks` (exact), rounded once to the dtype.
std::vector<double> expected(DType t, size_t i, int64_t n, const std::vector<int>& ranks, int s) {
  std::vector<double> out(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) {
    double sum = 0;
    for (int r : ranks) sum += value(t, i, j, r, s);
    if (t == DType::bf16) sum = round_bf16(static_cast<float>(sum));
    if (t == DType::f16) sum = round_f16(static_cast<float>(sum));
    out[static_cast<size_t>(j)] = sum;
  }
  return out;
}

struct Spec {
  Shape shape;
  DType dtype;
};

/// Assorted shapes and dtypes; the [64, 33] f32 tensor (8448 bytes) is larger than the bucket
/// limits used below (reduced in place, alone).
const std::vector<Spec> kSpecs = {{{3, 5}, DType::f32},  {{7}, DType::bf16},   {{64, 33}, DType::f32},
                                  {{10}, DType::f16},    {{4, 3}, DType::f64}, {{2}, DType::f64},
                                  {{1}, DType::f32},     {{2, 2, 2}, DType::bf16}, {{40}, DType::f32},
                                  {{9}, DType::bf16}};

std::vector<Tensor> make_grads(const std::vector<Spec>& specs, int r, int s) {
  std::vector<Tensor> g;
  for (size_t i = 0; i < specs.size(); ++i) {
    g.push_back(Tensor::zeros(specs[i].shape, specs[i].dtype));
    fill(g.back(), i, r, s);
  }
  return g;
}

/// Checks every gradient bit for bit against the exact sum over `ranks`; returns how many
/// low-precision elements were changed by rounding (so a test can show it exercised it).
int check_sums(const std::vector<Tensor>& g, const std::vector<int>& ranks, int s, const std::string& what) {
  int rounded = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const auto want = expected(g[i].dtype(), i, g[i].numel(), ranks, s);
    const auto got = g[i].to_double_vector();
    for (size_t j = 0; j < want.size(); ++j) {
      EXPECT_EQ(got[j], want[j]) << what << ": gradient " << i << " (" << dtype_name(g[i].dtype()) << ") element "
                                 << j;
      if (is_low_precision(g[i].dtype())) {
        double exact = 0;
        for (int r : ranks) exact += value(g[i].dtype(), i, static_cast<int64_t>(j), r, s);
        rounded += exact != want[j];
      }
    }
  }
  return rounded;
}

// Backward order (reverse list): every bucket starts inside mark_ready, once per bucket
// (MPI_Iallreduce counted), and the sums are exact, bf16/f16 rounded once on store.
TEST(GradReducerMpi, SumsOverFourRanksWithBucketsStartedDuringBackward) {
  auto w = world();
  const int r = world_rank();
  auto g = make_grads(kSpecs, r, 0);
  GradReducer red(g, *w, 512);
  ASSERT_GE(red.num_buckets(), 4u);
  red.begin_step();
  const int calls0 = g_iallreduce_calls;
  size_t started_after_first_bucket = 0;
  for (size_t i = g.size(); i-- > 0;) {
    red.mark_ready(i);
    if (i == red.bucket(0).back()) started_after_first_bucket = red.buckets_started_before_finish();
  }
  EXPECT_EQ(started_after_first_bucket, 1u) << "bucket 0 starts as soon as its last member is ready";
  EXPECT_EQ(red.buckets_started_before_finish(), red.num_buckets());
  EXPECT_EQ(g_iallreduce_calls - calls0, static_cast<int>(red.num_buckets())) << "one all-reduce per bucket, all "
                                                                                  "started before finish()";
  red.finish();
  EXPECT_EQ(g_iallreduce_calls - calls0, static_cast<int>(red.num_buckets())) << "finish() started nothing more";
  const int rounded = check_sums(g, {0, 1, 2, 3}, 0, "world");
  EXPECT_GT(rounded, 10) << "the bf16/f16 values should need rounding after the sum";
}

// mark_ready in an arbitrary order (the same on every rank): a bucket starts only when it and
// every earlier bucket are complete; gradients never marked are reduced by finish() as they are.
TEST(GradReducerMpi, ArbitraryOrderStartsBucketsEarlyAndFinishReducesTheUnmarked) {
  auto w = world();
  const int r = world_rank();
  auto g = make_grads(kSpecs, r, 1);
  GradReducer red(g, *w, 64);
  const size_t nb = red.num_buckets();
  ASSERT_GE(nb, 6u);

  red.begin_step();
  const int calls0 = g_iallreduce_calls;
  // Bucket 1 complete first: nothing may start (bucket 0 is not).
  for (size_t i : red.bucket(1)) red.mark_ready(i);
  EXPECT_EQ(red.buckets_started_before_finish(), 0u) << "bucket 1 started before bucket 0";
  EXPECT_EQ(g_iallreduce_calls, calls0);
  // Then bucket 0: both start.
  for (size_t i : red.bucket(0)) red.mark_ready(i);
  EXPECT_EQ(red.buckets_started_before_finish(), 2u);
  EXPECT_EQ(g_iallreduce_calls - calls0, 2);
  // The rest in a shuffled order (fixed seed: the same on every rank), leaving out one member
  // of bucket `hole` and the whole last bucket.
  const size_t hole = nb / 2;
  std::vector<size_t> rest;
  for (size_t b = 2; b + 1 < nb; ++b)
    for (size_t m = 0; m < red.bucket(b).size(); ++m)
      if (!(b == hole && m == 0)) rest.push_back(red.bucket(b)[m]);
  uint64_t state = 12345;
  for (size_t k = rest.size(); k > 1; --k) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    std::swap(rest[k - 1], rest[(state >> 33) % k]);
  }
  for (size_t i : rest) red.mark_ready(i);
  EXPECT_EQ(red.buckets_started_before_finish(), hole) << "buckets before the incomplete one start early";
  EXPECT_EQ(g_iallreduce_calls - calls0, static_cast<int>(hole));
  red.finish();
  EXPECT_EQ(red.buckets_started_before_finish(), hole);
  EXPECT_EQ(g_iallreduce_calls - calls0, static_cast<int>(nb));
  check_sums(g, {0, 1, 2, 3}, 1, "world, arbitrary order");
}

// A dp group of 2 ({0, 2} and {1, 3}): two steps on the same buffers (refilled in place),
// the second marking only every other gradient, then a third with finish() alone.
TEST(GradReducerMpi, TwoStepsOnADataParallelGroupOfTwo) {
  auto w = world();
  const int r = world_rank();
  auto dp = split_communicator(*w, r % 2, r, "dp");
  ASSERT_EQ(dp->size(), 2);
  const std::vector<int> ranks = members_of(*dp);
  ASSERT_EQ(ranks, (std::vector<int>{r % 2, r % 2 + 2}));

  auto g = make_grads(kSpecs, r, 2);
  GradReducer red(g, *dp, 256);
  red.begin_step();
  for (size_t i = g.size(); i-- > 0;) red.mark_ready(i);
  EXPECT_EQ(red.buckets_started_before_finish(), red.num_buckets());
  red.finish();
  check_sums(g, ranks, 2, "dp step 1");

  for (size_t i = 0; i < g.size(); ++i) fill(g[i], i, r, 3);
  red.begin_step();
  for (size_t i = g.size(); i-- > 0;)
    if (i % 2 == 0) red.mark_ready(i);
  red.finish();
  check_sums(g, ranks, 3, "dp step 2");

  for (size_t i = 0; i < g.size(); ++i) fill(g[i], i, r, 4);
  red.finish();
  EXPECT_EQ(red.buckets_started_before_finish(), 0u);
  check_sums(g, ranks, 4, "dp step 3 (finish only)");
}

// Random (inexact) f32 values: overlapped (every bucket started by mark_ready) and
// finish-only reductions give the same bits, within 1e-6 of the double-precision sum.
TEST(GradReducerMpi, DeterministicWhateverTheOverlap) {
  auto w = world();
  const int r = world_rank();
  const std::vector<int64_t> sizes = {100, 3, 700, 50, 1, 257};
  auto val = [](size_t i, int64_t j, int rank) {
    uint64_t x = (i * 1000003ull + static_cast<uint64_t>(j)) * 2654435761ull + static_cast<uint64_t>(rank) * 97ull;
    x ^= x >> 13;
    x *= 0x5bd1e995ull;
    x ^= x >> 15;
    return static_cast<float>(static_cast<double>(x % 2000001) / 1000000.0 - 1.0) * 3.1f;
  };
  auto make = [&] {
    std::vector<Tensor> g;
    for (size_t i = 0; i < sizes.size(); ++i) {
      g.push_back(Tensor::empty({sizes[i]}, DType::f32));
      for (int64_t j = 0; j < sizes[i]; ++j) g.back().data<float>()[j] = val(i, j, r);
    }
    return g;
  };
  auto a = make(), b = make();
  GradReducer ra(a, *w, 1024), rb(b, *w, 1024);
  ra.begin_step();
  for (size_t i = a.size(); i-- > 0;) ra.mark_ready(i);
  EXPECT_EQ(ra.buckets_started_before_finish(), ra.num_buckets());
  ra.finish();
  rb.finish();
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(std::memcmp(a[i].raw(), b[i].raw(), a[i].nbytes()), 0) << "gradient " << i;
    for (int64_t j = 0; j < sizes[i]; ++j) {
      double want = 0;
      for (int q = 0; q < 4; ++q) want += static_cast<double>(val(i, j, q));
      EXPECT_NEAR(a[i].data<float>()[j], want, 1e-6 * 12.4) << "gradient " << i << " element " << j;
    }
  }
}

// Ranks that pass different lists (one shape differs on rank 0) or bucket sizes are refused
// on every rank, before any gradient is touched.
TEST(GradReducerMpi, MismatchedListsAreRefusedOnEveryRank) {
  auto w = world();
  const int r = world_rank();
  std::vector<Tensor> g = {Tensor::zeros({r == 0 ? 5 : 4}), Tensor::zeros({3})};
  try {
    GradReducer red(g, *w);
    ADD_FAILURE() << "a list that differs on rank 0 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("different gradient lists"), std::string::npos) << e.what();
  }
  std::vector<Tensor> h = {Tensor::zeros({4}), Tensor::zeros({3})};
  EXPECT_THROW(GradReducer(h, *w, r == 3 ? 1024 : 2048), Error) << "bucket sizes differ on rank 3";
  GradReducer ok(h, *w, 2048);  // and a matching list goes through
  EXPECT_EQ(ok.num_buckets(), 1u);
}

}  // namespace
