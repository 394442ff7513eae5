#!/usr/bin/env bash
# actckpt's check on a CUDA machine, in one short run (build included: planned for at most 7
# minutes on 16 cores, docs/gpu.md), and its rehearsal on a machine without a GPU.
#
#   scripts/gpu-check.sh [OUT_DIR]              # on the GPU machine; OUT_DIR default: $OUT, else ./gpu-out
#   scripts/gpu-check.sh --rehearse [OUT_DIR]   # here, without a GPU (LibTorch: ACTCKPT_LIBTORCH)
#
# What it needs on the GPU machine: CUDA (nvcc), CMake, Ninja, and `python3 -c 'import torch'`
# giving a CUDA LibTorch (a PyTorch wheel: its torch.utils.cmake_prefix_path is the LibTorch used,
# and its C++ ABI must be the CXX11 one that Debian's Google Benchmark was built with). Debian's
# packages of doctest, Google Benchmark (and its runtime) are not installed there: put their .deb
# files in DEBS_DIR (default .device/ in the checkout, ignored by git), which the run unpacks with
# dpkg -x into a scratch folder (never into /). On Debian 12 get them with
#   mkdir -p .device && (cd .device && apt-get download doctest-dev libbenchmark-dev libbenchmark1debian libgloo-dev)
# (libgloo-dev is optional: the Gloo headers actckpt::distributed needs, where the wheel lacks them.)
# A missing package, a CPU-only torch, the wrong ABI or a missing nvcc stop the run at once, with
# the reason, before anything is built.
#
# Steps, each logged; a failed step is reported and the later ones still run where they can:
#   1. environment: nvcc, torch version, its CUDA version and C++ ABI, the GPU;
#   2. unpack the packages; configure (tests and benchmark; examples and install rules off), and
#      check that the configure log says CUDA is on;
#   3. build actckpt_tests and actckpt_bench only;
#   4. the CUDA-only test cases first (ctest unit.cuda: the [cuda] cases: offload over side
#      streams, fp16 autocast, OffloadSaved and SyncOffloadSaved on CUDA, the reentrant form on
#      CUDA, the copy engine's CUDA events, the pinned slab pool and its reuse fence, the disk
#      tier's CUDA paths, ...) with ACTCKPT_REQUIRE_CUDA=1: a case that finds no device fails
#      instead of being skipped; the I/O path the disk store chose for CUDA tensors (cuFile's
#      GPUDirect Storage, its compatibility mode, or pinned staging and why) is printed and put
#      in summary.txt ("[disk io_path]" lines; the main job's disk modes report theirs in
#      results.md and results.json), cuFile's own cufile.log into logs.tgz;
#   5. the whole unit and integration suite on CUDA tensors, both checkpoint forms (ctest label
#      `unit` without unit.cuda, under ACTCKPT_TEST_DEVICE=cuda: the device switch of
#      tests/support/test_device.hpp), until the time budget (BUDGET_S after the start) is spent;
#      the cpu-only cases are reported skipped;
#   6. the device switch's count: the cases each device selects (doctest --count of the built
#      executable) against the cases that ran in steps 4 and 5, per form (a case the switch did
#      not reach would have failed its test: every run checks it);
#   7. the main job at the seed's configuration (12 layers, hidden 1024, ff 4096, 12k tokens,
#      batch 48, fp16 autocast): table, telemetry, the planner at its default budget, pictures
#      (the planner's budget sweep is left to the CPU main job); then the planner at half classic
#      checkpointing's peak (`--memory_budget=0.5xclassic`, against classic, 3 rounds);
#   8. one rank of data parallelism on NCCL (world size 1) through the same code path as
#      torchrun's ranks (where actckpt::distributed was built: Gloo headers and nccl.h found);
#   9. OUT_DIR gets at most 8 files: summary.txt, results.md, results.json, the PNGs and
#      logs.tgz (every log, ctest's JUnit XML and LastTest logs, the main job's other outputs).
#
# Time on the GPU machine (16 cores), planned for at most 7 minutes with start-up: see
# docs/tests.md ("The GPU check") for the estimate and how it was derived.
#
# --rehearse runs every step that needs no GPU, here: the packages (DEBS_DIR if it has them,
# else fetched with apt-get download) are unpacked into a scratch folder as on the GPU machine,
# the project's pinned torch 2.x wheel (ACTCKPT_LIBTORCH=wheel, the default: a CUDA build, so the
# configure step checks 'with CUDA' as on the GPU) or Debian's LibTorch 1.13
# (ACTCKPT_LIBTORCH=system) stands in for python3's torch, no device is required (the CUDA cases
# are reported skipped), the device switch is set to cpu (ACTCKPT_TEST_DEVICE=cpu) where the GPU
# run sets cuda, the unit tests built are only unit/measure/test_memory_meter.cpp (it holds a
# [cuda] case and cpu-only cases; the whole suite is built and run by the test command anyway,
# whose every unit test checks that each case it ran took its device from the switch, and whose
# unit.device_switch counts the cases per device), and the main job runs a tiny model. It fails
# if the output folder breaks the 8-file rule or the device switch's counts disagree. ctest runs
# it (label gpu-rehearsal).
#
# Environment:
#   DEBS_DIR   .deb files to unpack (default: .device/ in the checkout)
#   WORK_DIR   scratch folder for the unpacked packages, the build tree and the logs
#              (default: /tmp/actckpt-gpu-check, or /tmp/actckpt-gpu-rehearsal)
#   JOBS       build and test parallelism (default: nproc)
#   BUDGET_S   seconds after the start by which the unit suite stops (default 300; rehearsal: 3600)
#   ACTCKPT_LIBTORCH  rehearsal only: wheel (default; scripts/libtorch-prefix.sh) or system (Debian's)
# shellcheck disable=SC2317  # the step functions are called through step()
set -u
set -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

