# The CUDA op harness (tests/cuda/test_ops_cuda.cpp): every CUDA op against its CPU op, with the
# tolerance table tests/cuda/op_tolerances.h. Included by tests/cuda/CMakeLists.txt. Label
# `cuda`: runs on a GPU or in the emulated build, skipped (never passed) without a device.
ptrain_test(test_ops_cuda SOURCES test_ops_cuda.cpp DEPS ptrain_core LABELS cuda TIMEOUT 120)
