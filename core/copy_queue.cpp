// core/copy_queue.cpp — the build without a CUDA backend: there is no device to copy to.
#include "core/copy_queue.h"

#include "core/error.h"

#if !PTRAIN_HAVE_CUDA
namespace ptrain {

std::unique_ptr<CopyQueue> CopyQueue::create() {
  throw UserError("a host <-> device copy queue needs a build with the CUDA backend. HINT: device: cpu keeps every "
                  "tensor in host memory already");
}

}  // namespace ptrain
#endif
