// launch/checkpoint.cpp — atomic, layout-independent checkpoints.
#include "launch/checkpoint.h"

#include <map>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "core/h5io.h"

namespace fs = std::filesystem;

namespace ptrain::launch {

namespace {

bool parse_step_dir(const std::string& name, int64_t& step, bool& tmp) {
  if (name.rfind("step_", 0) != 0) return false;
  std::string rest = name.substr(5);
  tmp = rest.size() > 4 && rest.compare(rest.size() - 4, 4, ".tmp") == 0;
  if (tmp) rest.resize(rest.size() - 4);
  if (rest.empty() || rest.find_first_not_of("0123456789") != std::string::npos) return false;
  step = std::stoll(rest);
  return true;
}

std::vector<int64_t> complete_steps(const std::string& dir) {
  std::vector<int64_t> steps;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return steps;
  for (const auto& e : fs::directory_iterator(dir)) {
    int64_t s;
    bool tmp;
    if (e.is_directory() && parse_step_dir(e.path().filename().string(), s, tmp) && !tmp &&
        fs::exists(e.path() / "meta.json"))
      steps.push_back(s);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

Shape zeros_like_shape(const Shape& s) { return Shape(s.size(), 0); }

/// Copies the N-d block `src` (shape sc, row-major) into `dst` (shape dc) at offset `at`.
void copy_block(const float* src, const Shape& sc, float* dst, const Shape& dc, const Shape& at) {
  const size_t nd = sc.size();
  if (nd == 0) {
    dst[0] = src[0];
    return;
  }
  std::vector<int64_t> dstride(nd, 1), sstride(nd, 1);
  for (size_t d = nd - 1; d > 0; --d) {
    dstride[d - 1] = dstride[d] * dc[d];
    sstride[d - 1] = sstride[d] * sc[d];
  }
  const int64_t inner = sc[nd - 1];
  const int64_t outer = shape_numel(sc) / std::max<int64_t>(inner, 1);
  std::vector<int64_t> idx(nd, 0);
  for (int64_t o = 0; o < outer; ++o) {
    int64_t rem = o, doff = at[nd - 1], soff = 0;
    for (size_t d = nd - 1; d-- > 0;) {
      const int64_t i = rem % sc[d];
      rem /= sc[d];
      doff += (i + at[d]) * dstride[d];
      soff += i * sstride[d];
    }
    std::memcpy(dst + doff, src + soff, static_cast<size_t>(inner) * sizeof(float));
  }
}

}  // namespace

std::string step_dir_name(int64_t step) { return fmt::format("step_{:08d}", step); }

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

void write_file_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    PT_CHECK(f.good(), "cannot write {}", tmp);
    f << text;
    f.flush();
    PT_CHECK(f.good(), "writing {} failed (disk full?)", tmp);
  }
  fsync_path(tmp);
  fs::rename(tmp, path);
  fsync_path(fs::path(path).parent_path().string());
}

std::optional<int64_t> latest_checkpoint(const std::string& dir, bool clean) {
  std::error_code ec;
  if (clean && fs::is_directory(dir, ec)) {
    for (const auto& e : fs::directory_iterator(dir)) {
      int64_t s;
      bool tmp;
      if (parse_step_dir(e.path().filename().string(), s, tmp) && tmp) fs::remove_all(e.path(), ec);
    }
  }
  auto steps = complete_steps(dir);
  if (steps.empty()) return std::nullopt;
  return steps.back();
}

void write_rank_file(const std::string& dir, int64_t step, int rank, const std::vector<CkptEntry>& entries) {
  const fs::path tmpdir = fs::path(dir) / (step_dir_name(step) + ".tmp");
  fs::create_directories(tmpdir);
  const std::string path = (tmpdir / fmt::format("rank_{:05d}.h5", rank)).string();
  {
    h5::File f = h5::File::create(path);
    std::map<std::string, int> pieces;  // several slabs of one tensor (fused q,k,v under TP): name, name@1, ...
    for (const auto& entry : entries) {
      if (!entry.write) continue;
      CkptEntry produced;
      if (entry.make) {
        produced = entry;
        produced.tensor = entry.make();
      }
      const CkptEntry& e = entry.make ? produced : entry;
      if (e.flat_offset >= 0) {  // a ZeRO-1 shard: a flat range of the full tensor
        PT_CHECK(e.tensor.ndim() == 1 && e.flat_offset + e.tensor.numel() <= shape_numel(e.full_shape),
                 "checkpoint entry {}/{}: flat range [{}, +{}) outside {}", e.group, e.name, e.flat_offset,
                 e.tensor.numel(), shape_str(e.full_shape));
        std::string name = e.group + "/" + e.name;
        const int k = pieces[name]++;
        if (k > 0) name.append(1, '@').append(std::to_string(k));
        h5::write(f, name, e.tensor.device() == Device::cpu ? e.tensor : e.tensor.to_device(Device::cpu), e.store);
        h5::write_attr(f, name, "full_shape", std::vector<int64_t>(e.full_shape.begin(), e.full_shape.end()));
        h5::write_attr(f, name, "flat_offset", e.flat_offset);
        continue;
      }
      const Shape off = e.offset.empty() ? zeros_like_shape(e.full_shape) : e.offset;
      Tensor block = e.tensor;
      // Vocabulary padding: rows beyond the full shape are not part of the checkpoint.
      if (block.ndim() >= 1 && off[0] + block.dim(0) > e.full_shape[0]) {
        if (off[0] >= e.full_shape[0]) continue;  // a slab of padding rows only
        block = block.rows(0, e.full_shape[0] - off[0]);
      }
      std::string name = e.group + "/" + e.name;
      const int k = pieces[name]++;
      if (k > 0) name.append(1, '@').append(std::to_string(k));
      // device tensors come down one at a time: host memory grows by one tensor, not the state
      h5::write(f, name, block.device() == Device::cpu ? block : block.to_device(Device::cpu), e.store);
      h5::write_attr(f, name, "full_shape", std::vector<int64_t>(e.full_shape.begin(), e.full_shape.end()));
      h5::write_attr(f, name, "offset", std::vector<int64_t>(off.begin(), off.end()));
    }
  }
  fsync_path(path);
}

void finalize_checkpoint(const std::string& dir, int64_t step, const nlohmann::json& meta, int keep) {
  const fs::path tmpdir = fs::path(dir) / (step_dir_name(step) + ".tmp");
  const fs::path final_dir = fs::path(dir) / step_dir_name(step);
  fs::create_directories(tmpdir);
  write_file_atomic((tmpdir / "meta.json").string(), meta.dump(2) + "\n");
  fsync_path(tmpdir.string());
  std::error_code ec;
  if (fs::exists(final_dir)) {  // re-saving the same step (e.g. SIGTERM right after a save)
    fs::path old = fs::path(dir) / (step_dir_name(step) + ".old.tmp");
    fs::remove_all(old, ec);
    fs::rename(final_dir, old);
    fs::rename(tmpdir, final_dir);
    fs::remove_all(old, ec);
  } else {
    fs::rename(tmpdir, final_dir);
  }
  fsync_path(dir);
  if (keep > 0) {
    auto steps = complete_steps(dir);
    for (size_t i = 0; i + static_cast<size_t>(keep) < steps.size(); ++i) {
      // Rename first (atomic), so a kill mid-delete leaves only a *.tmp that resume ignores.
      const fs::path victim = fs::path(dir) / step_dir_name(steps[i]);
      const fs::path doomed = fs::path(dir) / (step_dir_name(steps[i]) + ".tmp");
      fs::remove_all(doomed, ec);
      fs::rename(victim, doomed, ec);
      fs::remove_all(doomed, ec);
    }
  }
}

nlohmann::json read_meta(const std::string& dir, int64_t step) {
  const std::string path = (fs::path(dir) / step_dir_name(step) / "meta.json").string();
  std::ifstream f(path);
  PT_USER_CHECK(f.good(), "checkpoint {}: cannot read meta.json. HINT: the checkpoint is incomplete; remove it or resume from another", path);
  try {
    return nlohmann::json::parse(f);
  } catch (const std::exception& e) {
    throw UserError(fmt::format("checkpoint {}: meta.json is not valid JSON ({})", path, e.what()));
  }
}

namespace {
/// Copies the part of dataset `name` that overlaps entry e's block into e.tensor; returns the
/// number of elements copied. Datasets are hyperslabs (`offset`) or flat ranges of the
/// row-major full tensor (`flat_offset`, ZeRO-1 shards).
int64_t read_overlap(h5::File& f, const std::string& name, CkptEntry& e, const std::string& where) {
  auto fshape = h5::read_attr_ints(f, name, "full_shape");
  PT_USER_CHECK(Shape(fshape.begin(), fshape.end()) == e.full_shape,
                "checkpoint {}: tensor {} has shape {} but the model's is {}. HINT: the model config differs "
                "from the one that wrote the checkpoint",
                where, e.name, shape_str(Shape(fshape.begin(), fshape.end())), shape_str(e.full_shape));
  const Shape myoff = e.offset.empty() ? zeros_like_shape(e.full_shape) : e.offset;
  Shape mycount = e.tensor.shape();
  if (mycount.size() >= 1) mycount[0] = std::max<int64_t>(0, std::min(mycount[0], e.full_shape[0] - myoff[0]));
  const size_t nd = e.full_shape.size();
  if (h5::has_attr(f, name, "flat_offset")) {
    const int64_t fo = h5::read_attr_int(f, name, "flat_offset");
    Tensor t = h5::read(f, name);
    const float* src = t.data<float>();
    float* dst = e.tensor.data<float>();
    const Shape& mshape = e.tensor.shape();
    int64_t copied = 0;
    for (int64_t i = 0; i < t.numel(); ++i) {
      // full multi-index of flat element fo + i, then its place in our block (if inside)
      int64_t rem = fo + i, local = 0, stride = 1;
      bool inside = true;
      std::vector<int64_t> idx(nd);
      for (size_t d = nd; d-- > 0;) {
        idx[d] = rem % e.full_shape[d];
        rem /= e.full_shape[d];
      }
      for (size_t d = nd; d-- > 0;) {
        const int64_t li = idx[d] - myoff[d];
        if (li < 0 || li >= mycount[d]) {
          inside = false;
          break;
        }
        local += li * stride;
        stride *= mshape[d];
      }
      if (inside) {
        dst[local] = src[i];
        ++copied;
      }
    }
    return copied;
  }
  const Shape fcount = h5::shape(f, name);
  auto foff_v = h5::read_attr_ints(f, name, "offset");
  const Shape foff(foff_v.begin(), foff_v.end());
  Shape lo(nd), cnt(nd);
  for (size_t d = 0; d < nd; ++d) {
    lo[d] = std::max(myoff[d], foff[d]);
    const int64_t hi = std::min(myoff[d] + mycount[d], foff[d] + fcount[d]);
    cnt[d] = hi - lo[d];
    if (cnt[d] <= 0) return 0;
  }
  Shape in_file(nd), in_mine(nd);
  for (size_t d = 0; d < nd; ++d) {
    in_file[d] = lo[d] - foff[d];
    in_mine[d] = lo[d] - myoff[d];
  }
  Tensor block = h5::read_slab(f, name, in_file, cnt);
  copy_block(block.data<float>(), cnt, e.tensor.data<float>(), e.tensor.shape(), in_mine);
  return shape_numel(cnt);
}
}  // namespace

void read_checkpoint(const std::string& dir, int64_t step, std::vector<CkptEntry>& entries) {
  const fs::path sdir = fs::path(dir) / step_dir_name(step);
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(sdir))
    if (e.path().extension() == ".h5") files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  PT_USER_CHECK(!files.empty(), "checkpoint {} holds no rank_*.h5 file", sdir.string());
  std::vector<int64_t> filled(entries.size(), 0);
  for (const auto& path : files) {
    h5::File f = h5::File::open(path);
    for (size_t k = 0; k < entries.size(); ++k) {
      CkptEntry& e = entries[k];
      const std::string base = e.group + "/" + e.name;
      for (int piece = 0;; ++piece) {
        const std::string name = piece == 0 ? base : base + "@" + std::to_string(piece);
        if (!h5::has(f, name)) break;
        filled[k] += read_overlap(f, name, e, sdir.string());
      }
    }
  }
  for (size_t k = 0; k < entries.size(); ++k) {
    CkptEntry& e = entries[k];
    const Shape myoff = e.offset.empty() ? zeros_like_shape(e.full_shape) : e.offset;
    Shape mycount = e.tensor.shape();
    if (mycount.size() >= 1) mycount[0] = std::max<int64_t>(0, std::min(mycount[0], e.full_shape[0] - myoff[0]));
    PT_USER_CHECK(filled[k] == shape_numel(mycount),
                  "checkpoint {}: tensor {}/{} is {} (found {} of {} elements). HINT: the checkpoint was written by a "
                  "different model or is damaged",
                  sdir.string(), e.group, e.name, filled[k] == 0 ? "missing" : "incomplete", filled[k],
                  shape_numel(mycount));
    e.tensor.round_();
  }
}

}  // namespace ptrain::launch
