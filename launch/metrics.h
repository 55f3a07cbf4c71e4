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

/// Reads metrics.jsonl rows (tests and tools): each line parsed as JSON text.
std::vector<std::string> read_metric_lines(const std::string& path);

}  // namespace ptrain::launch