rehearse=0
out_arg=
while (($#)); do
  case $1 in
    --rehearse) rehearse=1; shift ;;
    -h | --help) sed -n '2,/^# shellcheck/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu-check: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out_arg=$1; shift ;;
  esac
done

if ((rehearse)); then
  work=${WORK_DIR:-/tmp/actckpt-gpu-rehearsal}
else
  work=${WORK_DIR:-/tmp/actckpt-gpu-check}
fi
out=${out_arg:-${OUT:-$root/gpu-out}}
debs_dir=${DEBS_DIR:-$root/.device}
jobs=${JOBS:-$(nproc)}
# The GPU run must leave time for a second try; the rehearsal runs every step whatever it costs.
budget=${BUDGET_S:-300}
((rehearse)) && budget=${BUDGET_S:-3600}
libtorch=${ACTCKPT_LIBTORCH:-wheel}
[[ $libtorch == wheel || $libtorch == system ]] || { echo "gpu-check: ACTCKPT_LIBTORCH must be wheel or system" >&2; exit 2; }
deps=$work/deps
build=$work/build
logs=$work/logs
job_out=$work/main-job
required_debs=(doctest-dev libbenchmark-dev libbenchmark1debian)
# The device switch (tests/support/test_device.hpp) for every test step: cuda on the GPU; the
# rehearsal runs the same steps with cpu.
device=cuda
((rehearse)) && device=cpu

rm -rf "$work"
mkdir -p "$logs" "$deps" || { echo "gpu-check: cannot create $work" >&2; exit 1; }
mkdir -p "$out" || { echo "gpu-check: cannot create $out" >&2; exit 1; }
out=$(cd "$out" && pwd)
start=$SECONDS

names=() statuses=() seconds=()
failed=0
# step NAME LOG COMMAND...: runs COMMAND with stdout+stderr teed into LOG, records the result.
step() {
  local name=$1 log=$logs/$2 t0=$SECONDS rc
  shift 2
  echo "=== $name: $*" | tee -a "$log"
  "$@" 2>&1 | tee -a "$log"
  rc=${PIPESTATUS[0]}
  names+=("$name") seconds+=($((SECONDS - t0)))
  if ((rc == 0)); then statuses+=(ok); else statuses+=("FAILED ($rc)"); failed=1; fi
  echo "=== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
  return "$rc"
}
skip_step() { names+=("$1") statuses+=("skipped: $2") seconds+=(0); echo "=== $1: skipped ($2)"; }
stop() { echo "gpu-check: STOP: $*" | tee -a "$logs/env.log" >&2; failed=1; finish; }

torch_py() { python3 -c "import torch; $1" 2>/dev/null; }

