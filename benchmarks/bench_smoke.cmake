# Runs actckpt_bench alone with Google Benchmark's usual flags on a tiny model and checks the
# JSON Google Benchmark writes (strict JSON: CMake's parser rejects NaN), one entry per selected
# mode and repetition, with the custom counters, and results.json's comparison of the two checkpoint
# forms (ckpt_async_offload against ckpt_async_offload_reentrant).
#   cmake -DBENCH=... -DWORK_DIR=... -P bench_smoke.cmake
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})
execute_process(
  COMMAND ${BENCH} --num_layers=2 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}
          --benchmark_filter=baseline/|ckpt_async --benchmark_repetitions=2
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
if(NOT runs EQUAL 6 OR NOT seen MATCHES "baseline" OR NOT seen MATCHES "ckpt_async_offload/"
   OR NOT seen MATCHES "ckpt_async_offload_reentrant/" OR seen MATCHES "ckpt_classic|/ckpt_sync_offload")
  message(FATAL_ERROR "expected 2 repetitions of baseline, ckpt_async_offload and ckpt_async_offload_reentrant only, got: ${seen}")
endif()
file(READ ${WORK_DIR}/results.json results)
string(JSON form GET "${results}" form_comparison form)
string(JSON compared GET "${results}" form_comparison modes 0 reentrant_mode)
string(JSON async_form GET "${results}" modes 1 form)
if(NOT form STREQUAL "non_reentrant" OR NOT compared STREQUAL "ckpt_async_offload_reentrant"
   OR NOT async_form STREQUAL "non_reentrant")
  message(FATAL_ERROR "results.json: no comparison of the two forms, or a mode without its form:\n${results}")
endif()
if(NOT out MATCHES "\\| ckpt_async_offload")
  message(FATAL_ERROR "no results table on stdout:\n${out}")
endif()
message(STATUS "actckpt_bench with Google Benchmark flags OK: ${seen}")

# Mode ckpt_planned: --memory_budget relative to the planner's measured classic peak; the plan is
# printed, the mode has its Google Benchmark entry, and results.json its memory_plan.
file(MAKE_DIRECTORY ${WORK_DIR}/planned)
execute_process(
  COMMAND ${BENCH} --num_layers=3 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}/planned --memory_budget=1.5xclassic
          --benchmark_filter=ckpt_classic/|ckpt_planned
          --benchmark_out=${WORK_DIR}/planned/gb.json --benchmark_out_format=json
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "actckpt_bench --memory_budget exited with ${rc}\n${out}\n${err}")
endif()
if(NOT out MATCHES "memory plan for ckpt_planned: budget 1.5xclassic" OR NOT out MATCHES "\\| ckpt_planned"
   OR NOT out MATCHES "Memory plan of ckpt_planned")
  message(FATAL_ERROR "no plan or no ckpt_planned row on stdout:\n${out}")
endif()
file(READ ${WORK_DIR}/planned/gb.json json)
string(JSON n LENGTH "${json}" benchmarks)
set(planned_seen FALSE)
math(EXPR last "${n} - 1")
foreach(i RANGE ${last})
  string(JSON name GET "${json}" benchmarks ${i} name)
  if(name MATCHES "ckpt_planned")
    string(JSON peak GET "${json}" benchmarks ${i} peak_MB)
    set(planned_seen TRUE)
  endif()
endforeach()
file(READ ${WORK_DIR}/planned/results.json results)
string(JSON fits GET "${results}" memory_plan fits)
string(JSON plan GET "${results}" memory_plan plan)
if(NOT planned_seen OR NOT fits)
  message(FATAL_ERROR "ckpt_planned missing from Google Benchmark's JSON, or its measured peak does not fit the "
                      "budget (fits: ${fits})")
endif()
# A budget under the smallest feasible one is refused with the minimum named.
execute_process(
  COMMAND ${BENCH} --num_layers=2 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}/planned --memory_budget=0.01xclassic
          --benchmark_filter=ckpt_planned
  RESULT_VARIABLE rc OUTPUT_VARIABLE out2 ERROR_VARIABLE err2)
if(NOT "${out2}${err2}" MATCHES "smallest feasible budget")
  message(FATAL_ERROR "an infeasible budget did not name the smallest feasible one:\n${out2}\n${err2}")
