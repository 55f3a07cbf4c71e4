// launch/metrics.cpp — exact-float JSON lines.
#include "launch/metrics.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "launch/checkpoint.h"

namespace ptrain::launch {

MetricsRow& MetricsRow::add(const std::string& key, int64_t v) {
  fields_.emplace_back(key, std::to_string(v));
  return *this;
}
MetricsRow& MetricsRow::add(const std::string& key, double v) {
  fields_.emplace_back(key, std::isfinite(v) ? fmt::format("{}", v) : "null");
  return *this;
}
MetricsRow& MetricsRow::add_f32(const std::string& key, float v) {
  fields_.emplace_back(key, std::isfinite(v) ? fmt::format("{:.9g}", v) : "null");
  return *this;
}
MetricsRow& MetricsRow::add(const std::string& key, bool v) {
  fields_.emplace_back(key, v ? "true" : "false");
  return *this;
}
MetricsRow& MetricsRow::add(const std::string& key, const std::string& v) {
  fields_.emplace_back(key, nlohmann::json(v).dump());
  return *this;
}
MetricsRow& MetricsRow::add_null(const std::string& key) {
  fields_.emplace_back(key, "null");
  return *this;
}
std::string MetricsRow::str() const {
  std::string s = "{";
  for (size_t i = 0; i < fields_.size(); ++i)
    s += fmt::format("{}\"{}\": {}", i ? ", " : "", fields_[i].first, fields_[i].second);
  return s + "}";
}

MetricsWriter::MetricsWriter(const std::string& path, int64_t keep_up_to_step) {
  std::string kept;
  if (std::filesystem::exists(path) && keep_up_to_step > 0) {
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // no trailing newline: a torn last line
      try {
        auto j = nlohmann::json::parse(line);
        if (j.contains("step") && j["step"].get<int64_t>() <= keep_up_to_step) kept += line + "\n";
      } catch (const std::exception&) {
        // torn or foreign line: dropped
      }
    }
  }
  write_file_atomic(path, kept);
  f_ = std::fopen(path.c_str(), "a");
  PT_CHECK(f_, "cannot open {} for appending", path);
}

MetricsWriter::~MetricsWriter() {
  if (f_) std::fclose(f_);
}

void MetricsWriter::write(const MetricsRow& row) {
  const std::string s = row.str() + "\n";
  PT_CHECK(std::fwrite(s.data(), 1, s.size(), f_) == s.size(), "writing metrics failed (disk full?)");
  std::fflush(f_);
}

std::vector<std::string> read_metric_lines(const std::string& path) {
  std::vector<std::string> r;
  std::ifstream in(path);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) r.push_back(line);
  return r;
}

double model_flops_per_token(int64_t params, int64_t layers, int64_t hidden, int64_t seq_len) {
  return 6.0 * static_cast<double>(params) +
         12.0 * static_cast<double>(layers) * static_cast<double>(hidden) * static_cast<double>(seq_len);
}

std::optional<double> gpu_peak_flops(const std::string& device_name, DType precision, bool tf32) {
  // Dense (no structured sparsity) vendor figures, TFLOP/s: {name part, bf16/fp16 with fp32
  // accumulation, tf32, fp32}. More specific names first ("H100 PCIe" before "H100").
  struct Peak {
    const char* name;
    double half, tf32, fp32;
  };
  static constexpr Peak kPeaks[] = {
      {"RTX 4090", 165.2, 82.6, 82.6},  {"RTX 3090", 71.0, 35.6, 35.6}, {"L40S", 362.05, 183.0, 91.6},
      {"H100 PCIe", 756.5, 378.0, 51.2}, {"H100", 989.4, 494.7, 66.9},  {"H200", 989.4, 494.7, 66.9},
      {"A100", 312.0, 156.0, 19.5},
  };
  for (const Peak& p : kPeaks) {
    if (device_name.find(p.name) == std::string::npos) continue;
    const double t = is_low_precision(precision) ? p.half : (tf32 ? p.tf32 : p.fp32);
    return t * 1e12;
  }
  return std::nullopt;
}

}  // namespace ptrain::launch
