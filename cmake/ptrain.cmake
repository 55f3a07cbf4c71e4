# Helpers shared by every folder's CMakeLists.txt.

# ptrain_library(NAME DIR [SUBDIRS a b] [DEPS x y]): a static library from every
# .cpp in DIR (and its listed subfolders), namespace ptrain::<folder>.
function(ptrain_library name)
  cmake_parse_arguments(A "" "" "SUBDIRS;DEPS" ${ARGN})
  set(globs ${CMAKE_CURRENT_SOURCE_DIR}/*.cpp)
  foreach(s IN LISTS A_SUBDIRS)
    list(APPEND globs ${CMAKE_CURRENT_SOURCE_DIR}/${s}/*.cpp)
  endforeach()
  file(GLOB srcs CONFIGURE_DEPENDS ${globs})
  add_library(${name} STATIC ${srcs})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(${name} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${PTRAIN_WARNINGS}>)
  target_link_libraries(${name} PUBLIC ${A_DEPS})
endfunction()

# ptrain_test(NAME SOURCES... [LABELS l] [TIMEOUT s] [DEPS x]): one GoogleTest binary,
# registered as one ctest case (the binary runs all its TESTs).
# ARGS: arguments of the registered run (e.g. a --gtest_filter); ptrain_test_run registers
# further runs of the same binary (a long test file split into cases that run in parallel).
function(ptrain_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;LABELS;DEPS;ARGS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${PTRAIN_WARNINGS})
  ptrain_test_run(${name} BINARY ${name} ARGS ${A_ARGS} LABELS ${A_LABELS} TIMEOUT ${A_TIMEOUT})
endfunction()

# ptrain_test_run(NAME BINARY b [ARGS ...] [LABELS l] [TIMEOUT s]): another ctest case running
# the test binary `b` (made by ptrain_test) with ARGS; defaults: label cpu, timeout 120 s.
function(ptrain_test_run name)
  cmake_parse_arguments(A "" "TIMEOUT;BINARY" "LABELS;ARGS" ${ARGN})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  if(NOT A_LABELS)
    set(A_LABELS cpu)
  endif()
  add_test(NAME ${name} COMMAND ${A_BINARY} ${A_ARGS})
  # A binary whose every test skipped (no GPU, not the emulated build) is reported skipped.
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
    SKIP_REGULAR_EXPRESSION "\\[  PASSED  \\] 0 tests"
    ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1;PTRAIN_TEST_TMP=${CMAKE_BINARY_DIR}/test_tmp")
endfunction()

# ---- MPI launches (tests, and trainer tests that run `mpirun ... ptrain`) ----
# PTRAIN_MPIEXEC_FLAGS: a CMake list of mpirun flags placed before `-np N`. For Open MPI:
#   --allow-run-as-root   containers and CI run as root; mpirun refuses otherwise.
#   --oversubscribe       4 ranks on a 2-core machine (default slots = cores).
#   --bind-to none        no core binding: oversubscribed ranks bound to one core crawl.
#   --mca pml ob1 --mca btl self,vader  shared memory only: no UCX/openib/tcp probing
#                         (slow start, warnings about missing devices in containers).
#   --mca btl_vader_single_copy_mechanism none  CMA (process_vm_readv) needs ptrace
#                         rights that containers without CAP_SYS_PTRACE lack; large
#                         messages then fail with "Read -1, expected ..., errno = 1".
# Other MPIs (MPICH) get no flags. Override with -DPTRAIN_MPIEXEC_FLAGS="a;b;c".
if(NOT DEFINED PTRAIN_MPIEXEC_FLAGS)
  set(_ptrain_mpi_flags "")
  if(MPIEXEC_EXECUTABLE)
    execute_process(COMMAND ${MPIEXEC_EXECUTABLE} --version OUTPUT_VARIABLE _ptrain_mpiexec_version
                    ERROR_VARIABLE _ptrain_mpiexec_version RESULT_VARIABLE _ptrain_mpiexec_rc)
    if(_ptrain_mpiexec_version MATCHES "Open MPI|OpenRTE")
      set(_ptrain_mpi_flags --allow-run-as-root --oversubscribe --bind-to none --mca pml ob1
          --mca btl self,vader --mca btl_vader_single_copy_mechanism none)
    endif()
  endif()
  set(PTRAIN_MPIEXEC_FLAGS "${_ptrain_mpi_flags}" CACHE STRING
      "mpirun flags (a CMake list) placed before -np N in mpi tests and trainer launches")
endif()

# ptrain_mpi_test(NAME SOURCES... [NP n] [DEPS x] [LABELS l] [TIMEOUT s]): one GoogleTest
# binary (main from tests/parallel/mpi_test_main.cpp: every rank runs every test, rank 0
# prints, the exit status is combined over ranks) run as one ctest case
# `mpirun ${PTRAIN_MPIEXEC_FLAGS} -np n binary` (label mpi, NP default 4). Tests of one NP
# hold the resource lock mpi<NP> so two of them never share the cores at once.
function(ptrain_mpi_test name)
  cmake_parse_arguments(A "" "NP;TIMEOUT" "SOURCES;LABELS;DEPS" ${ARGN})
  if(NOT A_NP)
    set(A_NP 4)
  endif()
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  if(NOT A_LABELS)
    set(A_LABELS mpi)
  endif()
  if(NOT TARGET ptrain_mpi_test_main)
    add_library(ptrain_mpi_test_main OBJECT ${PROJECT_SOURCE_DIR}/tests/parallel/mpi_test_main.cpp)
    target_link_libraries(ptrain_mpi_test_main PUBLIC ptrain_core MPI::MPI_CXX GTest::gtest)
    target_compile_options(ptrain_mpi_test_main PRIVATE ${PTRAIN_WARNINGS})
  endif()
  add_executable(${name} ${A_SOURCES} $<TARGET_OBJECTS:ptrain_mpi_test_main>)
  target_link_libraries(${name} PRIVATE ${A_DEPS} ptrain_core MPI::MPI_CXX GTest::gtest)
  target_compile_options(${name} PRIVATE ${PTRAIN_WARNINGS})
  add_test(NAME ${name} COMMAND ${MPIEXEC_EXECUTABLE} ${PTRAIN_MPIEXEC_FLAGS} -np ${A_NP}
                                $<TARGET_FILE:${name}>)
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT} RESOURCE_LOCK mpi${A_NP}
    ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1;PTRAIN_TEST_TMP=${CMAKE_BINARY_DIR}/test_tmp")
endfunction()
