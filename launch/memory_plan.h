// launch/memory_plan.h — the one model of memory: what every rank of a run holds on its GPU
// and on the host, predicted before anything is allocated (`ptrain plan`, and the trainer's
// start-up check).
//
// plan_memory() is a pure function of (Config, world size, GPU, host capacity): no tensor is
// allocated, no MPI is touched. Per pipeline rank it runs a *symbolic* training step: the
// model's parameters are registered with their real shapes (the layers of layers/*.cpp, TP
// sharding, vocabulary padding, the tied-embedding replica of the last stage), and the very
// schedule the trainer runs (parallel::make_all_schedules) is executed against a symbolic tape
// that mirrors core/autograd.cpp (slots, gradient buffers freed when their producer ran
// backward, deferred weight gradients under zero-bubble) and the device ops of
// core/cuda/ops_device.cpp (what each op allocates, saves and scratches). Every allocation
// goes through a real cuda::CachingAllocator over a fake backing that hands out addresses
// only, so the allocator's rounding and segment reuse are modelled exactly as they happen.
//
// What it models:
//  * weights (train.precision), parameter gradients (train.grad_dtype), the fp32 master when
//    precision != fp32, AdamW's two fp32 moments (created at the first update; sharded over DP
//    with optim.zero: 1) — on the host instead with train.offload.optimizer;
//  * saved activations per micro-batch as the ops save them (linear: x; rms/layer norm: x and
//    fp32 statistics; rope: nothing; attention: q, k, v and the [B, Hq, T, T] probabilities;
//    swiglu: gate and up; gelu: x; cross-entropy: the logits and fp32 lse), for the micro-
//    batches the schedule keeps in flight, the stage's received input and its held output;
//  * train.recompute as core/recompute.h defines it: selective drops the attention
//    probabilities and the activation functions' outputs (rerun in backward), full keeps each
//    block's input only and reruns the whole block inside its backward;
//  * train.offload.activations: the saves of a block go to pinned host memory once the next
//    block's forward is done, and come back train.offload.prefetch blocks ahead of backward
//    (core/activation_offload.h; ~prefetch + 1 blocks' worth on the device);
//  * transients: logits and their gradient, activation gradients, kernel scratch (attention,
//    norms, embedding backward, gradient norm), the optimizer's descriptor table, token
//    tensors, RoPE tables, pipeline receive buffers, data-parallel gradient buckets (two in
//    flight), the GEMM layer's 32 MiB cuBLASLt workspace (cudaMalloc'ed outside the
//    allocator), the CUDA context of a real GPU;
//  * host: offloaded master/moments and the gradients' host copies (optim/offload.h), offloaded
//    activations, the checkpoint writer's host copies of every device tensor a rank writes
//    (all at once, as Trainer::save_checkpoint does), train.init_from's full-shape fp32
//    buffers, a per-process overhead (GpuSpec::host_process_bytes), and for the emulated
//    device its device memory (it lives in host RAM). Every rank is assumed to run on one host.
// Multi-rank device runs (pipeline and data parallel on GPUs) are modelled as the layout
// will run once device tensors cross ranks: receive buffers and buckets on the device.
// What it does not model: evaluation passes (forward only, below the training peak), the
// CPU training path (device: cpu), fragmentation of host malloc, NCCL's own buffers, layers
// it does not know (plan_memory throws UserError naming them, memory_model_covers() says so
// beforehand; a custom layer needs an entry in memory_plan.cpp). optim.state (compact state),
// once that key exists, is read from the config as bf16 master + 8-bit moments.
// Calibration: on the emulated device the predicted peak allocated and reserved bytes equal
// the measured ones byte for byte for llama/gpt2, fp32/bf16/fp16, every recompute mode and the
// optimizer offload (tests/launch/test_memory_plan.cpp checks within 10%).
//
// Figures: device_peak_bytes is the predicted peak of the caching allocator's `allocated`
// (metrics.jsonl mem_peak_bytes); device_required_bytes = the allocator's predicted peak
// reservation + GEMM workspace + CUDA context: the card must hold that, so `fits` compares
// it with GpuSpec::total_bytes. Invariant: plan_memory(c, ...) depends on nothing but its
// arguments (and, for the emulated GPU, PTRAIN_SIMT_DEVICE_MEMORY through its GpuSpec).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "launch/config.h"

