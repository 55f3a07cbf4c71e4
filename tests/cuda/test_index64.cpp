// tests/cuda/test_index64.cpp — the embedding and cross-entropy kernels index tensors of more
// than 2^31 elements (8k tokens x 128k vocabulary of logits is 2^30 elements, 2^31 bytes in
// bf16 and 2^32 in fp32; a 128k x 16k embedding table is 2^31 elements): every product of
// sizes that becomes an element offset is computed in 64 bits.
//
// The products (core/cuda/embedding.cu, core/cuda/cross_entropy.cu):
//   embedding forward   table + ids[i] * C   (V * C elements)      out + i * C   (n * C)
//   embedding backward  dtable + id * C      (V * C)               dout + token * C   (n * C)
//   cross-entropy       logits / dlogits + i * Vp   (N * Vp)
// Column indices (< C, < V) and the sort's key positions (< 2^31 tokens) never exceed 2^31
// on their own. The tests make table + id * C (forward and backward), out + i * C and
// logits / dlogits + i * Vp exceed INT32_MAX for the rows they check (dout + token * C: see
// EmbeddingOutputRowsBeyond2To31Elements), with values chosen so that a kernel computing the
// offset in 32 bits fails:
//  * int32 arithmetic wraps the offset to a negative number, about 4 GiB (2^31 elements of 2
//    bytes) BEFORE the buffer: outside every allocation, so the emulated device faults (the
//    arena below the buffer is unmapped or another allocation's bytes, never the expected
//    row) and a GPU reads other memory or faults: the checked values cannot come out right.
//    Verified by planting static_cast<int32_t>(static_cast<uint32_t>(product)) into each of
//    the five offsets in turn: every planted kernel faulted here ("signal 11 in kernel
//    embedding_forward_kernel<__nv_bfloat16>, block (131072,0,0)" and the like).
//  * Around what a test checks, rows are filled with 0xFF bytes (NaN in bf16) first, so a
//    kernel that reads a wrong row shows NaN and one that writes a wrong row is seen writing
//    over them, and an output it skips stays NaN.
//  * A uint32 offset would not wrap below 2^32 elements (8 GiB of bf16): these tests do not
//    claim to catch it (the memory it needs is beyond what CI machines give one test).
// Sizes: the tests share one bf16 buffer of 4.3 GB (allocated once: touching 4 GB of fresh
// memory is the slowest part in the emulator), within the emulated arena (24 GiB by default);
// a device with less free memory skips the tests with the reason. The cross-entropy test pads
// each row of the logits (Vp = 2^21 columns, V = 2^17 real: a 128k vocabulary) so that row
// 1024 starts at element 2^31 while the kernels touch only N·V = 1.3e8 elements (the padding
// is never read, so rows x real columns is the work: seconds in the emulator; the whole
// [16385, 2^17] logits would take ~90 s of kernels and 8.6 GB with its gradient); dlogits
// lives in the logits' padding (columns [V, 2V) of each row), so the forward's input and the
// backward's output share the buffer without a byte in common.
// Cost (emulated, 2 cores): ~15 s with transparent huge pages (the emulator advises big
// allocations onto them), ~60 s without.
//
// Label `cuda`; not in the ASan tree (4 GB buffers under ASan's shadow memory). RESOURCE_LOCK
// "memory" in tests/cuda/index64.cmake keeps it from running beside other memory-heavy tests.
#include <gtest/gtest.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <vector>

#include "core/cpu/kernels.h"
#include "core/cuda/launch_stats.h"
#include "core/cuda/ops.h"
#include "core/dtype.h"
#include "tests/cuda/device_test_util.h"

