// tests/parallel/test_grad_reducer.cpp — GradReducer on a group of one rank: buckets formed by
// size over the reversed list (homogeneous in wire type, large tensors alone), every call a
// no-op on the values, and the step protocol's errors. Multi-rank sums: test_grad_reducer_mpi.cpp.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "parallel/comm.h"
#include "parallel/grad_reducer.h"

namespace ptrain::parallel {
namespace {

/// A tensor of `n` distinct values (i * 0.37 - 1.5, rounded to dtype).
Tensor filled(int64_t n, DType t) {
  if (t == DType::f64) {
    std::vector<double> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<double>(i) * 0.37 - 1.5;
    return Tensor::from_vector_f64(v, {n});
  }
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<float>(i) * 0.37f - 1.5f;
  return Tensor::from_vector(v, {n}, t);
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.numel() == b.numel() && a.dtype() == b.dtype() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

TEST(GradReducer, BucketsBySizeOverTheReversedList) {
  auto self = make_self_communicator("dp");
  // f32 sizes 10, 20, 30, 5, 100, 7 (bytes 40, 80, 120, 20, 400, 28); limit 128 bytes.
  std::vector<Tensor> g;
  for (int64_t n : {10, 20, 30, 5, 100, 7}) g.push_back(filled(n, DType::f32));
  GradReducer r(g, *self, 128);
  EXPECT_EQ(r.num_grads(), 6u);
  // Reverse walk: {5} 28 B; 4 (400 B > 128) alone; {3} then 2 would make 140 > 128; {2};
  // {1, 0} = 80 + 40 = 120 <= 128.
  const std::vector<std::vector<size_t>> want = {{5}, {4}, {3}, {2}, {1, 0}};
  ASSERT_EQ(r.num_buckets(), want.size());
  for (size_t b = 0; b < want.size(); ++b) {
    EXPECT_EQ(r.bucket(b), want[b]) << "bucket " << b;
    for (size_t i : want[b]) EXPECT_EQ(r.bucket_of(i), b) << "gradient " << i;
  }
  EXPECT_EQ(r.bucket_bytes(0), 28u);
  EXPECT_EQ(r.bucket_bytes(1), 400u);
  EXPECT_EQ(r.bucket_bytes(4), 120u);

  // Exactly at the limit fits; the default limit (25 MiB) takes everything small in one bucket.
  std::vector<Tensor> h = {filled(16, DType::f32), filled(16, DType::f32), filled(16, DType::f32)};
  GradReducer exact(h, *self, 128);
  ASSERT_EQ(exact.num_buckets(), 2u);
  EXPECT_EQ(exact.bucket(0), (std::vector<size_t>{2, 1}));
  EXPECT_EQ(exact.bucket(1), (std::vector<size_t>{0}));
  GradReducer one(g, *self);
  ASSERT_EQ(one.num_buckets(), 1u);
  EXPECT_EQ(one.bucket(0), (std::vector<size_t>{5, 4, 3, 2, 1, 0}));
}

// bf16/f16 travel as f32 (4 bytes an element) and share f32 buckets; f64 gets buckets of its own.
TEST(GradReducer, BucketsAreHomogeneousInWireType) {
  auto self = make_self_communicator("dp");
  std::vector<Tensor> g = {filled(4, DType::f32), filled(4, DType::bf16), filled(2, DType::f64),
                           filled(2, DType::f64), filled(4, DType::f16), filled(4, DType::f32)};
  GradReducer r(g, *self, 1024);
  const std::vector<std::vector<size_t>> want = {{5, 4}, {3, 2}, {1, 0}};
  ASSERT_EQ(r.num_buckets(), want.size());
  for (size_t b = 0; b < want.size(); ++b) EXPECT_EQ(r.bucket(b), want[b]) << "bucket " << b;
  EXPECT_EQ(r.bucket_bytes(0), 32u);  // 8 elements × 4 bytes (f16 counted at its f32 wire size)
  EXPECT_EQ(r.bucket_bytes(1), 32u);  // 4 × 8
  EXPECT_EQ(r.bucket_bytes(2), 32u);
}

TEST(GradReducer, GroupOfOneIsANoOp) {
  auto self = make_self_communicator("dp");
  std::vector<Tensor> g = {filled(10, DType::f32), filled(6, DType::bf16), filled(3, DType::f64),
                           filled(50, DType::f32)};
  std::vector<Tensor> before;
  for (const Tensor& t : g) before.push_back(t.clone());
  GradReducer r(g, *self, 64);
  EXPECT_GT(r.num_buckets(), 1u);
  for (int step = 0; step < 2; ++step) {
    r.begin_step();
    for (size_t i = g.size(); i-- > 0;) r.mark_ready(i);
    r.finish();
    EXPECT_EQ(r.buckets_started_before_finish(), 0u);
    for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(same_bits(g[i], before[i])) << "gradient " << i;
  }
  r.finish();  // without begin_step: reduce everything (nothing here)
  for (size_t i = 0; i < g.size(); ++i) EXPECT_TRUE(same_bits(g[i], before[i])) << "gradient " << i;
}

TEST(GradReducer, RefusesBadListsAndProtocolErrors) {
  auto self = make_self_communicator("dp");
  Tensor a = filled(4, DType::f32);
  EXPECT_THROW(GradReducer({a, Tensor()}, *self), Error) << "undefined gradient";
  EXPECT_THROW(GradReducer({Tensor::from_vector_i32({1, 2}, {2})}, *self), Error) << "i32 gradient";
  EXPECT_THROW(GradReducer({a, a}, *self), Error) << "the same gradient twice";
  EXPECT_THROW(GradReducer({a, a.view({2, 2})}, *self), Error) << "a view of the same storage";

  GradReducer r({a, filled(3, DType::f32)}, *self);
  try {
    r.mark_ready(0);
    ADD_FAILURE() << "mark_ready outside a step accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("begin_step"), std::string::npos) << e.what();
  }
  r.begin_step();
  EXPECT_THROW(r.begin_step(), Error) << "begin_step twice without finish";
  EXPECT_THROW(r.mark_ready(2), Error) << "index out of range";
  r.mark_ready(1);
  EXPECT_THROW(r.mark_ready(1), Error) << "marked twice";
  r.finish();
  r.begin_step();  // a new step: gradient 1 may be marked again
  r.mark_ready(1);
  r.finish();
}

}  // namespace
}  // namespace ptrain::parallel
