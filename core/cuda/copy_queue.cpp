// core/cuda/copy_queue.cpp — see core/copy_queue.h: one non-blocking CUDA stream, one reusable
// ordering event each way (a wait captures the event's latest record when it is issued), host
// callbacks through cudaLaunchHostFunc.
#include "core/copy_queue.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "core/cuda/launch_stats.h"

namespace ptrain {

namespace {

constexpr cudaStream_t kCompute = nullptr;  // ptrain's kernels and the caching allocator's tensors

class CudaCopyQueue final : public CopyQueue {
 public:
  CudaCopyQueue() {
    PT_CUDA_RT_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    PT_CUDA_RT_CHECK(cudaEventCreateWithFlags(&compute_done_, cudaEventDisableTiming));
    PT_CUDA_RT_CHECK(cudaEventCreateWithFlags(&copies_done_, cudaEventDisableTiming));
  }
  ~CudaCopyQueue() override {
    // nothing may still read or write the pinned buffers: finish the queue first
    cudaStreamSynchronize(stream_);
    for (void* p : pinned_) cudaFreeHost(p);
    cudaEventDestroy(compute_done_);
    cudaEventDestroy(copies_done_);
    cudaStreamDestroy(stream_);
  }

  void* pinned(size_t bytes) override {
    void* p = nullptr;
    PT_CUDA_RT_CHECK(cudaMallocHost(&p, bytes ? bytes : 1));
    pinned_.push_back(p);
    return p;
  }
  void wait_compute() override {
    PT_CUDA_RT_CHECK(cudaEventRecord(compute_done_, kCompute));
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(stream_, compute_done_, 0));
  }
  void to_host(void* host, const void* dev, size_t bytes) override {
    if (bytes) PT_CUDA_RT_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, stream_));
  }
  void to_device(void* dev, const void* host, size_t bytes) override {
    if (bytes) PT_CUDA_RT_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream_));
  }
  void then(std::function<void()> fn) override {
    auto* f = new std::function<void()>(std::move(fn));
    const cudaError_t e = cudaLaunchHostFunc(stream_, &CudaCopyQueue::trampoline, f);
    if (e != cudaSuccess) {
      delete f;
      PT_CUDA_RT_CHECK(e);
    }
  }
  void poll() override {
    const cudaError_t e = cudaStreamQuery(stream_);
    if (e != cudaErrorNotReady) PT_CUDA_RT_CHECK(e);
  }
  void synchronize() override { PT_CUDA_RT_CHECK(cudaStreamSynchronize(stream_)); }
  void compute_waits() override {
    PT_CUDA_RT_CHECK(cudaEventRecord(copies_done_, stream_));
    PT_CUDA_RT_CHECK(cudaStreamWaitEvent(kCompute, copies_done_, 0));
  }

 private:
  static void CUDART_CB trampoline(void* user) {
    auto* f = static_cast<std::function<void()>*>(user);
    (*f)();
    delete f;
  }
  cudaStream_t stream_ = nullptr;
  cudaEvent_t compute_done_ = nullptr, copies_done_ = nullptr;
  std::vector<void*> pinned_;
};

}  // namespace

std::unique_ptr<CopyQueue> CopyQueue::create() { return std::make_unique<CudaCopyQueue>(); }

}  // namespace ptrain
