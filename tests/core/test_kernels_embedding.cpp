// tests/core/test_kernels_embedding.cpp — embedding lookup and gradient (core/cpu/embedding.cpp).
//
// Forward copies rows exactly; backward accumulates repeated ids in token order (checked
// bitwise against a serial loop), matches finite differences in double, and is bit-identical
// for 1 and 3 OMP threads on a size that takes the parallel path.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdint>
#include <vector>

#include "core/cpu/kernels.h"
#include "tests/core/gradcheck.h"

namespace ptrain::cpu {
namespace {

using ptrain::testing::dot;
using ptrain::testing::expect_gradients_match;
using ptrain::testing::random_vector;

template <class T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

struct ThreadGuard {
  int saved = omp_get_max_threads();
  ~ThreadGuard() { omp_set_num_threads(saved); }
};

/// dtable[ids[i], :] += dout[i, :] for i = 0, 1, ... (the order the kernel must reproduce).
template <class T>
void serial_backward(const std::vector<int32_t>& ids, const std::vector<T>& dout, std::vector<T>& dtable, int64_t C) {
  for (size_t i = 0; i < ids.size(); ++i)
    for (int64_t j = 0; j < C; ++j) dtable[ids[i] * C + j] += dout[i * C + j];
}

TEST(Embedding, ForwardCopiesRows) {
  const int64_t V = 9, C = 5;
  const std::vector<int32_t> ids = {3, 0, 8, 3, 3, 1, 7};
  const int64_t n = static_cast<int64_t>(ids.size());
  const auto table = cast<float>(random_vector(V * C, 1));
  std::vector<float> out(n * C, 42.0f);
  embedding_forward<float>(ids.data(), table.data(), out.data(), n, C);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < C; ++j) EXPECT_EQ(out[i * C + j], table[ids[i] * C + j]) << i << "," << j;
}

TEST(Embedding, BackwardRepeatedIdsAccumulateInOrder) {
  const int64_t V = 9, C = 5;
  const std::vector<int32_t> ids = {3, 0, 8, 3, 3, 1, 7, 0};
  const int64_t n = static_cast<int64_t>(ids.size());
  const auto dout = cast<float>(random_vector(n * C, 2));
  auto dtable = cast<float>(random_vector(V * C, 3));  // accumulate on top of existing values
  auto expect = dtable;
  serial_backward(ids, dout, expect, C);
  embedding_backward<float>(ids.data(), dout.data(), dtable.data(), n, C);
  EXPECT_EQ(dtable, expect);
  // Rows of ids never used are untouched; row 3 got three contributions.
  const auto before = cast<float>(random_vector(V * C, 3));
  for (int64_t j = 0; j < C; ++j) {
    EXPECT_EQ(dtable[2 * C + j], before[2 * C + j]);
    EXPECT_EQ(dtable[3 * C + j], ((before[3 * C + j] + dout[0 * C + j]) + dout[3 * C + j]) + dout[4 * C + j]);
  }
  // A nullptr gradient is skipped.
  embedding_backward<float>(ids.data(), dout.data(), nullptr, n, C);
}

TEST(Embedding, GradientMatchesFiniteDifferences) {
  const int64_t V = 7, C = 3;
  const std::vector<int32_t> ids = {1, 4, 1, 6, 0, 1};
  const int64_t n = static_cast<int64_t>(ids.size());
  auto table = random_vector(V * C, 1);
  const auto r = random_vector(n * C, 2);
  std::vector<double> out(n * C);
  const auto loss = [&] {
    embedding_forward<double>(ids.data(), table.data(), out.data(), n, C);
    return dot(r, out);
  };
  std::vector<double> dtable(V * C, 0.0);
  embedding_backward<double>(ids.data(), r.data(), dtable.data(), n, C);
  EXPECT_EQ(expect_gradients_match(loss, table, dtable, "dtable"), 0);
}

TEST(Embedding, ThreadCountIndependent) {
  ThreadGuard guard;
  // n * C above the parallel threshold, C wide enough to split into column blocks; only 7
  // distinct ids, so every row of dtable sums many tokens.
  const int64_t V = 11, C = 250, n = 301;
  std::vector<int32_t> ids(n);
  for (int64_t i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((i * 5 + i / 3) % 7 + 2);
  const auto dout = cast<float>(random_vector(n * C, 4));
  const auto table = cast<float>(random_vector(V * C, 5));
  const auto dtable0 = cast<float>(random_vector(V * C, 6));
  auto expect = dtable0;
  serial_backward(ids, dout, expect, C);
  for (int threads : {1, 3}) {
    omp_set_num_threads(threads);
    auto dtable = dtable0;
    embedding_backward<float>(ids.data(), dout.data(), dtable.data(), n, C);
    EXPECT_EQ(dtable, expect) << threads << " threads";
    std::vector<float> out(n * C);
    embedding_forward<float>(ids.data(), table.data(), out.data(), n, C);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < C; ++j) ASSERT_EQ(out[i * C + j], table[ids[i] * C + j]) << threads << " threads";
  }
}

}  // namespace
}  // namespace ptrain::cpu