environment() {
  date -u
  echo "mode: $( ((rehearse)) && echo 'rehearsal (no GPU needed)' || echo 'GPU run')"
  git -C "$root" log -1 --oneline 2>/dev/null || true
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  echo "nvcc: $(command -v nvcc || echo "${CUDACXX:-/usr/local/cuda/bin/nvcc} (not on PATH)")"
  command -v nvcc >/dev/null && nvcc --version | tail -n 2
  cmake --version | head -n 1
  echo "ninja: $(command -v ninja || echo missing)"
  "${CXX:-c++}" --version | head -n 1
  if ((rehearse)) && [[ $libtorch == system ]]; then
    grep -hE 'define TORCH_VERSION_(MAJOR|MINOR|PATCH)' /usr/include/torch/csrc/api/include/torch/version.h 2>/dev/null ||
      echo "no Debian LibTorch headers under /usr/include/torch"
  elif ((rehearse)); then
    echo "LibTorch: the project's torch wheel ($(grep -m1 '^torch==' "$root/scripts/libtorch-requirements.txt"), scripts/install-libtorch.sh)"
  else
    torch_py 'print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi(), "prefix", torch.utils.cmake_prefix_path)' ||
      echo "python3 cannot import torch"
  fi
  echo "packages: $debs_dir -> $deps; work: $work; out: $out; budget ${budget} s"
}

# The required packages missing from folder $1, by name.
missing_debs() {
  local p
  for p in "${required_debs[@]}"; do compgen -G "$1/${p}_*.deb" >/dev/null || echo "$p"; done
}

# The .deb files: DEBS_DIR, or (rehearsal only, where DEBS_DIR lacks them) fetched from this
# machine's Debian mirror into the scratch folder (decided before the steps, which run in
# subshells).
if ((rehearse)) && [[ -n $(missing_debs "$debs_dir") ]]; then
  debs_dir=$work/debs
  mkdir -p "$debs_dir"
fi
find_debs() {
  local missing
  missing=$(missing_debs "$debs_dir")
  [[ -z $missing ]] && return 0
  if ((rehearse)); then
    echo "fetching ${required_debs[*]} with apt-get download into $debs_dir"
    (cd "$debs_dir" && apt-get download "${required_debs[@]}") ||
      {
        echo "apt-get download failed; trying /var/cache/apt/archives"
        local p
        for p in "${required_debs[@]}"; do cp /var/cache/apt/archives/"${p}"_*.deb "$debs_dir"/ 2>/dev/null; done
      }
    missing=$(missing_debs "$debs_dir")
    [[ -z $missing ]] && return 0
  fi
  echo "missing .deb files in $debs_dir: $(echo "$missing" | tr '\n' ' ')"
  echo "put them there first (Debian 12: cd $debs_dir && apt-get download ${required_debs[*]})"
  return 1
}

# Everything that would make the run useless, checked before anything is built.
preflight() {
  local ok=0
  find_debs || ok=1
  command -v cmake >/dev/null || { echo "cmake is missing"; ok=1; }
  command -v ninja >/dev/null || { echo "ninja is missing"; ok=1; }
  if ((!rehearse)); then
    command -v nvcc >/dev/null || [[ -x ${CUDACXX:-/usr/local/cuda/bin/nvcc} ]] || { echo "nvcc is missing"; ok=1; }
    if ! torch_py 'pass'; then
      echo "python3 cannot import torch: its wheel is the LibTorch this check builds against"
      ok=1
    else
      [[ $(torch_py 'print(torch.version.cuda is not None)') == True ]] ||
        { echo "the torch found is a CPU-only build: a CUDA run needs a CUDA wheel"; ok=1; }
      # Debian's libbenchmark and the doctest main are built with the CXX11 ABI: a wheel with the
      # old ABI would fail at link time with unreadable std::string symbol errors.
      [[ $(torch_py 'print(torch.compiled_with_cxx11_abi())') == True ]] ||
        { echo "torch was built with the pre-CXX11 C++ ABI; Debian's Google Benchmark uses the CXX11 ABI: use a CXX11-ABI wheel"; ok=1; }
    fi
  fi
  return "$ok"
}

