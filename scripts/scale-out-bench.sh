#!/usr/bin/env bash
# Scale-out benchmark (docs/distributed.md "Scale out"): train_gpt's step time in 1 process and in 2
# data-parallel ranks at the same global batch, per --mode, with the bytes all-reduced per step
# and the Reducer's own figure for communication hidden behind backward.
#
#   scripts/scale-out-bench.sh [BUILD_DIR] [STEPS] [-- extra train_gpt flags]
#
# BUILD_DIR (default build/dev) must hold examples/train_gpt and tests/distributed/dist_worker.
# The 2 ranks are started by torchrun where it is installed, else by dist_worker's launcher (the
# same variables and agent store). ROUNDS (default 3) rounds. Prints a Markdown table.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

build=${1:-build/dev}
steps=${2:-20}
shift $(($# > 2 ? 2 : $#))
[[ ${1:-} == -- ]] && shift
extra=("$@")
exe=$build/examples/train_gpt
[[ -x $exe ]] || { echo "no $exe: cmake --build $build --target train_gpt dist_worker" >&2; exit 2; }
if command -v torchrun >/dev/null; then
  launch=(torchrun --no_python --nproc_per_node=2 -r 1 -t 1)
  launcher=torchrun
else
  launch=("$build/tests/distributed/dist_worker" launch --nproc 2 --timeout 900 --)
  launcher="dist_worker launch"
fi
flags=(--steps "$steps" --log-every "$steps" --sample-length 0 --eval-batches 0 "${extra[@]}")

# ms per step from train_gpt's "time:" line (torchrun prefixes rank 0's lines with [default0]:).
ms() { sed -n 's/.*time: .* steps in .* s, \([0-9.]*\) ms per step.*/\1/p' <<<"$1"; }

# Each configuration runs ROUNDS times, all configurations in turn within a round, and the table
# gives the median: on a shared machine whose speed drifts, a slow minute then hits every
# configuration alike instead of one of them.
rounds=${ROUNDS:-3}
export OMP_WAIT_POLICY=PASSIVE  # idle OpenMP workers sleep: spinning ones cost much on a busy machine
median() { sort -g | awk '{v[NR] = $1} END {print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2}'; }

echo "train_gpt ${flags[*]}; 2 ranks by $launcher; median of $rounds rounds; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
modes=(baseline ckpt sync async)
declare -A times dp
for ((round = 1; round <= rounds; ++round)); do
  for mode in "${modes[@]}"; do
    out=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "$exe" --mode "$mode" "${flags[@]}")
    times[$mode,one]+="$(ms "$out") "
    out=$(OMP_NUM_THREADS=2 OPENBLAS_NUM_THREADS=2 "$exe" --mode "$mode" "${flags[@]}")
    times[$mode,two]+="$(ms "$out") "
    out=$(OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 "${launch[@]}" "$exe" --mode "$mode" "${flags[@]}" 2>&1)
    times[$mode,ranks]+="$(ms "$out") "
    dp[$mode]+="$(grep -o 'all-reduced .*' <<<"$out" | head -1)"$'\n'
  done
done

echo
echo "| mode | 1 process, 1 thread (ms/step) | 1 process, 2 threads (ms/step) | 2 ranks x 1 thread (ms/step) | speed-up vs 1 thread | vs 2 threads | all-reduced per step | buckets | communication per step, share hidden behind backward (each round) |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---|"
for mode in "${modes[@]}"; do
  a=$(tr ' ' '\n' <<<"${times[$mode,one]}" | grep . | median)
  b=$(tr ' ' '\n' <<<"${times[$mode,two]}" | grep . | median)
  c=$(tr ' ' '\n' <<<"${times[$mode,ranks]}" | grep . | median)
  first=$(head -1 <<<"${dp[$mode]}")
  bytes=$(sed -n 's/all-reduced \([0-9.]* MB\) per step.*/\1/p' <<<"$first")
  buckets=$(sed -n 's/.* in \([0-9]*\) buckets.*/\1/p' <<<"$first")
  hidden=$(sed -n 's/.*communication \([0-9.]* ms\), \([0-9]*%\) of it hidden.*/\1 \2/p' <<<"${dp[$mode]}" | paste -sd, | sed 's/,/, /g')
  printf '| %s | %s | %s | %s | %.2fx | %.2fx | %s | %s | %s |\n' "$mode" "$a" "$b" "$c" \
    "$(awk "BEGIN{print $a / $c}")" "$(awk "BEGIN{print $b / $c}")" "$bytes" "$buckets" "$hidden"
done
echo
echo "each round's ms/step (1 thread | 2 threads | 2 ranks):"
for mode in "${modes[@]}"; do echo "  $mode: ${times[$mode,one]}| ${times[$mode,two]}| ${times[$mode,ranks]}"; done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