endif()
message(STATUS "actckpt_bench --memory_budget OK: ${plan}, peak ${peak} MB")

# Mode offload_saved: no recompute, every saved activation in the host pool. Its row is in the
# table, results.json has its copies (each way the same bytes), the pool's peak stashed and held
# bytes, and its memory timeline is written.
file(MAKE_DIRECTORY ${WORK_DIR}/offload_saved)
execute_process(
  COMMAND ${BENCH} --num_layers=2 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}/offload_saved
          --benchmark_filter=baseline/|offload_saved
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "\\| offload_saved" OR NOT out MATCHES "Host pool at the peak")
  message(FATAL_ERROR "actckpt_bench offload_saved exited with ${rc}, or no offload_saved row / pool line:\n${out}\n${err}")
endif()
file(READ ${WORK_DIR}/offload_saved/results.json results)
string(JSON saved_mode GET "${results}" modes 1 mode)
string(JSON d2h GET "${results}" modes 1 telemetry d2h_bytes)
string(JSON h2d GET "${results}" modes 1 telemetry h2d_bytes)
string(JSON stashed GET "${results}" modes 1 pool_peak_stashed_MB)
string(JSON held GET "${results}" modes 1 pool_peak_held_MB)
if(NOT saved_mode STREQUAL "offload_saved" OR d2h LESS_EQUAL 0 OR NOT d2h EQUAL h2d OR stashed LESS_EQUAL 0
   OR held LESS stashed OR NOT EXISTS ${WORK_DIR}/offload_saved/timeline_offload_saved.csv)
  message(FATAL_ERROR "results.json: offload_saved without copies, pool figures or timeline:\n${results}")
endif()
message(STATUS "actckpt_bench offload_saved OK: ${d2h} bytes each way, pool held ${held} MB for ${stashed} MB stashed")

# The disk tier's modes: ckpt_disk_offload writes every moved stash to disk, ckpt_disk_spill keeps
# its host pool within a budget of a quarter of what async offload stashes and spills the rest.
# results.json has the disk bytes each way (equal), the disk peak, and the host pool within budget.
file(MAKE_DIRECTORY ${WORK_DIR}/disk)
execute_process(
  COMMAND ${CMAKE_COMMAND} -E env ACTCKPT_DISK_DIR=${WORK_DIR}/disk
          ${BENCH} --num_layers=4 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=128
          --batch_size=2 --steps=1 --quiet=true --out=${WORK_DIR}/disk
          --benchmark_filter=ckpt_disk_offload|ckpt_disk_spill
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0 OR NOT out MATCHES "\\| ckpt_disk_offload" OR NOT out MATCHES "Disk tier, per step")
  message(FATAL_ERROR "actckpt_bench disk modes exited with ${rc}, or no disk rows / disk table:\n${out}\n${err}")
endif()
file(READ ${WORK_DIR}/disk/results.json results)
foreach(i 0 1)
  string(JSON mode GET "${results}" modes ${i} mode)
  string(JSON written GET "${results}" modes ${i} telemetry disk_write_bytes)
  string(JSON read GET "${results}" modes ${i} telemetry disk_read_bytes)
  string(JSON disk_peak GET "${results}" modes ${i} disk disk_peak_MB)
  string(JSON within GET "${results}" modes ${i} disk host_within_budget)
  string(JSON io_path GET "${results}" modes ${i} disk io_path)
  if(NOT io_path MATCHES "^host: ")  # the smoke run is on CPU: the host's path, never cuFile
    message(FATAL_ERROR "results.json: ${mode} disk io_path '${io_path}' is not the host's:\n${results}")
  endif()
  if(written LESS_EQUAL 0 OR NOT written EQUAL read OR disk_peak LESS_EQUAL 0 OR NOT within STREQUAL "ON")
    message(FATAL_ERROR "results.json: ${mode} without disk bytes, disk peak or host pool within budget:\n${results}")
  endif()
  message(STATUS "actckpt_bench ${mode} OK: ${written} bytes to disk and back, disk peak ${disk_peak} MB")
endforeach()
file(GLOB left ${WORK_DIR}/disk/*)
list(FILTER left INCLUDE REGEX "actckpt-disk")
if(left)
  message(FATAL_ERROR "the disk store left files behind: ${left}")
endif()