namespace ptrain::cuda {
namespace {

using namespace ptrain::cuda::test;

constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
constexpr uint16_t kNanBits = 0xFFFF;  // 0xFF bytes: a bf16 NaN

#define SKIP_WITHOUT_DEVICE()                                                                    \
  do {                                                                                           \
    if (visible_devices() == 0)                                                                  \
      GTEST_SKIP() << "cudaGetDeviceCount reports no CUDA device: the kernels cannot run here"; \
  } while (0)

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double peak_rss_gb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / (1024.0 * 1024.0);  // ru_maxrss in KiB
}

char* at(void* base, int64_t element, size_t es) { return static_cast<char*>(base) + static_cast<size_t>(element) * es; }

/// n bf16 values of a device buffer from `element` on.
std::vector<uint16_t> read_bf16(void* base, int64_t element, int64_t n) {
  std::vector<uint16_t> h(static_cast<size_t>(n));
  CU(cudaMemcpy(h.data(), at(base, element, 2), h.size() * 2, cudaMemcpyDeviceToHost));
  return h;
}
void write_bf16(void* base, int64_t element, const std::vector<uint16_t>& h) {
  CU(cudaMemcpy(at(base, element, 2), h.data(), h.size() * 2, cudaMemcpyHostToDevice));
}
std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> b(v.size());
  for (size_t i = 0; i < v.size(); ++i) b[i] = float_to_bf16_bits(v[i]);
  return b;
}
std::vector<float> from_bf16(const std::vector<uint16_t>& b) {
  std::vector<float> v(b.size());
  for (size_t i = 0; i < b.size(); ++i) v[i] = bf16_bits_to_float(b[i]);
  return v;
}

/// n elements of 0xFF bytes (bf16 NaN) from `element` on.
void poison_bf16(void* base, int64_t element, int64_t n) { CU(cudaMemset(at(base, element, 2), 0xFF, n * 2)); }
/// Elements of [element, element + n) that are not 0xFF bytes.
int64_t not_poison(void* base, int64_t element, int64_t n) {
  int64_t k = 0;
  for (uint16_t b : read_bf16(base, element, n)) k += b != kNanBits;
  return k;
}

/// The one big buffer of the tests: 2,151,677,952 bf16 elements (the embedding table, the
/// largest of the three uses), allocated on first use and kept for the process.
constexpr size_t kBigBytes = size_t(131072) * 16416 * 2;
void* big_buffer() {
  static DeviceBuffer* b = new DeviceBuffer(kBigBytes);  // never freed: one per test process
  return b->get();
}

/// Whether the device could hold the big buffer when the tests began (asked once, before it
/// is allocated).
bool big_buffer_fits() {
  static const bool fits = [] {
    size_t free_b = 0, total_b = 0;
    CU(cudaMemGetInfo(&free_b, &total_b));
    return free_b >= kBigBytes + (size_t(256) << 20);
  }();
  return fits;
}

#define SKIP_WITHOUT_BIG_BUFFER()                                                                            \
  do {                                                                                                       \
    SKIP_WITHOUT_DEVICE();                                                                                   \
    if (!big_buffer_fits())                                                                                  \
      GTEST_SKIP() << "needs " << kBigBytes << " bytes of device memory (emulated: PTRAIN_SIMT_DEVICE_MEMORY)"; \
  } while (0)

// ------------------------------------------------------------------ embedding

/// Table [V, C] = [131072, 16416] bf16: V·C = 2,151,677,952 > 2^31 elements (4.3 GB). Rows
/// >= 130817 start beyond INT32_MAX; row 130816 straddles it.
constexpr int64_t kEmbV = 131072, kEmbC = 16416;

/// Row `r` of the test table: k / 128 with |k| <= 126, exact in bf16.
std::vector<float> table_row(int64_t r) {
  std::vector<float> v(static_cast<size_t>(kEmbC));
  for (int64_t c = 0; c < kEmbC; ++c) v[static_cast<size_t>(c)] = static_cast<float>((r * 37 + c * 11) % 253 - 126) / 128.0f;
  return v;
}

