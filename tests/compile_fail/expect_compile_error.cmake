# cmake -DFLAGS_FILE=<compile_flags.cmake> -DSOURCE=<case.cpp> -P expect_compile_error.cmake
# Passes only if SOURCE fails to compile AND the compiler output matches the regex given on the
# case's `// EXPECT: <regex>` line, so a typo or a missing include cannot pass for the error.
cmake_minimum_required(VERSION 3.21)

include(${FLAGS_FILE})

# Builds (with PRELUDE and no SOURCE: the fixture) or uses the precompiled prelude.
macro(actckpt_compile_args)
  set(_args ${CXX_STD_FLAG})
  foreach(_def IN LISTS DEFINITIONS)
    list(APPEND _args -D${_def})
  endforeach()
  list(APPEND _args ${OPTIONS} -I${OWN_INCLUDE_DIR})
  set(_system_dirs "")
  foreach(_dir IN LISTS INCLUDE_DIRS)
    # LibTorch's dirs as system dirs, as CMake does for an imported target; never the compiler's
    # own (an -isystem /usr/include breaks libstdc++'s #include_next). Torch lists /usr/lib/../include.
    cmake_path(NORMAL_PATH _dir)
    if(NOT _dir STREQUAL OWN_INCLUDE_DIR AND NOT _dir IN_LIST IMPLICIT_INCLUDE_DIRS
       AND NOT _dir IN_LIST _system_dirs)
      list(APPEND _system_dirs ${_dir})
      list(APPEND _args -isystem ${_dir})
    endif()
  endforeach()
endmacro()

if(PRELUDE AND NOT SOURCE)
  actckpt_compile_args()
  execute_process(
    COMMAND ${CXX} ${_args} -x c++-header ${PRELUDE} -o ${PRELUDE}.gch
    RESULT_VARIABLE _rc
    OUTPUT_VARIABLE _out
    ERROR_VARIABLE _out)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "precompiling ${PRELUDE} failed:\n${_out}")
  endif()
  message(STATUS "precompiled ${PRELUDE}")
  return()
endif()

file(STRINGS ${SOURCE} _expect REGEX "^// EXPECT: " LIMIT_COUNT 1)
if(NOT _expect)
  message(FATAL_ERROR "${SOURCE}: no `// EXPECT: <regex>` line")
endif()
string(REGEX REPLACE "^// EXPECT: " "" _regex "${_expect}")
string(STRIP "${_regex}" _regex)

actckpt_compile_args()
list(APPEND _args -fsyntax-only)
if(PRELUDE AND EXISTS ${PRELUDE}.gch)
  list(APPEND _args -include ${PRELUDE})
endif()

execute_process(
  COMMAND ${CXX} ${_args} ${SOURCE}
  RESULT_VARIABLE _rc
  OUTPUT_VARIABLE _out
  ERROR_VARIABLE _out)

if(_rc EQUAL 0)
  message(FATAL_ERROR "${SOURCE} compiled, but it must not (expected an error matching '${_regex}')")
endif()
if(NOT _out MATCHES "${_regex}")
  string(LENGTH "${_out}" _len)
  if(_len GREATER 6000)
    string(SUBSTRING "${_out}" 0 6000 _out)
    string(APPEND _out "\n[... ${_len} characters in all]")
  endif()
  message(FATAL_ERROR "${SOURCE} failed to compile, but no output matched '${_regex}':\n${_out}")
endif()
message(STATUS "${SOURCE}: fails to compile as expected (matched '${_regex}')")
