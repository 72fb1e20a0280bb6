# The TensorFlow op library bluefog/tensorflow/_ops<ext>, loaded with
# tf.load_op_library. Its flags come from setup.py, which asks
# tf.sysconfig.get_compile_flags() / get_link_flags(). It links the same core
# library as the torch extension (RUNPATH $ORIGIN/../common), so one process
# has one core whichever frameworks it imports.
option(BLUEFOG_BUILD_TENSORFLOW "build the TensorFlow op library" OFF)
if(NOT BLUEFOG_BUILD_TENSORFLOW)
  return()
endif()
set(BLUEFOG_TF_COMPILE_FLAGS "" CACHE STRING "tf.sysconfig.get_compile_flags() (;-separated)")
set(BLUEFOG_TF_LINK_FLAGS "" CACHE STRING "tf.sysconfig.get_link_flags() (;-separated)")
set(BLUEFOG_TF_LIBRARY_DIR "" CACHE PATH "directory of libtensorflow_framework")

file(GLOB BLUEFOG_TF_SOURCES CONFIGURE_DEPENDS "${CMAKE_CURRENT_SOURCE_DIR}/csrc/tensorflow/*.cc")
add_library(bluefog_tensorflow MODULE ${BLUEFOG_TF_SOURCES})
# TF's include dir holds third-party headers that warn a lot: treat -I as system.
set(_bluefog_tf_options "")
foreach(_flag IN LISTS BLUEFOG_TF_COMPILE_FLAGS)
  if(_flag MATCHES "^-I(.+)$")
    target_include_directories(bluefog_tensorflow SYSTEM PRIVATE "${CMAKE_MATCH_1}")
  elseif(_flag MATCHES "^-D(.+)$")
    target_compile_definitions(bluefog_tensorflow PRIVATE "${CMAKE_MATCH_1}")
  elseif(NOT _flag MATCHES "^--?std=")  # CMAKE_CXX_STANDARD decides
    list(APPEND _bluefog_tf_options "${_flag}")
  endif()
endforeach()
target_compile_options(bluefog_tensorflow PRIVATE ${_bluefog_tf_options} -Wall -Wno-unused-parameter
                       -Wno-sign-compare -fvisibility=hidden)
target_link_libraries(bluefog_tensorflow PRIVATE bluefog_core ${BLUEFOG_TF_LINK_FLAGS})
set_target_properties(bluefog_tensorflow PROPERTIES
  OUTPUT_NAME "_ops" PREFIX "" SUFFIX "${BLUEFOG_PYTHON_EXT_SUFFIX}"
  LIBRARY_OUTPUT_DIRECTORY "${BLUEFOG_OUTPUT_ROOT}/bluefog/tensorflow"
  BUILD_RPATH "$ORIGIN/../common;${BLUEFOG_TF_LIBRARY_DIR};${BLUEFOG_MPI_LIBRARY_DIRS}")
