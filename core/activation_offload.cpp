// core/activation_offload.cpp — the build without a CUDA backend: activation offload moves
// device tensors, so there is nothing to offload (the trainer refuses it on device: cpu first).
#include "core/activation_offload.h"

#if !PTRAIN_HAVE_CUDA
namespace ptrain {

std::unique_ptr<ActivationOffload> ActivationOffload::create(int) {
  throw UserError(
      "train.offload.activations needs a build with the CUDA backend (it moves device tensors to pinned host "
      "memory). HINT: set train.offload.activations: false");
}
ActivationOffloadStats activation_offload_stats() { return {}; }
void reset_activation_offload_stats() {}
void activation_offload_trace_start(double) {}
std::vector<DeviceSpan> activation_offload_trace_collect() { return {}; }

}  // namespace ptrain
#endif