unpack_debs() {
  local f
  for f in "$debs_dir"/*.deb; do
    echo "unpacking $(basename "$f")"
    if command -v dpkg >/dev/null; then
      dpkg -x "$f" "$deps" || return 1
    else
      local tmp
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$f" && tar -xf data.tar.* -C "$deps") || { rm -rf "$tmp"; return 1; }
      rm -rf "$tmp"
    fi
  done
}

configure() {
  local prefix="$deps/usr/lib/x86_64-linux-gnu/cmake;$deps/usr/lib/cmake;$deps/usr/share/cmake;$deps/usr"
  local args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DACTCKPT_BUILD_TESTS=ON
    -DACTCKPT_BUILD_BENCHMARKS=ON -DACTCKPT_BUILD_EXAMPLES=OFF -DACTCKPT_INSTALL=OFF)
  if ((rehearse)); then
    args+=(-DACTCKPT_TEST_FILES=unit/measure/test_memory_meter.cpp)
    [[ $libtorch == wheel ]] && args+=(-DACTCKPT_LIBTORCH=wheel)
  else
    local torch_prefix nvcc
    # The torch package's folder (its lib/ must come before any system libtorch.so) and its
    # share/cmake (torch.utils.cmake_prefix_path).
    torch_prefix=$(torch_py 'import os; print(os.path.dirname(torch.__file__) + ";" + torch.utils.cmake_prefix_path)') || return 1
    prefix="$torch_prefix;$prefix"
    nvcc=$(command -v nvcc || echo "${CUDACXX:-/usr/local/cuda/bin/nvcc}")
    args+=(-DCMAKE_CUDA_ARCHITECTURES=90 "-DCMAKE_CUDA_COMPILER=$nvcc")
    # nccl.h of the nvidia-nccl wheel, for actckpt::distributed's NCCL path.
    local nccl
    nccl=$(python3 -c 'import nvidia.nccl as n, os; print(os.path.join(list(n.__path__)[0], "include"))' 2>/dev/null)
    [[ -n $nccl && -f $nccl/nccl.h ]] && args+=("-DACTCKPT_NCCL_INCLUDE_DIR=$nccl")
  fi
  cmake "${args[@]}" "-DCMAKE_PREFIX_PATH=$prefix" >"$work/cmake.out" 2>&1
  local rc=$?
  cat "$work/cmake.out"
  ((rc == 0)) || return 1
  # What was found must be what was unpacked, and CUDA must be on for a GPU run.
  grep -E '^(doctest|benchmark)_DIR' "$build/CMakeCache.txt"
  grep -q "^doctest_DIR:PATH=$deps" "$build/CMakeCache.txt" || { echo "doctest was not found in $deps"; return 1; }
  grep -q "^benchmark_DIR:PATH=$deps" "$build/CMakeCache.txt" || { echo "Google Benchmark was not found in $deps"; return 1; }
  if ((!rehearse)) || [[ $libtorch == wheel ]]; then
    grep -q 'actckpt: LibTorch .* with CUDA (ACTCKPT_WITH_CUDA=1)' "$work/cmake.out" ||
      { echo "the configure log does not say 'with CUDA': the LibTorch found has no CUDA"; return 1; }
  fi
}

# ctest's record of every test's output (the device switch's lines are read from it).
keep_test_log() { cp "$build/Testing/Temporary/LastTest.log" "$logs/$1" 2>/dev/null || true; }

cuda_cases() {
  local require=1 rc=0
  ((rehearse)) && require=0  # no device here: the cases are skipped, which is what the rehearsal expects
  ACTCKPT_TEST_DEVICE=$device ACTCKPT_REQUIRE_CUDA=$require OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$build" \
    -L '^cuda$' --output-on-failure -j "$jobs" --timeout 300 --output-junit "$logs/ctest-cuda.xml" || rc=$?
  keep_test_log lasttest-cuda.log
  disk_io_path
  return "$rc"
}

# The disk store's I/O path for CUDA tensors, as the [cuda] disk store case reported it.
disk_io_path() {
  grep -h '^\[disk io_path\]' "$logs/lasttest-cuda.log" 2>/dev/null ||
    echo "[disk io_path] not reported: the [cuda] disk store case did not run"
}

seed_args=(--device cuda --total_tokens 12000 --num_layers 12 --hidden_dim 1024 --head_dim 64 --ff_dim 4096
  --batch_size 48 --dtype fp16 --steps 3)
tiny_args=(--num_layers=3 --hidden_dim=64 --head_dim=32 --ff_dim=128 --total_tokens=256 --batch_size=4 --steps=1)

main_job() {
  local args
  if ((rehearse)); then
    args=("${tiny_args[@]}")
    export REPETITIONS=1 ROUNDS=2 OMP_NUM_THREADS=1
  else
    args=("${seed_args[@]}")
  fi
  BUILD_DIR=$build ACTCKPT_SKIP_DEPS=1 JOBS=$jobs OUT=$job_out "$root/scripts/main-job.sh" "${args[@]}" --pareto_budgets=0
}

# The planner at half classic checkpointing's peak, against classic, at the main job's configuration.
# Where no plan fits that budget (weights and gradients alone may exceed it), the planner's error
# names the smallest feasible budget: that is reported, and the run is repeated at that budget.
planned() {
  local args=("${seed_args[@]}") floor
  ((rehearse)) && args=("${tiny_args[@]}")
  run_planned_at() {
    OMP_WAIT_POLICY=PASSIVE "$build/benchmarks/actckpt_bench" --out="$work/planned" "${args[@]}" \
      --memory_budget="$1" --benchmark_filter='ckpt_classic/|ckpt_planned' --rounds=3 2>&1 | tee "$work/planned.out"
    return "${PIPESTATUS[0]}"
  }
  # The benchmark reports a failed mode and goes on: the planned mode ran if results.json has it.
  planned_ran() { grep -q '"mode": "ckpt_planned"' "$work/planned/results.json" 2>/dev/null; }
  run_planned_at 0.5xclassic && planned_ran && return 0
  floor=$(grep -oE 'smallest feasible budget for this model and step is [0-9.]+' "$work/planned.out" | grep -oE '[0-9.]+$' | head -n 1)
  [[ -n $floor ]] || { echo "the planned mode did not run (see above)"; return 1; }
  echo "0.5 x classic's peak is infeasible (smallest feasible budget: $floor MB): running the planner at that budget"
  run_planned_at "$(awk -v f="$floor" 'BEGIN { printf "%.2f", f + 0.01 }')" && planned_ran
}

# One rank on NCCL (CPU rehearsal: Gloo) through init_process_group and DistributedDataParallel,
# running the parity and unused-parameter scenarios of the distributed tests.
dist_worker=$build/tests/distributed/dist_worker
one_rank() {
  local device=cuda
  ((rehearse)) && device=cpu
  OMP_NUM_THREADS=1 "$dist_worker" launch --nproc 1 --timeout 120 -- "$dist_worker" parity,unused --device "$device"
}

unit_suite() {
  local left=$((budget - (SECONDS - start))) rc=0
  ((left >= 60)) || left=60
  ACTCKPT_TEST_DEVICE=$device ACTCKPT_REQUIRE_CUDA=$((1 - rehearse)) OMP_WAIT_POLICY=PASSIVE ctest --test-dir "$build" \
    -L '^unit$' -LE '^cuda$' --output-on-failure -j "$jobs" --timeout "$left" \
    --stop-time "$(date -d "+${left} seconds" +%H:%M:%S)" --output-junit "$logs/ctest-unit.xml" || rc=$?
  keep_test_log lasttest-unit.log
  return "$rc"
}

# The device switch reached every case: the cases each device selects (doctest --count) against
# the cases that ran in the two test steps, per checkpoint form.
device_switch() {
  local exe=$build/tests/actckpt_tests count_unit count_cuda ran_default ran_reentrant ran_cuda
  "$root/scripts/device-switch-counts.sh" "$exe" || return 1
  count() { ACTCKPT_TEST_DEVICE=$device ACTCKPT_REQUIRE_CUDA=$((1 - rehearse)) "$exe" --count "$@" |
    sed -n 's/.*filters: \([0-9]*\).*/\1/p'; }
  count_unit=$(count '--test-case-exclude=*[cuda]*')
  count_cuda=$(count '--test-case=*[cuda]*')
  echo "on $device: $count_unit cases outside [cuda] and $count_cuda [cuda] cases to run"
  "$root/scripts/device-switch-summary.sh" "$logs/lasttest-cuda.log" --list || true
  "$root/scripts/device-switch-summary.sh" "$logs/lasttest-unit.log" --list || return 1
  ran() { grep -h "^\[device switch\] $device: " "$logs/$1" 2>/dev/null | awk '{ s += $4 } END { print s + 0 }'; }
  # Per form: the unit tests' lines, split by test name (unit.X vs unit.X.reentrant).
  ran_default=$(awk '/^[0-9]+\/[0-9]+ Test: / { t = $3 } /^\[device switch\] [a-z]+: [0-9]+ cases ran/ && t !~ /reentrant$/ { s += $4 } END { print s + 0 }' "$logs/lasttest-unit.log")
  ran_reentrant=$(awk '/^[0-9]+\/[0-9]+ Test: / { t = $3 } /^\[device switch\] [a-z]+: [0-9]+ cases ran/ && t ~ /reentrant$/ { s += $4 } END { print s + 0 }' "$logs/lasttest-unit.log")
  ran_cuda=$(ran lasttest-cuda.log)
  echo "ran on $device: default form $ran_default of $count_unit, reentrant form $ran_reentrant of $count_unit, [cuda] $ran_cuda of $count_cuda"
  local ok=0
  [[ $ran_default == "$count_unit" && $ran_reentrant == "$count_unit" ]] ||
    { echo "device switch: the unit suite ran other cases than the switch selects for $device (cut short by the time budget?)"; ok=1; }
  [[ $ran_cuda == "$count_cuda" ]] || { echo "device switch: $ran_cuda [cuda] cases ran, $count_cuda selected"; ok=1; }
  return "$ok"
}

