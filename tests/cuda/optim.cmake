# The optimizer-path kernels (core/cuda/{adamw,grad_norm}.cu) against optim/adamw.cpp and
# optim/grad_clip.cpp (tests/cuda/test_optim_cuda.cpp). Included by tests/cuda/CMakeLists.txt.
# Label `cuda`: runs on a GPU or in the emulated build, skipped (never passed) without a device.
ptrain_test(test_optim_cuda SOURCES test_optim_cuda.cpp DEPS ptrain_core ptrain_optim LABELS cuda TIMEOUT 120)
