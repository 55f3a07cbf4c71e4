# The CUDA backend, part of ptrain_core (core/ owns the op set with its CPU and CUDA kernels;
# DESIGN.md): kernels (.cu), their host launchers, the device allocator. Built by nvcc for
# sm_89 (RTX 4090) and sm_90 (H100), or, with PTRAIN_CUDA_EMULATION=ON, by the host compiler
# against the SIMT runtime (core/simt): the same sources either way. Included from
# core/CMakeLists.txt when the build has a CUDA backend.
file(GLOB cu_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/*.cu)
file(GLOB cpp_srcs CONFIGURE_DEPENDS ${CMAKE_CURRENT_SOURCE_DIR}/cuda/*.cpp)
list(FILTER cpp_srcs EXCLUDE REGEX "caching_allocator\\.cpp$")  # always in core (plain C++)
target_sources(ptrain_core PRIVATE ${cu_srcs} ${cpp_srcs})
target_compile_definitions(ptrain_core PUBLIC PTRAIN_HAVE_CUDA=1)
if(PTRAIN_CUDA_EMULATION)
  set_source_files_properties(${cu_srcs} PROPERTIES LANGUAGE CXX COMPILE_OPTIONS "-x;c++")
  target_compile_definitions(ptrain_core PUBLIC PTRAIN_CUDA_EMULATED=1)
  target_link_libraries(ptrain_core PUBLIC ptrain_simt)
else()
  target_compile_definitions(ptrain_core PUBLIC PTRAIN_CUDA_EMULATED=0)
  target_link_libraries(ptrain_core PUBLIC CUDA::cudart CUDA::cublasLt)
  # Every warning is an error; spills and local memory reported; per-kernel resource usage in
  # the build log; PTX of compute_89 and compute_90 embedded next to the sm_89/sm_90 cubins.
  target_compile_options(ptrain_core PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra,-Wno-unused-parameter --Werror=all-warnings -Xptxas=-warn-spills,-warn-lmem-usage --resource-usage>)
  set_target_properties(ptrain_core PROPERTIES CUDA_STANDARD 20 CUDA_STANDARD_REQUIRED ON
    CUDA_SEPARABLE_COMPILATION OFF POSITION_INDEPENDENT_CODE ON)
endif()
