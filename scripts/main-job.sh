#!/usr/bin/env bash
# actckpt's main job: what activation checkpointing and CPU offload buy, in one command.
#
#   scripts/main-job.sh [--out DIR] [actckpt_bench flags...]
#
# Installs the Debian packages it needs (scripts/install-deps.sh), builds actckpt_bench,
# runs its eleven modes (baseline, ckpt_classic, ckpt_sync_offload, ckpt_async_offload, the
# three checkpointed ones again in the reentrant form, the offload-every-saved-activation mode
# offload_saved, the disk tier's modes ckpt_disk_offload (DiskOffload) and ckpt_disk_spill (async
# offload with a host budget of a quarter of what it stashes, the rest spilled to disk; the
# store's directory is $ACTCKPT_DISK_DIR, else $TMPDIR, else /tmp) and the memory planner's mode
# ckpt_planned) on the embedded CPU default (or the flags given, e.g. the seed's GPU configuration:
#   --device cuda --total_tokens 12000 --num_layers 12 --hidden_dim 1024 --head_dim 64
#   --ff_dim 4096 --batch_size 48 --dtype fp16 --steps 3),
# prints the results table and writes to the output folder (default: out/main-job):
#   results.md / results.json / results.csv     the table, with the analytic floor
#   benchmark.json                              Google Benchmark's own JSON
#   timeline_<mode>.csv                         memory at every allocation of one step, per mode
#   memory_timeline.json                        the same as a Perfetto trace (ui.perfetto.dev)
#   activation_ckpt_benchmark.png               bars: time and peak memory per mode
#   memory_timeline.png                         one memory timeline per mode
#   pareto.json|md, memory_budget_pareto.png    the planner at several budgets (time vs peak)
#
# The planner: ckpt_planned runs the fastest plan under --memory_budget (default mid:0.5, halfway
# between classic's and baseline's peaks); --pareto_budgets (default 6) sweeps budgets from the
# smallest feasible one to baseline's peak, with classic's peak and mid:0.5 added. Pass
# --pareto_budgets=0 to skip the sweep.
#
# Timing: Google Benchmark runs each mode REPETITIONS times (default 3) in random interleaved
# order, STEPS measured steps each after one warmup step (its JSON and the memory figures come
# from these). Then ROUNDS round-robin rounds (default 8) run one step of every mode per round:
# the table's time is the median round and its time deltas are medians of per-round ratios,
# which cancels most of the drift of a shared machine's speed.
#
# Environment:
#   OUT               output folder (same as --out)
#   BUILD_DIR         build tree (default build/main-job); an existing configured tree is reused
#   JOBS              build parallelism (default: nproc)
#   OMP_NUM_THREADS   LibTorch's intra-op threads (default: nproc)
#   OMP_WAIT_POLICY   default PASSIVE (idle OpenMP threads sleep; robust on a shared machine)
#   REPETITIONS       repetitions per mode (default 3; 1 runs the modes one after another)
#   ROUNDS            round-robin rounds after them (default 8; 0: the table uses the repetitions)
#   ACTCKPT_LIBTORCH  wheel (default): the pinned torch 2.x wheel (scripts/install-libtorch.sh
#                     installs it into .venv on first use); system: Debian's LibTorch 1.13
#   ACTCKPT_SKIP_DEPS=1  do not run scripts/install-deps.sh
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/out/main-job}
build_given=${BUILD_DIR:+1}
build=${BUILD_DIR:-$root/build/main-job}
jobs=${JOBS:-$(nproc)}
repetitions=${REPETITIONS:-3}
libtorch=${ACTCKPT_LIBTORCH:-wheel}
rounds=${ROUNDS:-8}
bench_args=()

while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    --out=*) out=${1#--out=}; shift ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0 ;;
    *) bench_args+=("$1"); shift ;;
  esac
done

start=$SECONDS
stamp() { printf '[main-job %4ds] %s\n' $((SECONDS - start)) "$*"; }

