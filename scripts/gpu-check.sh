#!/usr/bin/env bash
# One run on the CUDA machine (see ../shared/gpu/README.md): build against the pip LibTorch, run
# every ctest test (CUDA cases included), then the benchmark at the seed's configuration.
#
#   scripts/gpu-check.sh [OUT_DIR]        # default: $OUT, else ./gpu-out
#
# Environment:
#   DEBS_DIR      folder of .deb files to unpack (doctest, Google Benchmark); default .device/
#   DEPS_DIR      where they are unpacked with dpkg -x (default /tmp/deps; never /)
#   BUILD_DIR     build tree (default build/gpu)
#   JOBS          build and test parallelism (default: nproc)
#   CTEST_TIMEOUT per-test limit in seconds (default 300)
# Writes to OUT_DIR: env.log, configure.log, build.log, ctest.log, ctest-junit.xml, bench.log,
# summary.txt, planned.log, the main job's results (scripts/main-job.sh) under OUT_DIR/main-job, and
# a planned run at half classic's peak under OUT_DIR/planned.
# A failed step is reported and the later steps still run, so one run yields all the logs; the
# exit status is non-zero if any step failed. Budget: about 5 minutes on an H200.
# shellcheck disable=SC2317  # the step functions are called through step()
set -u
set -o pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

out=${1:-${OUT:-$root/gpu-out}}
mkdir -p "$out" || { echo "cannot create $out" >&2; exit 1; }
out=$(cd "$out" && pwd)
debs_dir=${DEBS_DIR:-$root/.device}
deps=${DEPS_DIR:-/tmp/deps}
build=${BUILD_DIR:-$root/build/gpu}
jobs=${JOBS:-$(nproc)}
ctest_timeout=${CTEST_TIMEOUT:-300}
seed_args=(--device cuda --total_tokens 12000 --num_layers 12 --hidden_dim 1024 --head_dim 64
  --ff_dim 4096 --batch_size 48 --dtype fp16 --steps 3)

names=() statuses=() seconds=()
failed=0
# step NAME LOG COMMAND...: runs COMMAND with stdout+stderr teed into OUT/LOG, records the result.
step() {
  local name=$1 log=$2 start=$SECONDS rc
  shift 2
  echo "=== $name: $*" | tee -a "$out/$log"
  "$@" 2>&1 | tee -a "$out/$log"
  rc=${PIPESTATUS[0]}
  names+=("$name") seconds+=($((SECONDS - start)))
  if ((rc == 0)); then statuses+=(ok); else statuses+=("FAILED ($rc)"); failed=1; fi
  echo "=== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$log"
  return "$rc"
}
skip_step() { names+=("$1") statuses+=("skipped: $2") seconds+=(0); echo "=== $1: skipped ($2)"; }

environment() {
  date -u
  nvidia-smi || true
  command -v nvcc >/dev/null && nvcc --version
  cmake --version | head -n 1
  "${CXX:-c++}" --version | head -n 1
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "cxx11abi", torch.compiled_with_cxx11_abi())'
  echo "debs: $debs_dir -> $deps"
  git -C "$root" log -1 --oneline 2>/dev/null || true
}

# dpkg -x, or ar + tar where dpkg is missing.
unpack_debs() {
  local f tmp
  shopt -s nullglob
  local files=("$debs_dir"/*.deb)
  shopt -u nullglob
  ((${#files[@]})) || { echo "no .deb files in $debs_dir"; return 1; }
  mkdir -p "$deps"
  for f in "${files[@]}"; do
    echo "unpacking $(basename "$f")"
    if command -v dpkg >/dev/null; then
      dpkg -x "$f" "$deps" || return 1
    else
      tmp=$(mktemp -d)
      (cd "$tmp" && ar x "$f" && tar -xf data.tar.* -C "$deps") || { rm -rf "$tmp"; return 1; }
      rm -rf "$tmp"
    fi
  done
}

configure() {
  local torch_prefix nvcc
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)') || return 1
  local args=(-S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
    "-DCMAKE_PREFIX_PATH=$torch_prefix;$deps/usr/lib/x86_64-linux-gnu/cmake;$deps/usr/lib/cmake"
    -DCMAKE_CUDA_ARCHITECTURES=90)
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  [[ -x $nvcc ]] && args+=("-DCMAKE_CUDA_COMPILER=$nvcc")
  cmake "${args[@]}"
}

run_benchmark() {
  local bench=$build/benchmarks/actckpt_bench
  if [[ -x $root/scripts/main-job.sh ]]; then
    # The main job builds what it needs; it is handed this build tree and the output folder. Its
    # planned mode runs at its default budget; the budget sweep is left to the CPU main job.
    BUILD_DIR=$build OUT=$out/main-job "$root/scripts/main-job.sh" "${seed_args[@]}" --pareto_budgets=0
  else
    mkdir -p "$out/bench" && "$bench" --out="$out/bench" "${seed_args[@]}"
  fi
}

# The memory planner at the seed configuration, at half of classic checkpointing's peak (the
# planner's profile measures that peak; offloading is what makes it feasible).
run_planned() {
  mkdir -p "$out/planned" &&
    "$build/benchmarks/actckpt_bench" --out="$out/planned" "${seed_args[@]}" --memory_budget=0.5xclassic \
      --benchmark_filter='ckpt_classic|ckpt_planned' --rounds=3
}

step environment env.log environment
if [[ -d $debs_dir ]]; then
  step unpack-debs env.log unpack_debs
else
  skip_step unpack-debs "no $debs_dir"
fi

if step configure configure.log configure; then
  step build build.log cmake --build "$build" -j "$jobs"
  # Offline: the LibTorch 2.6 compile check uses local .deb copies if given, else skips.
  ACTCKPT_NO_FETCH=1 ACTCKPT_DEBS_DIR=$debs_dir \
    step ctest ctest.log ctest --test-dir "$build" --output-on-failure -j "$jobs" \
    --timeout "$ctest_timeout" --output-junit "$out/ctest-junit.xml"
  if [[ -x $root/scripts/main-job.sh || -x $build/benchmarks/actckpt_bench ]]; then
    step benchmark bench.log run_benchmark
    step planned planned.log run_planned
  else
    skip_step benchmark "no scripts/main-job.sh and no $build/benchmarks/actckpt_bench"
  fi
else
  skip_step build "configure failed"
fi

{
  echo
  echo "== gpu-check summary ($out)"
  printf '%-12s %-24s %6s\n' step result seconds
  for i in "${!names[@]}"; do printf '%-12s %-24s %6s\n' "${names[$i]}" "${statuses[$i]}" "${seconds[$i]}"; done
  grep -E '^[0-9]+% tests passed|^The following tests|^[[:space:]]+[0-9]+ - ' "$out/ctest.log" 2>/dev/null
} | tee "$out/summary.txt"
exit "$failed"
