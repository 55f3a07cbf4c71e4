// tests/cuda/simt_kernels.h — host launchers of tests/cuda/simt_kernels.cu (emulated build).
#pragma once
#include <cuda_runtime_api.h>

namespace simt_test {
// correct kernels
void scale(const float* x, float* y, float a, int n, cudaStream_t s = nullptr);
void row_sum(const float* x, float* out, int rows, int cols);
void warp_ops(int* out, int threads);
void reverse(const float* x, float* y, int n, int block);
void index2d(int* y, int rows, int cols);
void order(int* ticket, int* ord, int* count, int threads);
void histogram(const int* x, int* hist, int n);
void throw_in_kernel(int* y);
void deadlock(int* y);
void big_static_shared(float* y);
void big_dynamic_shared(float* y, int n, bool opt_in);
void launch_threads(float* y, int threads);
void noop_store(float* y, int n, int block);
void one_barrier(float* y, int n, int block);
// planted bugs
void off_by_one(const float* x, float* y, int n);
void shared_oob(const float* x, float* y);
void shared_uninit(const float* x, float* y);
void barrier_in_branch(const float* x, float* y, int n);
void barrier_both_arms(const float* x, float* y);
void missing_barrier(const float* x, float* y);
void produce(const float* x, float* buf, int n, cudaStream_t s);
void consume(const float* buf, float* y, int n, cudaStream_t s);
void unzeroed_accumulator(const float* x, float* acc, int n);
void misaligned_float4(const float* x, float* y, int n4);
void shuffle_exited(const float* x, float* y);
void float_atomic(const float* x, float* sum, int n);
}  // namespace simt_test

namespace simt_test {
void stack_overflow(int* y);
void intrinsics(const float* x, float* y, int n);
}  // namespace simt_test
