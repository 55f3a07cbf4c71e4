// launch/weights_io.h — weights in (train.init_from) and out (ptrain export).
//
// File layout (DESIGN.md, "Weights in and out"): one dataset per tensor at the file's
// root, named by its full dotted Hugging Face name, in Hugging Face's shape (unpadded
// vocabulary; GPT-2 Conv1D weights transposed), fp32 or bf16 (2-byte HDF5 float with
// bf16's bit layout). Conversion to our layout happens here and only here.
#pragma once
#include <string>
#include <vector>

#include "core/tensor.h"
#include "layers/model.h"

namespace ptrain::launch {

/// Fills targets[i] (fp32, our padded shape of ws[i].param) from `path`; padding rows are
/// zeroed. UserError naming the file and tensor for a missing tensor, a shape mismatch, a
/// non-float dataset, or an unreadable / non-HDF5 file. Returns names present in the file
/// that the model does not use (the caller warns).
std::vector<std::string> load_external_weights(const std::string& path, const std::vector<layers::ExternalWeight>& ws,
                                               std::vector<Tensor>& targets);
/// Writes sources[i] (our layout) as ws[i]'s external tensor, atomically (path.tmp + rename).
void write_external_weights(const std::string& path, const std::vector<layers::ExternalWeight>& ws,
                            const std::vector<Tensor>& sources, DType store);

}  // namespace ptrain::launch
