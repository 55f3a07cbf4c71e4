// launch/config.h — the typed configuration of the `ptrain` program.
//
// A run is described by one YAML file (configs/*.yaml) plus `--set a.b=c`
// overrides. This header holds the typed structs; their member initialisers
// below are the ONLY place defaults are written. config.cpp holds one table of
// field descriptors (key path, type with its bound, help text) from which
// parsing, type errors, `--set`, validation of bounds, the JSON/YAML dumps and
// `ptrain --help-config` (describe_keys) are all derived.
//
// Invariants:
//  * key paths equal the member paths (`model.hidden` is Config::model.hidden);
//    key names are part of the contract (DESIGN.md "The config, in outline");
//  * every error about user input is a ptrain::UserError with ONE line that
//    starts with "config error: ", names the full key path and the accepted
//    values;
//  * load_config() checks syntax, unknown keys, types and per-key bounds;
//    validate() re-checks the bounds and does every cross-key check, before
//    anything heavy (device memory, data files) is touched;
//  * from_json(to_json(c)) == c, and load_config of to_yaml(c) gives c.
#pragma once
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/dtype.h"

namespace ptrain::launch {

/// parallel.schedule: gpipe | 1f1b | interleaved | zero-bubble.
enum class PipeSchedule : uint8_t { gpipe, one_f_one_b, interleaved, zero_bubble };
/// train.recompute: none | selective (attention core) | full (whole block).
enum class Recompute : uint8_t { none, selective, full };
/// optim.schedule: cosine | constant (both after a linear warmup).
enum class LrSchedule : uint8_t { cosine, constant };
/// optim.name: adamw.
enum class Optimizer : uint8_t { adamw };
/// optim.state: fp32 (fp32 master and moments) | bf16-sr (the master on the bf16 grid, updated
/// with stochastic rounding; fp32 moments) | 8bit (bf16-sr master, block-wise 8-bit moments).
enum class OptimState : uint8_t { fp32, bf16_sr, int8 };
/// device: auto (a real GPU when the build and the machine have one, else the CPU) | cpu | cuda.
enum class DeviceChoice : uint8_t { automatic, cpu, cuda };

/// The YAML spelling of each choice ("1f1b", "zero-bubble", "auto", ...).
std::string_view to_string(PipeSchedule v);
std::string_view to_string(Recompute v);
std::string_view to_string(LrSchedule v);
std::string_view to_string(Optimizer v);
std::string_view to_string(OptimState v);
std::string_view to_string(DeviceChoice v);
// train.precision / train.grad_dtype are DTypes, spelled as dtype_name() does ("fp32", "bf16", "fp16").

struct ModelConfig {
  std::string arch = "llama";                ///< a registered architecture (llama | gpt2 | ...)
  int vocab_size = 32000;                    ///< tokenizer vocabulary (unpadded)
  int hidden = 4096;                         ///< residual width
  int layers = 32;                           ///< decoder blocks
  int heads = 32;                            ///< query heads
  std::optional<int> kv_heads;               ///< key/value heads; nullopt = heads
  int ffn_hidden = 11008;                    ///< MLP inner width
  int max_seq_len = 2048;                    ///< longest sequence (gpt2: position table size)
  double norm_eps = 1e-5;                    ///< epsilon of the norm layers
  double rope_theta = 10000.0;               ///< RoPE base (llama)
  std::optional<bool> tie_embeddings;        ///< nullopt = the architecture's default
  int pad_vocab_to = 128;                    ///< vocab padded up to a multiple of this
  std::optional<std::string> norm;           ///< registered norm layer overriding the arch's
  std::optional<std::string> mlp;            ///< registered MLP layer overriding the arch's
  std::optional<std::string> attention;      ///< registered attention layer overriding the arch's

  /// hidden / heads.
  int head_dim() const;
  /// kv_heads, or heads when null.
  int resolved_kv_heads() const;
  /// tie_embeddings, or the architecture's default when null: true for gpt2, false otherwise.
  bool resolved_tie_embeddings() const;
  /// vocab_size rounded up to a multiple of lcm(pad_vocab_to, tp).
  int padded_vocab(int tp = 1) const;

  bool operator==(const ModelConfig&) const = default;
};

struct ParallelConfig {
  int tp = 1;                                ///< tensor-parallel ranks (innermost)
  int pp = 1;                                ///< pipeline stages
  std::optional<int> dp;                     ///< data-parallel ranks; nullopt = "auto" = world/(tp*pp)
  PipeSchedule schedule = PipeSchedule::one_f_one_b;
  int virtual_stages = 1;                    ///< model chunks per pipeline rank (interleaved only)
  bool sequence_parallel = false;            ///< split norms/dropout activations along the sequence over TP
  std::optional<std::vector<int>> stage_layers;  ///< layers per (virtual) stage; nullopt = even split
  bool selftest = true;                      ///< check every group's collectives at start-up (parallel/selftest.h)
  double timeout_s = 300;                    ///< a blocking communicator call longer than this ends the job

  /// dp, or world_size / (tp * pp) when auto.
  int resolved_dp(int world_size) const;

  bool operator==(const ParallelConfig&) const = default;
};

struct OffloadConfig {
  bool activations = false;                  ///< saved activations to pinned host memory
  bool optimizer = false;                    ///< fp32 master, exp_avg, exp_avg_sq on the host (CPU AdamW)
  int prefetch = 1;                          ///< blocks ahead of backward that come back from the host

