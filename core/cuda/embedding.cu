// core/cuda/embedding.cu — token embedding lookup and its gradient on the device.
//
// Shapes: ids [n], table / dtable [V, C], out / dout [n, C].
// Invariants:
//  * Forward overwrites out: a copy of table rows (no arithmetic, so bit-exact in every dtype).
//  * Backward accumulates without floating-point atomics. The (id, token) pairs are sorted
//    as 64-bit keys id << 32 | token with a bitonic network (keys are unique, so the sorted
//    order, and everything after it, is independent of thread and block order). Each run of
//    equal ids is then summed by one block: acc = dtable[id, c]; acc += dout[token, c] for its
//    tokens in token order, in fp32; dtable[id, c] = acc rounded once. This is the CPU
//    kernel's order exactly (dst += src for i in order), so f32 results are bit-identical to
//    core/cpu/embedding.cpp, and bf16/f16 round once per id as the CPU's round-on-store does.
//  * Sort: tiles of kSortTile keys are sorted in shared memory (one block of kSortTile/2
//    threads per tile); merge steps whose partner distance j >= kSortTile run as one global
//    kernel per step, the steps j < kSortTile of a merge run in shared memory per tile.
//    The key array is padded with ~0 keys to a power of two (at least 64), which sort last.
#include "core/cuda/runtime.h"

#include "core/cuda/ops.h"
#include "core/cuda/reduce.cuh"

namespace ptrain::cuda {

namespace {

using kern::from_f32;
using kern::to_f32;

using Key = unsigned long long;
constexpr unsigned kSortTile = 2048;  // keys per shared-memory tile (16 KB); blocks of 1024 threads
constexpr int64_t kMinKeys = 64;      // smallest padded key count (a tile of at least one warp's pairs)
constexpr unsigned kThreads = 256;

/// out[i, :] = table[ids[i], :] — rows grid-strided over blocks, columns over threads.
template <class T>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table,
                                         T* __restrict__ out, int64_t n, int64_t C) {
  for (int64_t i = blockIdx.x; i < n; i += gridDim.x) {
    const T* src = table + static_cast<int64_t>(ids[i]) * C;  // [C]
    T* dst = out + i * C;                                      // [C]
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
  }
}

/// keys[p] = ids[p] << 32 | p for p < n, ~0 for n <= p < n_pad.
__global__ void embedding_backward_keys_kernel(const int32_t* __restrict__ ids, Key* __restrict__ keys, int64_t n,
                                               int64_t n_pad) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < n_pad; p += stride)
    keys[p] = p < n ? (static_cast<Key>(static_cast<uint32_t>(ids[p])) << 32) | static_cast<Key>(p) : ~Key(0);
}

/// Compare-exchange of a bitonic network: after it, a <= b when ascending, a >= b otherwise.
__device__ __forceinline__ void compare_exchange(Key& a, Key& b, bool ascending) {
  const Key x = a, y = b;
  if ((x > y) == ascending) {
    a = y;
    b = x;
  }
}

/// Index of the lower element of pair t at partner distance j, a power of two: t with a zero
/// bit inserted at j's position (= 2j (t / j) + t % j, without the 64-bit division).
__device__ __forceinline__ int64_t pair_low(int64_t t, int64_t j) { return ((t & ~(j - 1)) << 1) | (t & (j - 1)); }

/// Sorts each tile of 2 * blockDim.x keys (a power of two <= kSortTile) in shared memory,
/// ascending or descending as the global bitonic network wants (bit k of the global index).
__global__ void embedding_backward_sort_tile_kernel(Key* __restrict__ keys) {
  PT_SHARED(Key, tile, [kSortTile]);
  const int64_t tile_n = 2 * static_cast<int64_t>(blockDim.x);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * tile_n;
  const int64_t t = threadIdx.x;
  tile[t] = keys[base + t];
  tile[t + blockDim.x] = keys[base + t + blockDim.x];
  __syncthreads();
  for (int64_t k = 2; k <= tile_n; k <<= 1) {
    for (int64_t j = k >> 1; j > 0; j >>= 1) {
      const int64_t i = pair_low(t, j);
      compare_exchange(tile[i], tile[i + j], ((base + i) & k) == 0);
      __syncthreads();
    }
  }
  keys[base + t] = tile[t];
  keys[base + t + blockDim.x] = tile[t + blockDim.x];
}

/// One step (k, j) of the bitonic network over all n_pad keys, j >= kSortTile: one thread per pair.
__global__ void embedding_backward_sort_step_kernel(Key* __restrict__ keys, int64_t n_pad, int64_t k, int64_t j) {
  const int64_t pairs = n_pad / 2;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < pairs; t += stride) {
    const int64_t i = pair_low(t, j);
    compare_exchange(keys[i], keys[i + j], (i & k) == 0);
  }
}

/// The steps j = kSortTile/2 .. 1 of merge stage k (k > kSortTile), per tile in shared memory.
__global__ void embedding_backward_sort_merge_kernel(Key* __restrict__ keys, int64_t k) {
  PT_SHARED(Key, tile, [kSortTile]);
  const int64_t base = static_cast<int64_t>(blockIdx.x) * kSortTile;
  const int64_t t = threadIdx.x;  // blockDim.x == kSortTile / 2
  tile[t] = keys[base + t];
  tile[t + kSortTile / 2] = keys[base + t + kSortTile / 2];
  __syncthreads();
  for (int64_t j = kSortTile / 2; j > 0; j >>= 1) {
    const int64_t i = pair_low(t, j);
    compare_exchange(tile[i], tile[i + j], ((base + i) & k) == 0);
    __syncthreads();
  }
  keys[base + t] = tile[t];
  keys[base + t + kSortTile / 2] = tile[t + kSortTile / 2];
}

