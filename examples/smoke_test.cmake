# Smoke tests of the example programs, run by ctest (examples/CMakeLists.txt):
#   cmake -DCASE=<case> -DEXE=<program> -DWORK_DIR=<dir> [-DARGS=<a;b;...>] [-DEXPECT=<regex>] -P smoke_test.cmake
# Cases:
#   run                 exits 0 and prints something matching EXPECT
#   bad_flag            exits non-zero with exactly one line matching EXPECT, no LibTorch backtrace
#   loss_decreases      train_gpt's last loss is clearly below its first
#   modes_same_losses   train_gpt prints the same loss at every step in all four --mode values
#   save_load_resumes   a run saved at step 15 and resumed (in another mode) repeats steps 16..30;
#                       a size flag contradicting the checkpoint is refused in one line
#   resume_across_world_sizes   (LAUNCH: the launcher command put before EXE) 2 ranks and 1
#                       process give the same losses up to float reordering; a run saved by 2
#                       ranks resumes in 1 process, and one saved by 1 process under 2 ranks,
#                       with the same losses from step 11
cmake_minimum_required(VERSION 3.21)
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

# Runs EXE with the given arguments; sets <prefix>_rc and <prefix>_out (stdout and stderr merged).
function(run_example prefix)
  execute_process(COMMAND ${RUN_PREFIX} "${EXE}" ${ARGN} WORKING_DIRECTORY "${WORK_DIR}"
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  set(${prefix}_rc "${rc}" PARENT_SCOPE)
  set(${prefix}_out "${out}" PARENT_SCOPE)
endfunction()

# Runs train_gpt with --print-losses; sets <prefix>_steps and <prefix>_losses (parallel lists).
function(run_losses prefix)
  run_example(run ${ARGN} --print-losses)
  if(NOT run_rc EQUAL 0)
    message(FATAL_ERROR "train_gpt ${ARGN} exited with ${run_rc}:\n${run_out}")
  endif()
  string(REGEX MATCHALL "(^|\n)loss [0-9]+ [^\n]+" lines "${run_out}")
  set(steps "")
  set(losses "")
  foreach(line IN LISTS lines)
    string(REGEX REPLACE "^\n?loss ([0-9]+) ([^\n]+)$" "\\1" step "${line}")
    string(REGEX REPLACE "^\n?loss ([0-9]+) ([^\n]+)$" "\\2" loss "${line}")
    list(APPEND steps "${step}")
    list(APPEND losses "${loss}")
  endforeach()
  if(losses STREQUAL "")
    message(FATAL_ERROR "train_gpt ${ARGN} printed no losses:\n${run_out}")
  endif()
  set(${prefix}_steps "${steps}" PARENT_SCOPE)
  set(${prefix}_losses "${losses}" PARENT_SCOPE)
  set(${prefix}_out "${run_out}" PARENT_SCOPE)
endfunction()

# CMake has integer math only: compare in millionths. Losses print as plain decimals (%.9g).
macro(to_micro value out)
  string(REGEX MATCH "^([0-9]+)(\\.([0-9]*))?$" _m "${value}")
  if(_m STREQUAL "")
    message(FATAL_ERROR "unexpected loss format '${value}'")
  endif()
  set(_int "${CMAKE_MATCH_1}")
  set(_frac "${CMAKE_MATCH_3}000000")
  string(SUBSTRING "${_frac}" 0 6 _frac)
  string(REGEX REPLACE "^0+([0-9])" "\\1" _frac "${_frac}")
  math(EXPR ${out} "${_int} * 1000000 + ${_frac}")
endmacro()

if(CASE STREQUAL "run")
  run_example(r ${ARGS})
  if(NOT r_rc EQUAL 0 OR NOT r_out MATCHES "${EXPECT}")
    message(FATAL_ERROR "expected exit 0 and output matching '${EXPECT}', got ${r_rc}:\n${r_out}")
  endif()
  message(STATUS "${r_out}")

elseif(CASE STREQUAL "bad_flag")
  run_example(r ${ARGS})
  string(STRIP "${r_out}" text)
  string(FIND "${text}" "\n" newline)
  if(r_rc EQUAL 0)
    message(FATAL_ERROR "expected a non-zero exit for ${ARGS}, got 0:\n${r_out}")
  elseif(NOT newline EQUAL -1 OR text STREQUAL "")
    message(FATAL_ERROR "expected exactly one line of output for ${ARGS}, got:\n${r_out}")
  elseif(text MATCHES "Exception raised from|frame #")
    message(FATAL_ERROR "a LibTorch backtrace reached the user:\n${r_out}")
  elseif(NOT text MATCHES "${EXPECT}")
    message(FATAL_ERROR "expected a line matching '${EXPECT}', got:\n${r_out}")
  endif()
  message(STATUS "exit ${r_rc}: ${text}")

elseif(CASE STREQUAL "loss_decreases")
  run_losses(r ${ARGS})
  message(STATUS "${r_out}")
  list(LENGTH r_losses n)
  list(GET r_losses 0 first)
  list(GET r_losses -1 last)
  to_micro("${first}" first_micro)
  to_micro("${last}" last_micro)
  math(EXPR four_last "4 * ${last_micro}")
  math(EXPR three_first "3 * ${first_micro}")
  # From about ln(vocabulary) = 4.3; a model that learns nothing stays near it.
  if(NOT four_last LESS three_first)
    message(FATAL_ERROR "the loss did not fall clearly in ${n} steps: ${first} -> ${last} (want below 75% of the first)")
  endif()
  message(STATUS "loss ${first} -> ${last} in ${n} steps")

elseif(CASE STREQUAL "modes_same_losses")
  run_losses(base ${ARGS} --mode baseline)
  foreach(mode IN ITEMS ckpt sync async)
    run_losses(m ${ARGS} --mode ${mode})
    if(NOT m_losses STREQUAL base_losses)
      message(FATAL_ERROR "--mode ${mode} losses differ from --mode baseline:\n"
                          "baseline: ${base_losses}\n${mode}: ${m_losses}")
    endif()
  endforeach()
  list(LENGTH base_losses n)
  message(STATUS "baseline, ckpt, sync and async: the same ${n} losses, bit for bit: ${base_losses}")

elseif(CASE STREQUAL "save_load_resumes")
  run_losses(full ${ARGS} --mode ckpt --steps 30)
  run_example(first ${ARGS} --mode ckpt --steps 15 --save resume.pt)
  if(NOT first_rc EQUAL 0 OR NOT EXISTS "${WORK_DIR}/resume.pt")
    message(FATAL_ERROR "saving failed (${first_rc}):\n${first_out}")
  endif()
  # Resumed in another mode: the checkpoint does not depend on the policy.
  run_losses(resumed ${ARGS} --mode async --steps 30 --load resume.pt)
  list(SUBLIST full_losses 15 15 expected)
  list(GET resumed_steps 0 first_step)
  if(NOT first_step EQUAL 16)
    message(FATAL_ERROR "the resumed run started at step ${first_step}, not 16:\n${resumed_out}")
  endif()
  if(NOT resumed_losses STREQUAL expected)
    message(FATAL_ERROR "resumed losses differ from the uninterrupted run's:\n"
                        "uninterrupted 16..30: ${expected}\nresumed 16..30:       ${resumed_losses}")
  endif()
  message(STATUS "steps 16..30 after save at 15 and load: identical to the uninterrupted run: ${resumed_losses}")
  # The checkpoint fixes the model's shape: a contradicting size flag is one clear line.
  run_example(clash --load resume.pt --hidden_dim 48 --head_dim 8)
  string(STRIP "${clash_out}" clash_text)
  if(clash_rc EQUAL 0 OR NOT clash_text MATCHES "^[^\n]*--hidden_dim 48 disagrees with --load[^\n]*$")
    message(FATAL_ERROR "expected one line rejecting --hidden_dim 48 against the checkpoint, got ${clash_rc}:\n${clash_out}")
  endif()
  message(STATUS "exit ${clash_rc}: ${clash_text}")

elseif(CASE STREQUAL "resume_across_world_sizes")
  # Losses of ranks vs 1 process differ only by the order of float additions (a few 1e-7 per
  # step): compared within 1e-3, far below what a wrong shard or a lost step changes.
  function(expect_close label steps_a losses_a steps_b losses_b)
    if(NOT "${steps_a}" STREQUAL "${steps_b}")
      message(FATAL_ERROR "${label}: steps ${steps_a} vs ${steps_b}")
    endif()
    foreach(a b IN ZIP_LISTS losses_a losses_b)
      to_micro("${a}" a_micro)
      to_micro("${b}" b_micro)
      math(EXPR diff "${a_micro} - ${b_micro}")
      if(diff GREATER 1000 OR diff LESS -1000)
        message(FATAL_ERROR "${label}: losses differ by more than 1e-3:\n${losses_a}\n${losses_b}")
      endif()
    endforeach()
  endfunction()
  # 1 process to step 10 (its save/resume equals an uninterrupted run bitwise: save_load_resumes).
  run_losses(single ${ARGS} --steps 10 --save single.pt)
  # 2 ranks to step 10: the same losses as 1 process, up to reordering.
  set(RUN_PREFIX ${LAUNCH})
  run_losses(ranks ${ARGS} --steps 10 --save ranks.pt)
  if(NOT ranks_out MATCHES "data parallel: 2 ranks")
    message(FATAL_ERROR "the launched run was not data parallel:\n${ranks_out}")
  endif()
  expect_close("2 ranks vs 1 process, steps 1..10" "${single_steps}" "${single_losses}" "${ranks_steps}" "${ranks_losses}")
  # Saved by 1 process, resumed under 2 ranks; saved by 2 ranks, resumed in 1 process.
  run_losses(one_to_two ${ARGS} --steps 20 --load single.pt)
  set(RUN_PREFIX "")
  run_losses(two_to_one ${ARGS} --steps 20 --load ranks.pt)
  list(GET two_to_one_steps 0 first_step)
  if(NOT first_step EQUAL 11)
    message(FATAL_ERROR "the resumed run started at step ${first_step}, not 11:\n${two_to_one_out}")
  endif()
  expect_close("1 -> 2 ranks vs 2 ranks -> 1" "${one_to_two_steps}" "${one_to_two_losses}" "${two_to_one_steps}" "${two_to_one_losses}")
  message(STATUS "steps 1..10, 1 process: ${single_losses}\n"
                 "steps 1..10, 2 ranks:   ${ranks_losses}\n"
                 "steps 11..20, saved by 1 process, resumed under 2 ranks: ${one_to_two_losses}\n"
                 "steps 11..20, saved by 2 ranks, resumed in 1 process:    ${two_to_one_losses}")

else()
  message(FATAL_ERROR "unknown CASE '${CASE}'")
endif()
