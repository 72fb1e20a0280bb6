# The PyTorch extension bluefog.torch._C. Its flags come from setup.py, which
# asks torch.utils.cpp_extension (include/library paths, the C++11 ABI flag).
set(BLUEFOG_TORCH_INCLUDE_DIRS "" CACHE STRING "torch include dirs")
set(BLUEFOG_TORCH_LIBRARY_DIRS "" CACHE STRING "torch library dirs")
set(BLUEFOG_TORCH_CXX11_ABI "1" CACHE STRING "torch's _GLIBCXX_USE_CXX11_ABI")
set(BLUEFOG_PYTHON_INCLUDE_DIR "" CACHE PATH "Python headers")

file(GLOB BLUEFOG_TORCH_SOURCES CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/torch/*.cc")
add_library(bluefog_torch MODULE ${BLUEFOG_TORCH_SOURCES})
target_include_directories(bluefog_torch SYSTEM PRIVATE ${BLUEFOG_TORCH_INCLUDE_DIRS} ${BLUEFOG_PYTHON_INCLUDE_DIR})
target_link_directories(bluefog_torch PRIVATE ${BLUEFOG_TORCH_LIBRARY_DIRS})
target_link_libraries(bluefog_torch PRIVATE bluefog_core c10 torch torch_cpu torch_python)
target_compile_definitions(bluefog_torch PRIVATE
  TORCH_EXTENSION_NAME=_C TORCH_API_INCLUDE_EXTENSION_H
  _GLIBCXX_USE_CXX11_ABI=${BLUEFOG_TORCH_CXX11_ABI})
target_compile_options(bluefog_torch PRIVATE -Wall -Wno-unused-parameter -fvisibility=hidden)
set_target_properties(bluefog_torch PROPERTIES
  OUTPUT_NAME "_C" PREFIX "" SUFFIX "${BLUEFOG_PYTHON_EXT_SUFFIX}"
  LIBRARY_OUTPUT_DIRECTORY "${BLUEFOG_OUTPUT_ROOT}/bluefog/torch"
  BUILD_RPATH "$ORIGIN/../common;${BLUEFOG_TORCH_LIBRARY_DIRS};${BLUEFOG_MPI_LIBRARY_DIRS}")