/// For each sorted position p that starts a run of equal ids, sums that run's dout rows in
/// token order into dtable[id] (fp32, one rounding). Blocks: x over positions, y over column
/// tiles of blockDim.x; no barrier, so non-head positions simply continue. dtable may hold a
/// wider type TW than dout (fp32 gradients of bf16 weights).
template <class T, class TW = T>
__global__ void embedding_backward_segments_kernel(const Key* __restrict__ keys, const T* __restrict__ dout,
                                                   TW* __restrict__ dtable, int64_t n, int64_t C) {
  for (int64_t p = blockIdx.x; p < n; p += gridDim.x) {
    const Key head = keys[p] >> 32;
    if (p > 0 && (keys[p - 1] >> 32) == head) continue;
    TW* dst = dtable + static_cast<int64_t>(head) * C;  // [C]
    const int64_t cstride = static_cast<int64_t>(gridDim.y) * blockDim.x;
    for (int64_t c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; c < C; c += cstride) {
      float acc = to_f32(dst[c]);
      for (int64_t q = p; q < n; ++q) {
        const Key kq = keys[q];
        if ((kq >> 32) != head) break;
        acc += to_f32(dout[static_cast<int64_t>(kq & 0xffffffffu) * C + c]);
      }
      dst[c] = from_f32<TW>(acc);
    }
  }
}

int64_t padded_keys(int64_t n) {
  int64_t p = kMinKeys;
  while (p < n) p <<= 1;
  return p;
}

}  // namespace

void embedding_forward(const int32_t* ids, const void* table, void* out, int64_t n, int64_t C, DType dt,
                       CUstream_st* stream) {
  kern::check_dtype("embedding_forward", dt);
  if (n <= 0 || C <= 0) return;
  const unsigned threads = kern::row_block_threads(C, kThreads);
#define PT_EMBEDDING_FORWARD(T)                                                                       \
  PT_LAUNCH((embedding_forward_kernel<T>), kern::grid_blocks(n), threads, 0, stream, ids,             \
            static_cast<const T*>(table), static_cast<T*>(out), n, C)
  PT_DTYPE_SWITCH(dt, PT_EMBEDDING_FORWARD)
#undef PT_EMBEDDING_FORWARD
}

size_t embedding_backward_scratch_bytes(int64_t n) {
  return n <= 0 ? 0 : static_cast<size_t>(padded_keys(n)) * sizeof(Key);
}

void embedding_backward(const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t C, DType dt,
                        void* scratch, CUstream_st* stream) {
  embedding_backward(ids, dout, dtable, n, C, dt, dt, scratch, stream);
}

void embedding_backward(const int32_t* ids, const void* dout, void* dtable, int64_t n, int64_t C, DType dt,
                        DType dtable_dt, void* scratch, CUstream_st* stream) {
  kern::check_dtype("embedding_backward", dt);
  kern::check_dtype("embedding_backward (dtable)", dtable_dt);
  if (dtable_dt != dt && dtable_dt != DType::f32)
    throw std::invalid_argument("embedding_backward: dtable must have the dtype of dout, or be f32");
  if (!dtable || n <= 0 || C <= 0) return;
  if (n > INT32_MAX)  // the sort keys hold a token's position in their low 32 bits
    throw std::invalid_argument("embedding_backward: " + std::to_string(n) + " tokens (at most 2^31 - 1)");
  if (!scratch) throw std::invalid_argument("embedding_backward: scratch is nullptr (embedding_backward_scratch_bytes)");
  Key* keys = static_cast<Key*>(scratch);  // [n_pad]
  const int64_t n_pad = padded_keys(n);
  PT_LAUNCH(embedding_backward_keys_kernel, kern::grid_blocks((n_pad + kThreads - 1) / kThreads), kThreads, 0,
            stream, ids, keys, n, n_pad);
  const int64_t tile_n = n_pad < kSortTile ? n_pad : kSortTile;
  PT_LAUNCH(embedding_backward_sort_tile_kernel, static_cast<unsigned>(n_pad / tile_n),
            static_cast<unsigned>(tile_n / 2), 0, stream, keys);
  for (int64_t k = 2 * tile_n; k <= n_pad; k <<= 1) {
    for (int64_t j = k >> 1; j >= kSortTile; j >>= 1)
      PT_LAUNCH(embedding_backward_sort_step_kernel, kern::grid_blocks((n_pad / 2 + kThreads - 1) / kThreads),
                kThreads, 0, stream, keys, n_pad, k, j);
    PT_LAUNCH(embedding_backward_sort_merge_kernel, static_cast<unsigned>(n_pad / kSortTile), kSortTile / 2, 0,
              stream, keys, k);
  }
  const unsigned threads = kern::row_block_threads(C, kThreads);
  const int64_t col_tiles = (C + threads - 1) / threads;
  const dim3 grid(kern::grid_blocks(n), static_cast<unsigned>(col_tiles < 65535 ? col_tiles : 65535));
#define PT_EMBEDDING_SEGMENTS(T)                                                                              \
  if (dtable_dt == dt) {                                                                                         \
    PT_LAUNCH((embedding_backward_segments_kernel<T>), grid, threads, 0, stream, static_cast<const Key*>(keys),  \
              static_cast<const T*>(dout), static_cast<T*>(dtable), n, C);                                       \
  } else {                                                                                                       \
    PT_LAUNCH((embedding_backward_segments_kernel<T, float>), grid, threads, 0, stream,                          \
              static_cast<const Key*>(keys), static_cast<const T*>(dout), static_cast<float*>(dtable), n, C);    \
  }
  PT_DTYPE_SWITCH(dt, PT_EMBEDDING_SEGMENTS)
#undef PT_EMBEDDING_SEGMENTS
}

}  // namespace ptrain::cuda
