# Device causal GQA attention (core/cuda/attention.h) against the CPU op: tests/cuda/test_attention_cuda.cpp,
# tolerances in tests/cuda/op_tolerances.h. Included by tests/cuda/CMakeLists.txt. Label `cuda`: runs on
# a GPU or in the emulated build, skipped (never passed) without a device.
ptrain_test(test_attention_cuda SOURCES test_attention_cuda.cpp DEPS ptrain_core LABELS cuda TIMEOUT 120)