# 1. Dependencies: a fresh Debian 12 machine gets them here. A build tree handed in already
#    configured (the GPU check) brings its own.
if [[ -n ${ACTCKPT_SKIP_DEPS:-} ]] || [[ -n $build_given && -f $build/CMakeCache.txt ]]; then
  stamp "dependencies: skipped (ACTCKPT_SKIP_DEPS or a configured BUILD_DIR)"
else
  stamp "dependencies: scripts/install-deps.sh"
  "$root/scripts/install-deps.sh"
fi

# 2. Build only the benchmark (tests and examples have their own commands).
build_start=$SECONDS
if [[ ! -f $build/CMakeCache.txt ]]; then
  stamp "configure: $build (LibTorch: $libtorch)"
  # The log sits beside the build tree, whose parent a fresh clone does not have yet.
  mkdir -p "$(dirname "$build")"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DACTCKPT_BUILD_TESTS=OFF \
    -DACTCKPT_BUILD_EXAMPLES=OFF -DACTCKPT_INSTALL=OFF -DACTCKPT_LIBTORCH="$libtorch" >"$build.configure.log" 2>&1 ||
    { cat "$build.configure.log" >&2; exit 1; }
fi
stamp "build: actckpt_bench (-j $jobs)"
cmake --build "$build" --target actckpt_bench -j "$jobs" ||
  { echo "main-job: building actckpt_bench failed (is Google Benchmark found? Debian: libbenchmark-dev)" >&2; exit 1; }
build_seconds=$((SECONDS - build_start))
bench=$build/benchmarks/actckpt_bench

# 3. Run the eleven modes and the budget sweep.
mkdir -p "$out"
out=$(cd "$out" && pwd)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}
# Idle OpenMP threads sleep instead of spinning: on a machine shared with other work, spinning
# threads fight the compute threads and a step can take 5-10 times longer, differently for
# each mode; sleeping costs little at this model size.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
interleave=()
if ((repetitions > 1)); then
  interleave=(--benchmark_repetitions="$repetitions" --benchmark_enable_random_interleaving=true
    --benchmark_display_aggregates_only=true)
fi
# The CPU default measures 2 steps per repetition unless --steps is given.
steps=(--steps=2)
rounds_arg=(--rounds="$rounds")
budget=(--memory_budget=mid:0.5)
pareto=(--pareto_budgets=6)
for a in "${bench_args[@]}"; do
  [[ $a == --steps || $a == --steps=* ]] && steps=()
  [[ $a == --rounds || $a == --rounds=* ]] && rounds_arg=()
  [[ $a == --memory_budget* ]] && budget=()
  [[ $a == --pareto_budgets || $a == --pareto_budgets=* ]] && pareto=()
done
run_start=$SECONDS
stamp "run: $bench (OMP_NUM_THREADS=$OMP_NUM_THREADS OMP_WAIT_POLICY=$OMP_WAIT_POLICY, $repetitions repetitions per mode, $rounds rounds) -> $out"
"$bench" --out="$out" --table=false "${steps[@]}" "${rounds_arg[@]}" "${budget[@]}" "${pareto[@]}" "${bench_args[@]}" \
  "${interleave[@]}" \
  --benchmark_out="$out/benchmark.json" --benchmark_out_format=json | tee "$out/benchmark.log"
run_seconds=$((SECONDS - run_start))

# 4. Pictures, drawn from the files the benchmark wrote.
python=
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null && "$p" -c 'import matplotlib' 2>/dev/null; then python=$p; break; fi
done
if [[ -n $python ]]; then
  "$python" "$root/scripts/plot_results.py" "$out"
else
  echo "main-job: no python3 with matplotlib (Debian: python3-matplotlib): pictures not drawn" >&2
fi

echo
cat "$out/results.md"
if [[ -f $out/pareto.md ]]; then echo; cat "$out/pareto.md"; fi
echo
stamp "done: build ${build_seconds} s, benchmark ${run_seconds} s; results in $out"
