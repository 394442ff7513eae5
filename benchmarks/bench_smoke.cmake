# Runs actckpt_bench alone with Google Benchmark's usual flags on a tiny model and checks the
# JSON Google Benchmark writes (strict JSON: CMake's parser rejects NaN), one entry per selected
# mode and repetition, with the custom counters.
#   cmake -DBENCH=... -DWORK_DIR=... -P bench_smoke.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(
  COMMAND ${BENCH} --num_layers=2 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}
          --benchmark_filter=baseline|ckpt_async --benchmark_repetitions=2
          --benchmark_out=${WORK_DIR}/gb.json --benchmark_out_format=json
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "actckpt_bench exited with ${rc}\n${out}\n${err}")
endif()
file(READ ${WORK_DIR}/gb.json json)
string(JSON n LENGTH "${json}" benchmarks)
set(seen "")
math(EXPR last "${n} - 1")
foreach(i RANGE ${last})
  string(JSON run_type GET "${json}" benchmarks ${i} run_type)
  if(NOT run_type STREQUAL "iteration")
    continue()
  endif()
  string(JSON name GET "${json}" benchmarks ${i} name)
  set(counters ms_per_iter peak_MB floor_MB)
  if(name MATCHES "offload")
    list(APPEND counters host_stash_MB)
  endif()
  foreach(counter ${counters})
    string(JSON value ERROR_VARIABLE missing GET "${json}" benchmarks ${i} ${counter})
    if(missing OR value LESS_EQUAL 0)
      message(FATAL_ERROR "${name}: counter ${counter} missing or not positive (${value})")
    endif()
  endforeach()
  list(APPEND seen ${name})
endforeach()
list(LENGTH seen runs)
if(NOT runs EQUAL 4 OR NOT seen MATCHES "baseline" OR NOT seen MATCHES "ckpt_async_offload" OR seen MATCHES "ckpt_classic|/ckpt_sync_offload")
  message(FATAL_ERROR "expected 2 repetitions of baseline and ckpt_async_offload only, got: ${seen}")
endif()
if(NOT out MATCHES "\\| ckpt_async_offload")
  message(FATAL_ERROR "no results table on stdout:\n${out}")
endif()
message(STATUS "actckpt_bench with Google Benchmark flags OK: ${seen}")
