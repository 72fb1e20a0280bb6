# The framework-agnostic core, one shared library per process.
file(GLOB BLUEFOG_CORE_SOURCES CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/common/*.cc")
add_library(bluefog_core SHARED ${BLUEFOG_CORE_SOURCES})
target_link_libraries(bluefog_core PUBLIC MPI::MPI_CXX)
target_compile_options(bluefog_core PRIVATE -Wall -Wextra -Wno-unused-parameter)
find_package(Threads REQUIRED)
target_link_libraries(bluefog_core PUBLIC Threads::Threads)
set_target_properties(bluefog_core PROPERTIES
  OUTPUT_NAME "_bluefog_core" PREFIX "" SUFFIX "${BLUEFOG_PYTHON_EXT_SUFFIX}"
  LIBRARY_OUTPUT_DIRECTORY "${BLUEFOG_OUTPUT_ROOT}/bluefog/common"
  BUILD_RPATH "${BLUEFOG_MPI_LIBRARY_DIRS}"
  CXX_VISIBILITY_PRESET default)
