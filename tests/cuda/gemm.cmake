# The device GEMM layer (core/cuda/gemm.h) against the CPU GEMM (tests/cuda/test_gemm.cpp).
# test_gemm, label `cuda`: the emulated device in CI (its cuBLASLt subset, core/simt/cublaslt.cpp),
# a GPU when present. test_gemm_gpu, label `gpu`: the same source with PTRAIN_GEMM_GPU_TEST=1,
# real cuBLASLt only (skipped in the emulated build or without a device), plus large shapes.
ptrain_test(test_gemm SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_gemm.cpp DEPS ptrain_core LABELS cuda TIMEOUT 300)
ptrain_test(test_gemm_gpu SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_gemm.cpp DEPS ptrain_core LABELS gpu TIMEOUT 300)
target_compile_definitions(test_gemm_gpu PRIVATE PTRAIN_GEMM_GPU_TEST=1)
