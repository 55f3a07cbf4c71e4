// launch/checkpoint.h — checkpoints exactly as DESIGN.md's contract says.
//
//   checkpoint.dir/step_%08d/            complete checkpoints (have meta.json)
//   checkpoint.dir/step_%08d.tmp/        being written (never picked by --resume)
//     rank_%05d.h5   datasets /{param,master,exp_avg,exp_avg_sq}/<full name>, attributes
//                    full_shape and offset (a hyperslab of the full tensor) or flat_offset
//                    (a range of the row-major full tensor, for ZeRO-1 shards)
//     meta.json      written last, by rank 0, after every rank has closed its file
// The directory is renamed from .tmp only after meta.json is on disk (fsync'd), so a
// kill at any moment leaves the previous complete checkpoint as the newest one.
// Reading assembles each tensor from whatever slices the files hold, so a checkpoint
// written in one TP/PP/DP layout loads into another.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.h"

namespace ptrain::launch {

/// One tensor (or slice of one) this rank writes or reads.
struct CkptEntry {
  std::string group;   ///< "param" | "master" | "exp_avg" | "exp_avg_sq"
  std::string name;    ///< full parameter name
  Tensor tensor;       ///< this rank's block (write: host or device, copied down one at a time);
                       ///< rows beyond full_shape (vocab padding) are not stored
  Shape full_shape;    ///< the full, unsharded, unpadded shape
  Shape offset;        ///< where the block starts in the full tensor (empty = all zeros)
  DType store = DType::f32;  ///< stored dtype (f32 | bf16 | f16)
  bool write = true;   ///< false for replicas another rank writes
  /// >= 0 (write only): `tensor` is 1-D, the elements [flat_offset, flat_offset + numel) of the
  /// row-major full tensor (a ZeRO-1 shard; `offset` unused).
  int64_t flat_offset = -1;
  /// Write only, optional: produces `tensor` when the file is written (an 8-bit moment decoded
  /// just then), so a checkpoint holds one decoded tensor in host memory at a time.
  std::function<Tensor()> make;
};

std::string step_dir_name(int64_t step);
/// The newest step of `dir` with a meta.json; with `clean`, removes *.tmp leftovers first.
std::optional<int64_t> latest_checkpoint(const std::string& dir, bool clean);
/// Writes this rank's entries into dir/step_%08d.tmp/rank_%05d.h5 (flushed and fsync'd).
void write_rank_file(const std::string& dir, int64_t step, int rank, const std::vector<CkptEntry>& entries);
/// Rank 0, after every rank's write_rank_file: writes meta.json, renames the directory
/// into place, then removes all but the newest `keep` checkpoints (0 = keep all).
void finalize_checkpoint(const std::string& dir, int64_t step, const nlohmann::json& meta, int keep);
/// meta.json of a complete checkpoint (UserError if missing or malformed).
nlohmann::json read_meta(const std::string& dir, int64_t step);
/// Fills every entry's tensor from the checkpoint (any writing layout). UserError naming
/// the first tensor that is missing, has a different full shape, or is not fully covered.
void read_checkpoint(const std::string& dir, int64_t step, std::vector<CkptEntry>& entries);

/// Writes `text` to `path` atomically (path.tmp, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& text);
/// fsync of a file or directory path (best effort on filesystems without it).
void fsync_path(const std::string& path);

}  // namespace ptrain::launch