TEST(Index64, EmbeddingTableRowsBeyond2To31Elements) {
  SKIP_WITHOUT_DEVICE();
  const int64_t V = kEmbV, C = kEmbC;
  static_assert(kEmbV * kEmbC > (int64_t(1) << 31));
  ASSERT_GT(130817 * C, kInt32Max);
  ASSERT_LT(130816 * C, kInt32Max);  // row 130816 starts below and ends beyond INT32_MAX
  const size_t table_bytes = static_cast<size_t>(V * C) * 2;
  SKIP_WITHOUT_BIG_BUFFER();
  ASSERT_LE(table_bytes, kBigBytes);
  const auto t0 = std::chrono::steady_clock::now();

  // Tokens: the last row, the first rows fully beyond INT32_MAX, the straddling row, row 0;
  // repeated ids so the backward sums runs in token order.
  const std::vector<int32_t> ids = {131071, 130817, 0, 131071, 130816, 131070, 130817, 131071, 1};
  const std::vector<int64_t> rows = {0, 1, 130816, 130817, 131070, 131071};  // the distinct ids
  const int64_t n = static_cast<int64_t>(ids.size());
  void* table = big_buffer();  // [V, C]
  const std::vector<int64_t> untouched = {2, 130815, 130818, 131069};  // no token has these ids
  for (int64_t r : rows) write_bf16(table, r * C, to_bf16(table_row(r)));
  for (int64_t r : untouched) poison_bf16(table, r * C, C);
  DeviceBuffer d_ids(ids.size() * sizeof(int32_t)), out(static_cast<size_t>(n * C) * 2);
  poison_bf16(out.get(), 0, n * C);
  CU(cudaMemcpy(d_ids.get(), ids.data(), ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice));

  // Forward: out[i] = table[ids[i]], a copy: bit for bit.
  reset_launch_counts();
  embedding_forward(d_ids.as<int32_t>(), table, out.get(), n, C, DType::bf16, nullptr);
  CU(cudaDeviceSynchronize());
  EXPECT_EQ(launch_count("embedding_forward_kernel<__nv_bfloat16>"), 1);
  const auto got = read_bf16(out.get(), 0, n * C);
  for (int64_t i = 0; i < n; ++i) {
    const auto want = to_bf16(table_row(ids[static_cast<size_t>(i)]));
    int64_t bad = 0;
    for (int64_t c = 0; c < C; ++c)
      if (got[static_cast<size_t>(i * C + c)] != want[static_cast<size_t>(c)] && bad++ == 0)
        ADD_FAILURE() << "out[" << i << ", " << c << "] (table row " << ids[static_cast<size_t>(i)] << ", element offset "
                      << ids[static_cast<size_t>(i)] * C + c << ") = bf16 bits " << got[static_cast<size_t>(i * C + c)]
                      << ", want " << want[static_cast<size_t>(c)];
    EXPECT_EQ(bad, 0) << "token " << i << " (id " << ids[static_cast<size_t>(i)] << ")";
  }
  const double t_fwd = seconds_since(t0);

  // Backward into the same buffer as dtable (its written rows are the starting values):
  // dtable[id] = round(table[id] + Σ dout[i] over the id's tokens in token order), the CPU
  // kernel's sequence exactly (bit for bit, tests/cuda/op_tolerances.h).
  std::vector<float> dout(static_cast<size_t>(n * C));
  for (int64_t i = 0; i < n * C; ++i) dout[static_cast<size_t>(i)] = static_cast<float>((i * 13) % 61 - 30) / 64.0f;
  DeviceBuffer d_dout(dout.size() * 2), scratch(embedding_backward_scratch_bytes(n));
  CU(cudaMemcpy(d_dout.get(), to_bf16(dout).data(), dout.size() * 2, cudaMemcpyHostToDevice));
  embedding_backward(d_ids.as<int32_t>(), d_dout.get(), table, n, C, DType::bf16, scratch.get(), nullptr);
  CU(cudaDeviceSynchronize());
  // The CPU kernel on a compact table of the distinct rows.
  std::map<int64_t, int32_t> compact;
  std::vector<float> small;
  for (int64_t r : rows) {
    compact[r] = static_cast<int32_t>(compact.size());
    const auto v = table_row(r);
    small.insert(small.end(), v.begin(), v.end());
  }
  std::vector<int32_t> small_ids;
  for (int32_t id : ids) small_ids.push_back(compact[id]);
  cpu::embedding_backward<float>(small_ids.data(), dout.data(), small.data(), n, C);
  round_to_dtype(small.data(), static_cast<int64_t>(small.size()), DType::bf16);
  for (int64_t r : rows) {
    const auto gotr = read_bf16(table, r * C, C);
    int64_t bad = 0;
    for (int64_t c = 0; c < C; ++c) {
      const uint16_t want = float_to_bf16_bits(small[static_cast<size_t>(compact[r] * C + c)]);
      if (gotr[static_cast<size_t>(c)] != want && bad++ == 0)
        ADD_FAILURE() << "dtable[" << r << ", " << c << "] (element offset " << r * C + c << ") = bf16 bits "
                      << gotr[static_cast<size_t>(c)] << ", want " << want;
    }
    EXPECT_EQ(bad, 0) << "dtable row " << r;
  }
  // The rows next to the written ones were neither read into out (checked above) nor written.
  for (int64_t r : untouched) EXPECT_EQ(not_poison(table, r * C, C), 0) << "dtable row " << r << " (no token has this id) was written";
  std::printf("embedding [%lld, %lld] bf16 (%.2f GB, the shared buffer; its first use allocates it): forward %.2f s, all %.2f s; peak RSS %.2f GB\n",
              static_cast<long long>(V), static_cast<long long>(C), table_bytes / 1e9, t_fwd, seconds_since(t0),
              peak_rss_gb());
}