namespace ptrain::launch {

/// A GPU the plan knows: `total_bytes` is what cudaMemGetInfo reports as total.
struct GpuSpec {
  std::string name;            ///< "rtx4090-24g" (the --gpu spelling)
  std::string description;     ///< "NVIDIA GeForce RTX 4090 (24 GB)"
  int64_t total_bytes = 0;     ///< device memory as the driver reports it
  int64_t context_bytes = 0;   ///< taken by the CUDA context and cuBLASLt before ptrain allocates (0 emulated)
  bool emulated = false;       ///< the SIMT runtime's device: its memory is host RAM
  /// Host memory of one training process outside what the plan itemises (CUDA runtime and
  /// cuBLASLt host side, libraries, MPI, BLAS buffers, the sampler): an estimate.
  int64_t host_process_bytes = int64_t{1} << 30;
};

/// rtx4090-24g, rtx3090-24g, a100-40g, a100-80g, h100-80g, emulated (in that order).
const std::vector<GpuSpec>& known_gpus();
/// The spec named `name`, or nullptr.
const GpuSpec* find_gpu(std::string_view name);
/// "rtx4090-24g, rtx3090-24g, ..." (for error messages).
std::string known_gpu_names();
/// The device this process would train on (device 0 of a CUDA build: its name and reported total
/// memory, context estimated as for a real GPU, 0 when emulated); nullopt without a CUDA backend.
std::optional<GpuSpec> current_device_spec();
/// MemTotal of /proc/meminfo in bytes (0 when unreadable).
int64_t host_memory_bytes();

/// Bytes of one data-parallel gradient bucket (parallel::GradReducer's default).
inline constexpr int64_t kGradBucketBytes = int64_t{25} << 20;

/// Device bytes live at the rank's allocator peak, by kind (sum = device_peak_bytes), plus the
/// bytes outside the allocator.
struct DeviceBreakdown {
  int64_t weights = 0, grads = 0, master = 0, moments = 0;
  int64_t saved_activations = 0;  ///< tensors kept for backward (incl. stage input, held output, recomputed ones)
  int64_t logits = 0;             ///< [tokens, Vp/tp] of the last stage
  int64_t activation_grads = 0;   ///< gradients of activations (and of the logits)
  int64_t scratch = 0;            ///< kernel scratch and short-lived op outputs
  int64_t comm_buffers = 0;       ///< pipeline gradient receives, data-parallel buckets
  int64_t other = 0;              ///< token ids, RoPE tables, optimizer tables
  // outside the allocator's `allocated` peak:
  int64_t allocator_rounding = 0;  ///< predicted peak reserved - peak allocated
  int64_t gemm_workspace = 0;
  int64_t cuda_context = 0;
};

struct HostBreakdown {
  int64_t master = 0, moments = 0;   ///< offloaded optimizer state
  int64_t grad_staging = 0;          ///< the offloaded optimizer's staging slots (optim/offload.h)
  int64_t activations = 0;           ///< peak of pinned offloaded activations
  int64_t checkpoint_staging = 0;    ///< host copies of device tensors while a checkpoint is written
  int64_t init_staging = 0;          ///< train.init_from's full-shape fp32 buffers (while loading)
  int64_t emulated_device = 0;       ///< the emulated device's reserved memory (host RAM)
  int64_t process = 0;               ///< GpuSpec::host_process_bytes
};

struct RankMemory {
  int rank = 0, stage = 0, tp_rank = 0, dp_rank = 0;
  int64_t params = 0;                  ///< parameter elements this rank holds (its shards, incl. a tied replica)
  int in_flight = 0;                   ///< most micro-batches (per chunk, summed) alive at once
  int64_t device_peak_bytes = 0;       ///< predicted caching-allocator peak `allocated`
  int64_t device_reserved_bytes = 0;   ///< predicted caching-allocator peak `reserved`
  int64_t device_required_bytes = 0;   ///< reserved + GEMM workspace + CUDA context
  int64_t host_bytes = 0;              ///< peak host bytes of this rank
  std::string peak_at;                 ///< where the allocator peak happens, e.g. "step 2, B m0 c0 block 3"
  DeviceBreakdown device;
  HostBreakdown host;
};

struct MemoryPlan {
  GpuSpec gpu;
  int world = 1;
  int64_t device_capacity_bytes = 0;  ///< gpu.total_bytes
  int64_t host_capacity_bytes = 0;
  int64_t host_bytes = 0;             ///< Σ over ranks (one host)
  bool device_fits = false, host_fits = false, fits = false;
  std::vector<RankMemory> ranks;      ///< every rank, in rank order
  std::vector<std::string> notes;     ///< what the model assumed where the trainer would refuse
  /// The rank with the largest device_required_bytes (first on ties).
  const RankMemory& worst() const;
};

/// The model of memory of `cfg` (validated for `world` ranks: launch::validate) on `world` GPUs
/// like `gpu` and one host of `host_capacity_bytes`. Throws UserError for a layer the model of
/// memory does not know, or a layout that cannot be built.
MemoryPlan plan_memory(const Config& cfg, int world, const GpuSpec& gpu, int64_t host_capacity_bytes);

/// Whether plan_memory knows every layer of `cfg` (architecture, norm, attention, MLP); when
/// not, `why` (if given) names the one it does not know (the trainer then skips its check).
bool memory_model_covers(const Config& cfg, std::string* why = nullptr);

/// One piece of advice: config overrides (as `--set` takes them) and the plan with them applied.
struct PlanChange {
  std::vector<std::string> sets;  ///< e.g. {"train.recompute=full"}
  MemoryPlan plan;
};

/// When `plan` (of cfg) does not fit: the smallest changes that make it fit, each checked by
/// rerunning plan_memory on the changed config (validated for `world`). Tried in order of cost:
/// recompute selective, recompute full, optimizer offload, activation offload, a smaller
/// micro-batch (same global batch), more pipeline stages, optim.state: 8bit (when that key
/// exists), and, when the host is short, moving state back to the device; singles first,
/// then, if none fits, pairs of them. Changes whose plan fits are returned, cheapest first;
/// when none does and the devices are short, the single changes that make the devices fit
/// (their plan.fits is false: the host stays short). Empty when the plan fits or nothing helps.
std::vector<PlanChange> plan_advice(const Config& cfg, int world, const GpuSpec& gpu, int64_t host_capacity_bytes,
                                    const MemoryPlan& plan);

/// The human report of `ptrain plan`: one table per distinct rank role (GiB), device peak
/// against the card, host total against the host, the verdict, and the advice.
std::string format_plan(const MemoryPlan& plan, const std::vector<PlanChange>& advice);
/// The `ptrain plan --json` object: fits, device_capacity_bytes, host_capacity_bytes,
/// host_bytes, device_fits, host_fits, gpu, world, ranks [{rank, stage, tp_rank, dp_rank,
/// params, in_flight, device_peak_bytes, device_reserved_bytes, device_required_bytes,
/// host_bytes, peak_at, breakdown: {device: {...}, host: {...}}}], advice [{sets, fits,
/// device_required_bytes, host_bytes}].
nlohmann::json plan_to_json(const MemoryPlan& plan, const std::vector<PlanChange>& advice);
/// The trainer's refusal: what does not fit, by how much, and the advice as --set lines.
std::string refusal_message(const MemoryPlan& plan, const std::vector<PlanChange>& advice);

/// `cfg` with `sets` ("a.b=c", value parsed as YAML) applied, as --set would (throws UserError).
Config apply_sets(const Config& cfg, const std::vector<std::string>& sets);

namespace detail {
// The device ops' scratch sizes, restated (CPU-only builds do not link core/cuda); in CUDA
// builds tests/launch/test_memory_plan.cpp checks each against the real function.
/// cuda::attention_forward_scratch_bytes: 0 in f32, else B·Hkv·T·T fp32 scores (256-aligned).
int64_t attention_forward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hkv);
/// cuda::attention_backward_scratch_bytes: B·Hkv·T·T fp32 dP (+ the dS chunk in dt unless f32).
int64_t attention_backward_scratch_bytes(DType dt, int64_t B, int64_t T, int64_t Hkv);
/// cuda::rms_norm_backward_scratch_bytes: ceil(rows / 64) · C fp32 partial dw.
int64_t rms_norm_backward_scratch_bytes(int64_t rows, int64_t C);
/// cuda::layer_norm_backward_scratch_bytes: 2 · ceil(rows / 64) · C fp32 partial dw, db.
int64_t layer_norm_backward_scratch_bytes(int64_t rows, int64_t C);
/// cuda::embedding_backward_scratch_bytes: 8-byte sort keys for n ids padded to a power of two >= 64.
int64_t embedding_backward_scratch_bytes(int64_t n);
/// cuda::optim_table_bytes: one 64-byte descriptor per tensor.
int64_t optim_table_bytes(int64_t n);
}  // namespace detail

}  // namespace ptrain::launch
