# The caching allocator is pure host C++: its test builds and runs (label cpu) without nvcc
# or a GPU, so include this file from a CMakeLists.txt that is always processed. The source
# is part of ptrain_core in every build.
ptrain_test(test_caching_allocator
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/test_caching_allocator.cpp
  DEPS ptrain_core LABELS cpu TIMEOUT 60)
