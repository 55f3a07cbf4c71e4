// launch/metrics.h — metrics.jsonl: one JSON object per step, written by world rank 0.
//
// Floats are written so they read back exactly: doubles as the shortest round-trip
// representation, fp32 values with %.9g. On resume the file is cut back to the
// resumed step (a kill can leave later or torn lines).
#pragma once
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/dtype.h"

namespace ptrain::launch {

/// A JSON object built field by field with exact float formatting.
class MetricsRow {
 public:
  MetricsRow& add(const std::string& key, int64_t v);
  MetricsRow& add(const std::string& key, double v);    ///< shortest round-trip (null if not finite)
  MetricsRow& add_f32(const std::string& key, float v);  ///< %.9g
  MetricsRow& add(const std::string& key, bool v);
  MetricsRow& add(const std::string& key, const std::string& v);
  MetricsRow& add_null(const std::string& key);
  std::string str() const;

 private:
  std::vector<std::pair<std::string, std::string>> fields_;
};

class MetricsWriter {
 public:
  /// Opens (creating) `path` for appending; lines with step > keep_up_to_step (and torn
  /// lines) are removed first. keep_up_to_step = 0 empties the file.
  MetricsWriter(const std::string& path, int64_t keep_up_to_step);
  ~MetricsWriter();
  MetricsWriter(const MetricsWriter&) = delete;
  MetricsWriter& operator=(const MetricsWriter&) = delete;
  void write(const MetricsRow& row);

 private:
  std::FILE* f_ = nullptr;
};

/// Model FLOPs per token of a training step (DESIGN.md): 6·N + 12·layers·hidden·seq_len
/// (forward and backward of the weights, plus attention's scores and weighted sums).
double model_flops_per_token(int64_t params, int64_t layers, int64_t hidden, int64_t seq_len);
/// Dense peak FLOP/s of a GPU (by its CUDA device name) for a training precision: bf16/fp16
/// tensor cores with fp32 accumulation, fp32 (TF32 tensor cores when `tf32`). nullopt for a
/// GPU the table does not know (MFU is then not reported). Table: launch/metrics.cpp.
std::optional<double> gpu_peak_flops(const std::string& device_name, DType precision, bool tf32);

/// Reads metrics.jsonl rows (tests and tools): each line parsed as JSON text.
std::vector<std::string> read_metric_lines(const std::string& path);

}  // namespace ptrain::launch
