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
  target_compile_options(${name} PRIVATE ${PTRAIN_WARNINGS})
  target_link_libraries(${name} PUBLIC ${A_DEPS})
endfunction()

# ptrain_test(NAME SOURCES... [LABELS l] [TIMEOUT s] [DEPS x]): one GoogleTest binary,
# registered as one ctest case (the binary runs all its TESTs).
function(ptrain_test name)
  cmake_parse_arguments(A "" "TIMEOUT" "SOURCES;LABELS;DEPS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest GTest::gtest_main)
  target_compile_options(${name} PRIVATE ${PTRAIN_WARNINGS})
  if(NOT A_TIMEOUT)
    set(A_TIMEOUT 120)
  endif()
  if(NOT A_LABELS)
    set(A_LABELS cpu)
  endif()
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "${A_LABELS}" TIMEOUT ${A_TIMEOUT}
    ENVIRONMENT "OMP_NUM_THREADS=1;OPENBLAS_NUM_THREADS=1;PTRAIN_TEST_TMP=${CMAKE_BINARY_DIR}/test_tmp")
endfunction()