# The output folder: at most 8 plain files, nothing deeper (only those come back from the GPU).
pack_out() {
  local f
  for f in results.md results.json activation_ckpt_benchmark.png memory_timeline.png memory_budget_pareto.png; do
    [[ -f $job_out/$f ]] && cp "$job_out/$f" "$out/"
  done
  local cufile_log
  cufile_log=$(find "$build" -name cufile.log -print -quit 2>/dev/null)
  [[ -n $cufile_log ]] && cp "$cufile_log" "$logs/cufile.log"
  local parts=(logs)
  [[ -d $job_out ]] && parts+=(main-job)
  [[ -d $work/planned ]] && parts+=(planned)
  tar -czf "$out/logs.tgz" -C "$work" "${parts[@]}" || return 1
  ls -l "$out"
}

check_out() {
  local n
  n=$(find "$out" -mindepth 1 | wc -l)
  echo "$out holds $n entries"
  ((n <= 8)) || { echo "more than 8 entries in $out: only 8 come back"; return 1; }
  find "$out" -mindepth 1 ! -type f -print | grep . && { echo "not only plain files in $out"; return 1; }
  find "$out" -mindepth 1 -printf '%f\n' | grep -v '^[A-Za-z0-9._-]*$' && { echo "odd file names in $out"; return 1; }
  return 0
}