  bool operator==(const OffloadConfig&) const = default;
};

struct TrainConfig {
  int seq_len = 2048;                        ///< tokens per sequence (T)
  int micro_batch = 1;                       ///< sequences per micro-batch per DP rank
  int global_batch = 64;                     ///< sequences per update = micro_batch * dp * accumulation
  int steps = 1000;                          ///< updates
  uint64_t seed = 1234;                      ///< init, sampler and dropout key
  DType precision = DType::bf16;             ///< f32 | bf16 | f16 (YAML: fp32 | bf16 | fp16)
  DType grad_dtype = DType::f32;             ///< f32 | bf16 (YAML: fp32 | bf16)
  Recompute recompute = Recompute::none;
  std::optional<std::string> init_from;      ///< weights file (HF names) to start from
  int eval_every = 0;                        ///< steps between validation passes; 0 = never
  int eval_batches = 4;                      ///< global batches per validation pass
  double val_fraction = 0.0;                 ///< fraction of the windows held out, 0 <= x < 1
  int log_every = 1;                         ///< steps between progress lines
  int threads = 0;                           ///< CPU threads per rank; 0 = cores / local ranks
  bool tf32 = false;                         ///< allow TF32 for fp32 GEMMs on the GPU
  OffloadConfig offload;

  bool operator==(const TrainConfig&) const = default;
};

struct LossScaleConfig {
  double initial = 65536.0;                  ///< fp16 dynamic loss scale at step 0
  int growth_interval = 2000;                ///< steps without overflow before the scale doubles

  bool operator==(const LossScaleConfig&) const = default;
};

struct OptimConfig {
  Optimizer name = Optimizer::adamw;
  double lr = 3e-4;                          ///< peak learning rate
  double min_lr = 3e-5;                      ///< floor of the cosine schedule
  int warmup_steps = 100;                    ///< linear warmup updates
  LrSchedule schedule = LrSchedule::cosine;
  std::array<double, 2> betas = {0.9, 0.95};
  double eps = 1e-8;
  double weight_decay = 0.1;                 ///< on 2-D parameters only
  double grad_clip = 1.0;                    ///< max global grad norm; 0 = off
  int zero = 0;                              ///< 1 = shard optimizer state over DP (ZeRO-1)
  LossScaleConfig loss_scale;
  OptimState state = OptimState::fp32;       ///< how master weights and moments are stored

  bool operator==(const OptimConfig&) const = default;
};

struct DataConfig {
  std::string path = "data/corpus.h5";       ///< HDF5 tokens file (DESIGN.md "Data")
  bool shuffle = true;
  std::optional<std::string> val_path;       ///< separate validation tokens file

  bool operator==(const DataConfig&) const = default;
};

struct CheckpointConfig {
  std::string dir = "runs/default";          ///< run directory: checkpoints and metrics.jsonl
  int every = 500;                           ///< steps between checkpoints; 0 = only at the end
  int keep = 2;                              ///< newest checkpoints kept; 0 = keep all

  bool operator==(const CheckpointConfig&) const = default;
};

struct Config {
  ModelConfig model;
  ParallelConfig parallel;
  TrainConfig train;
  OptimConfig optim;
  DataConfig data;
  CheckpointConfig checkpoint;
  DeviceChoice device = DeviceChoice::automatic;

  /// parallel.resolved_dp(world_size).
  int resolved_dp(int world_size) const;
  /// Micro-batches per update per DP rank: global_batch / (micro_batch * dp).
  int accumulation_steps(int world_size) const;
  /// model.padded_vocab(parallel.tp).
  int padded_vocab() const;
  /// Tokens per update over all ranks: global_batch * seq_len.
  int64_t tokens_per_step() const;
  /// A copy with dp, kv_heads and tie_embeddings made explicit (for meta.json and metrics).
  Config resolved(int world_size) const;

  bool operator==(const Config&) const = default;
};

/// What validate() needs from outside the config: the world size and the layer registries.
/// An empty name list disables that registry check (for tools without a registry).
struct ValidationContext {
  int world_size = 1;
  std::vector<std::string> archs, norms, mlps, attentions;
};

/// Reads `yaml_path`, applies each `--set` override ("a.b=c", value parsed as YAML; later
/// ones win; a mapping value merges into a section), and converts to a Config.
/// Throws UserError (one line) for an unreadable file, a YAML syntax error, a top level that
/// is not a mapping, an unknown key, a wrong type or a value outside its key's bound.
Config load_config(const std::string& yaml_path, const std::vector<std::string>& sets = {});

/// Same as load_config, from YAML text; `origin` names it in messages (e.g. "<string>").
Config parse_config(const std::string& yaml_text, const std::vector<std::string>& sets = {},
                    const std::string& origin = "<string>");

/// Every semantic check, in one pass; throws UserError (one line) at the first failure.
/// Data files and train.init_from are checked elsewhere.
void validate(const Config& cfg, const ValidationContext& ctx);

/// The config as JSON (nested objects; dp "auto" or an int; null for unset optionals).
nlohmann::json to_json(const Config& cfg);
/// Inverse of to_json; unknown keys and wrong types throw UserError; missing keys take defaults.
Config from_json(const nlohmann::json& j);
/// The config as YAML text, in table order, readable by load_config.
std::string to_yaml(const Config& cfg);

/// One documented key.
struct KeyInfo {
  std::string path;           ///< "model.hidden"
  std::string type;           ///< "a positive integer", "one of gpipe, 1f1b, ..."
  std::string default_value;  ///< as YAML: "4096", "null", "[0.9, 0.95]"
  std::string help;
};
/// Every key, in table order.
const std::vector<KeyInfo>& config_keys();
/// Every key with its type, default and help: the text of `ptrain --help-config`.
std::string describe_keys();

}  // namespace ptrain::launch
