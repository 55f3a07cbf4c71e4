// launch/weights_io.cpp — Hugging Face-named weight files in and out.
#include "launch/weights_io.h"

#include <algorithm>
#include <filesystem>
#include <set>

#include "core/h5io.h"
#include "launch/checkpoint.h"

namespace ptrain::launch {

namespace {
/// [a, b] -> [b, a]
Tensor transpose2d(const Tensor& t) {
  const int64_t a = t.dim(0), b = t.dim(1);
  Tensor r = Tensor::empty({b, a}, DType::f32);
  const float* s = t.data<float>();
  float* d = r.data<float>();
  for (int64_t i = 0; i < a; ++i)
    for (int64_t j = 0; j < b; ++j) d[j * a + i] = s[i * b + j];
  return r;
}
}  // namespace

std::vector<std::string> load_external_weights(const std::string& path, const std::vector<layers::ExternalWeight>& ws,
                                               std::vector<Tensor>& targets) {
  h5::File f = h5::File::open(path);
  std::set<std::string> used;
  for (size_t i = 0; i < ws.size(); ++i) {
    const auto& w = ws[i];
    PT_USER_CHECK(h5::has(f, w.name), "train.init_from: {} has no tensor '{}' (expected shape {}). HINT: the file must "
                  "hold every weight of the model under its Hugging Face name",
                  path, w.name, shape_str(w.external_shape()));
    const Shape fs = h5::shape(f, w.name);
    PT_USER_CHECK(fs == w.external_shape(), "train.init_from: {}: tensor '{}' has shape {} but the model needs {}. HINT: "
                  "check model.* sizes against the file",
                  path, w.name, shape_str(fs), shape_str(w.external_shape()));
    const auto st = h5::stored_type(f, w.name);
    PT_USER_CHECK(st == h5::StoredType::f32 || st == h5::StoredType::bf16 || st == h5::StoredType::f16 ||
                      st == h5::StoredType::f64,
                  "train.init_from: {}: tensor '{}' is stored as {} (accepted: fp32, bf16, fp16)", path, w.name,
                  h5::stored_type_name(st));
    Tensor t = h5::read(f, w.name);
    if (w.transpose) t = transpose2d(t);
    Tensor& dst = targets[i];
    PT_CHECK(dst.dtype() == DType::f32, "load target must be fp32");
    dst.zero_();
    std::copy_n(t.data<float>(), t.numel(), dst.data<float>());
    dst.round_();
    used.insert(w.name);
  }
  std::vector<std::string> extra;
  for (const auto& n : h5::list_datasets(f))
    if (!used.count(n)) extra.push_back(n);
  return extra;
}

void write_external_weights(const std::string& path, const std::vector<layers::ExternalWeight>& ws,
                            const std::vector<Tensor>& sources, DType store) {
  const std::string tmp = path + ".tmp";
  {
    h5::File f = h5::File::create(tmp);
    for (size_t i = 0; i < ws.size(); ++i) {
      const auto& w = ws[i];
      Tensor t = sources[i].dtype() == DType::f32 ? sources[i] : sources[i].to(DType::f32);
      if (w.rows >= 0) t = t.rows(0, w.rows);
      if (w.transpose) t = transpose2d(t);
      h5::write(f, w.name, t, store);
    }
  }
  fsync_path(tmp);
  std::filesystem::rename(tmp, path);
}

}  // namespace ptrain::launch