finish() {
  {
    echo
    echo "== gpu-check summary ($( ((rehearse)) && echo rehearsal || echo GPU run), $((SECONDS - start)) s)"
    printf '%-12s %-24s %6s\n' step result seconds
    for i in "${!names[@]}"; do printf '%-12s %-24s %6s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"; done
    grep -hE '^[0-9]+% tests passed|^The following tests|^[[:space:]]+[0-9]+ - ' "$logs"/ctest-*.log 2>/dev/null
    grep -hE '^(device switch|on (cpu|cuda):|ran on|  plain run|  cpu:|  cuda:)' "$logs/device-switch.log" 2>/dev/null
    disk_io_path
    if [[ -f $job_out/results.md ]]; then echo; cat "$job_out/results.md"; fi
    if [[ -f $work/planned/results.md ]]; then echo; echo "== planned at 0.5 x classic's peak"; cat "$work/planned/results.md"; fi
  } >"$out/summary.txt"
  pack_out >>"$logs/pack.log" 2>&1 || failed=1
  check_out | tee -a "$out/summary.txt" || failed=1
  cat "$out/summary.txt"
  exit "$failed"
}

# The memory planner at the seed configuration, at half of classic checkpointing's peak (the
# planner's profile measures that peak; offloading is what makes it feasible).
run_planned() {
  mkdir -p "$out/planned" &&
    "$build/benchmarks/actckpt_bench" --out="$out/planned" "${seed_args[@]}" --memory_budget=0.5xclassic \
      --benchmark_filter='ckpt_classic/|ckpt_planned' --rounds=3
}

step environment env.log environment
step preflight env.log preflight || stop "preflight failed (see above): nothing was built"
step unpack-debs env.log unpack_debs || stop "unpacking the packages failed"
step configure configure.log configure || stop "configure failed"
targets=(actckpt_tests actckpt_bench)
grep -q '^build tests/distributed/dist_worker:' "$build/build.ninja" 2>/dev/null && targets+=(dist_worker)
step build build.log cmake --build "$build" --target "${targets[@]}" -j "$jobs" || stop "build failed"
step cuda-cases ctest-cuda.log cuda_cases
if ((SECONDS - start < budget)); then
  step unit-suite ctest-unit.log unit_suite
  step device-switch device-switch.log device_switch
else
  skip_step unit-suite "time budget of ${budget} s spent"
fi
step main-job main-job.log main_job
step planned planned.log planned
if [[ -x $dist_worker ]]; then
  step one-rank dist.log one_rank
else
  skip_step one-rank "actckpt::distributed not built (Gloo headers or nccl.h not found: see configure.log)"
fi
finish
