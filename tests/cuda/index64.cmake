# 64-bit index arithmetic of the embedding and cross-entropy kernels (tests/cuda/test_index64.cpp):
# buffers of more than 2^31 elements (about 4.3 GB each, one alive at a time). Label `cuda`:
# the emulated device in CI (its 24 GiB arena is reserved, not committed), a GPU when present;
# skipped without a device or without the memory. RESOURCE_LOCK "memory": never beside another
# memory-heavy test. Not in the ASan tree (tests/CMakeLists.txt's sanitizer list): 4 GB under
# ASan's shadow is more than CI gives it.
ptrain_test(test_index64 SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_index64.cpp DEPS ptrain_core LABELS cuda TIMEOUT 120)
set_property(TEST test_index64 PROPERTY RESOURCE_LOCK memory)