/// out [n, C] with n·C > 2^31: token 131072 of C = 16384 columns starts at element 2^31
/// (out + i * C). Forward only: the backward's dout + token * C has the same form, but its
/// segments kernel runs a grid of n x ceil(C / 256) blocks (2^31 GPU threads here, minutes in
/// the emulator); it is the same 64-bit expression as the dtable offset proven above.
TEST(Index64, EmbeddingOutputRowsBeyond2To31Elements) {
  SKIP_WITHOUT_DEVICE();
  const int64_t V = 5, C = 16384, n = 131073;
  ASSERT_GT((n - 1) * C, kInt32Max);
  ASSERT_LE((n - 2) * C + C - 1, kInt32Max);  // only the last token lies beyond
  const size_t out_bytes = static_cast<size_t>(n * C) * 2;
  SKIP_WITHOUT_BIG_BUFFER();
  ASSERT_LE(out_bytes, kBigBytes);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> table(static_cast<size_t>(V * C));
  for (int64_t i = 0; i < V * C; ++i) table[static_cast<size_t>(i)] = static_cast<float>((i * 37) % 253 - 126) / 128.0f;
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 3 + 1) % V);
  DeviceBuffer d_table(table.size() * 2), d_ids(ids.size() * 4);
  void* out = big_buffer();  // [n, C]
  const std::vector<int64_t> checked = {0, 1, n - 2, n - 1};
  for (int64_t i : checked) poison_bf16(out, i * C, C);  // a skipped row would stay NaN
  CU(cudaMemcpy(d_table.get(), to_bf16(table).data(), table.size() * 2, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(d_ids.get(), ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  embedding_forward(d_ids.as<int32_t>(), d_table.get(), out, n, C, DType::bf16, nullptr);
  CU(cudaDeviceSynchronize());
  const auto table_bits = to_bf16(table);
  for (int64_t i : checked) {
    const auto got = read_bf16(out, i * C, C);
    const int64_t id = ids[static_cast<size_t>(i)];
    int64_t bad = 0;
    for (int64_t c = 0; c < C; ++c)
      if (got[static_cast<size_t>(c)] != table_bits[static_cast<size_t>(id * C + c)] && bad++ == 0)
        ADD_FAILURE() << "out[" << i << ", " << c << "] (element offset " << i * C + c << ") = bf16 bits "
                      << got[static_cast<size_t>(c)] << ", want " << table_bits[static_cast<size_t>(id * C + c)];
    EXPECT_EQ(bad, 0) << "token " << i;
  }
  std::printf("embedding out [%lld, %lld] bf16 (%.2f GB): all %.2f s; peak RSS %.2f GB\n", static_cast<long long>(n),
              static_cast<long long>(C), out_bytes / 1e9, seconds_since(t0), peak_rss_gb());
}

/// The backward's sort keys hold a token position in 32 bits: 2^31 tokens are refused before
/// anything is launched or read (ops.h: n < 2^31).
TEST(Index64, EmbeddingBackwardRefusesTooManyTokens) {
  SKIP_WITHOUT_DEVICE();
  reset_launch_counts();
  int dummy = 0;  // never dereferenced: the launcher throws first
  EXPECT_THROW(embedding_backward(nullptr, &dummy, &dummy, int64_t(1) << 31, 4, DType::bf16, nullptr, nullptr),
               std::invalid_argument);
  EXPECT_TRUE(launch_counts().empty());
}

// ------------------------------------------------------------------ cross-entropy

TEST(Index64, CrossEntropyRowsBeyond2To31Elements) {
  SKIP_WITHOUT_DEVICE();
  // logits [N, Vp] bf16 with V real columns: row 1024 starts at element 1024 · 2^21 = 2^31.
  const int64_t N = 1025, Vp = int64_t(1) << 21, V = int64_t(1) << 17;
  ASSERT_GT((N - 1) * Vp, kInt32Max);
  ASSERT_LE(2 * V, Vp);  // dlogits' columns [0, V) are the logits' padding [V, 2V)
  const size_t bytes = static_cast<size_t>(N * Vp + V) * 2;
  SKIP_WITHOUT_BIG_BUFFER();
  ASSERT_LE(bytes, kBigBytes);
  const auto t0 = std::chrono::steady_clock::now();

  // Only the checked rows are written: the first, the ignored one, the last two below 2^31
  // and the last (beyond it); their dlogits start from a pattern (accumulation). Other rows
  // hold what the buffer holds (rows are independent); rows 2 and N - 4 are NaN (0xFF), so
  // their losses must be NaN, and a checked row that read them would be NaN too.
  const std::vector<int64_t> checked = {0, 1, N - 3, N - 2, N - 1};
  auto logit = [](int64_t i, int64_t j) { return static_cast<float>((i * 29 + j * 17) % 97 - 48) / 16.0f; };  // exact
  auto dlogit0 = [](int64_t i, int64_t j) { return static_cast<float>((i * 5 + j * 3) % 17 - 8) / 32.0f; };
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) targets[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7919) % V);
  targets[1] = -100;  // ignored: loss 0, dlogits untouched
  targets[static_cast<size_t>(N - 1)] = static_cast<int32_t>(V - 1);
  targets[static_cast<size_t>(N - 2)] = 0;
  std::vector<float> dloss(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) dloss[static_cast<size_t>(i)] = 1.0f / static_cast<float>(1 + i % 5);

  char* logits = static_cast<char*>(big_buffer());
  char* dlogits = at(logits, V, 2);  // [N, Vp] view: row i's columns [0, V) = logits' [V, 2V)
  const int64_t pad_probe = 2 * V, pad_n = 4096;  // padding beyond dlogits' columns: never written
  for (int64_t i : {int64_t(2), N - 4}) poison_bf16(logits, i * Vp, V);
  for (int64_t i : {int64_t(0), N - 1}) poison_bf16(logits, i * Vp + pad_probe, pad_n);
  std::vector<std::vector<float>> x_rows, dl_rows;  // the checked rows, on the bf16 grid
  for (int64_t i : checked) {
    std::vector<float> x(static_cast<size_t>(V)), d(static_cast<size_t>(V));
    for (int64_t j = 0; j < V; ++j) {
      x[static_cast<size_t>(j)] = logit(i, j);
      d[static_cast<size_t>(j)] = dlogit0(i, j);
    }
    write_bf16(logits, i * Vp, to_bf16(x));
    write_bf16(dlogits, i * Vp, to_bf16(d));
    x_rows.push_back(std::move(x));
    dl_rows.push_back(std::move(d));
  }
  DeviceBuffer d_targets(targets.size() * 4), d_dloss(dloss.size() * 4), losses(N * 4), lse(N * 4);
  CU(cudaMemcpy(d_targets.get(), targets.data(), targets.size() * 4, cudaMemcpyHostToDevice));
  CU(cudaMemcpy(d_dloss.get(), dloss.data(), dloss.size() * 4, cudaMemcpyHostToDevice));
  cudaStream_t s = nullptr;
  CU(cudaStreamCreate(&s));
  const double t_fill = seconds_since(t0);

  reset_launch_counts();
  auto t1 = std::chrono::steady_clock::now();
  cross_entropy_forward(logits, d_targets.as<int32_t>(), losses.as<float>(), lse.as<float>(), N, Vp, V, DType::bf16, s);
  CU(cudaStreamSynchronize(s));
  const double t_fwd = seconds_since(t1);
  t1 = std::chrono::steady_clock::now();
  cross_entropy_backward(logits, d_targets.as<int32_t>(), lse.as<float>(), d_dloss.as<float>(), dlogits, N, Vp, V,
                         DType::bf16, s);
  CU(cudaStreamSynchronize(s));
  const double t_bwd = seconds_since(t1);
  CU(cudaStreamDestroy(s));
  EXPECT_EQ(launch_count("cross_entropy_forward_kernel<__nv_bfloat16>"), 1);
  EXPECT_EQ(launch_count("cross_entropy_backward_kernel<__nv_bfloat16>"), 1);

  std::vector<float> h_loss(static_cast<size_t>(N)), h_lse(static_cast<size_t>(N));
  CU(cudaMemcpy(h_loss.data(), losses.get(), N * 4, cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(h_lse.data(), lse.get(), N * 4, cudaMemcpyDeviceToHost));
  // An unwritten row's NaN stays in its row: the rows next to the checked ones are NaN, the
  // checked ones finite (below).
  for (int64_t i : {int64_t(2), N - 4}) EXPECT_TRUE(std::isnan(h_lse[static_cast<size_t>(i)])) << "row " << i;
  for (size_t k = 0; k < checked.size(); ++k) {
    const int64_t i = checked[k];
    SCOPED_TRACE("row " + std::to_string(i) + " (element offset " + std::to_string(i * Vp) + ")");
    // The CPU op on this row alone: the same values, fp32 results.
    const std::vector<float>& x = x_rows[k];
    const int32_t t = targets[static_cast<size_t>(i)];
    float want_loss = 0, want_lse = 0;
    cpu::cross_entropy_forward<float>(x.data(), &t, &want_loss, &want_lse, 1, V, V);
    // fp32 sums of 2^17 exps (256 per thread, then a tree) against the CPU's double lanes:
    // |Δ lse| <= (256 + 10) u ≈ 1.6e-5 of the log's argument, i.e. absolute in lse.
    const double tol = 5e-5;
    EXPECT_NEAR(h_lse[static_cast<size_t>(i)], want_lse, tol);
    EXPECT_NEAR(h_loss[static_cast<size_t>(i)], want_loss, tol);
    // dlogits: the CPU backward on this row from the same lse (the device's), rounded once to
    // bf16; a few fp32 ulps of exp() may flip a rounding: one bf16 ulp (2^-8 relative).
    std::vector<float> dl = dl_rows[k];
    const float l = h_lse[static_cast<size_t>(i)], g = dloss[static_cast<size_t>(i)];
    cpu::cross_entropy_backward<float>(x.data(), &t, &l, &g, dl.data(), 1, V, V);
    round_to_dtype(dl.data(), V, DType::bf16);
    const auto got = from_bf16(read_bf16(dlogits, i * Vp, V));
    int64_t bad = 0;
    for (int64_t j = 0; j < V; ++j) {
      const float w = dl[static_cast<size_t>(j)], d = got[static_cast<size_t>(j)];
      if (!(std::fabs(d - w) <= 0x1p-8f * std::fabs(w) + 1e-7f) && bad++ == 0)
        ADD_FAILURE() << "dlogits[" << i << ", " << j << "] = " << d << ", want " << w;
    }
    EXPECT_EQ(bad, 0);
    if (t < 0) {
      EXPECT_EQ(h_loss[static_cast<size_t>(i)], 0.0f);
    }
  }
  // The logits' padding beyond dlogits' columns was not written by the kernels.
  for (int64_t i : {int64_t(0), N - 1})
    EXPECT_EQ(not_poison(logits, i * Vp + pad_probe, pad_n), 0) << "padding of row " << i << " was written";
  std::printf("cross-entropy [%lld, %lld] (V = %lld) bf16 (%.2f GB of the shared buffer): fill %.2f s, forward %.2f s, backward %.2f s, "
              "all %.2f s; peak RSS %.2f GB\n",
              static_cast<long long>(N), static_cast<long long>(Vp), static_cast<long long>(V), bytes / 1e9, t_fill,
              t_fwd, t_bwd, seconds_since(t0), peak_rss_gb());
}

}  // namespace
}  // namespace ptrain::cuda
