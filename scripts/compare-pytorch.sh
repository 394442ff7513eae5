#!/usr/bin/env bash
# actckpt against PyTorch's own checkpointing and offload, on the same LibTorch binary: the
# Python side is the wheel's torch (scripts/install-libtorch.sh, .venv), the C++ side actckpt_bench
# built against that wheel's LibTorch. Same network (8 pre-norm transformer blocks, hidden 256,
# head 64, ff 1024, 2048 tokens = batch 8 x seq 256, float32, SGD, gradients zeroed in place),
# same threads, same malloc settings (glibc's M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 4 GiB
# through the environment, for both processes; actckpt_bench's own mallopt is switched off),
# run one after the other in this one command.
#
#   scripts/compare-pytorch.sh [OUT_DIR]     (default out/compare-pytorch)
#
# PyTorch modes: baseline, checkpoint(use_reentrant=True), checkpoint(use_reentrant=False),
# autograd.graph.save_on_cpu (the counterpart of SyncOffload). actckpt modes: baseline,
# ckpt_classic (NoOffload), ckpt_sync_offload. Each side reports its median step time over
# ROUNDS interleaved rounds (paired: median of per-round ratios) and its peak bytes from
# LibTorch's CPU memory-reporting hook.
# Environment: BUILD_DIR (default build/main-job: the main job's tree, built if missing),
# OMP_NUM_THREADS (default 2), ROUNDS (default 10).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/out/compare-pytorch}
build=${BUILD_DIR:-$root/build/main-job}
rounds=${ROUNDS:-10}
mkdir -p "$out"
venv=$("$root/scripts/install-libtorch.sh")
if [[ ! -x $build/benchmarks/actckpt_bench ]]; then
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DACTCKPT_BUILD_TESTS=OFF \
    -DACTCKPT_BUILD_EXAMPLES=OFF -DACTCKPT_INSTALL=OFF -DACTCKPT_LIBTORCH=wheel >"$out/configure.log"
  cmake --build "$build" --target actckpt_bench
fi
grep -q 'ACTCKPT_LIBTORCH:STRING=wheel' "$build/CMakeCache.txt" ||
  { echo "compare-pytorch: $build is not built against the wheel (ACTCKPT_LIBTORCH=wheel)" >&2; exit 1; }

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} OMP_WAIT_POLICY=PASSIVE
export MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=4294967296
echo "== PyTorch $("$venv/bin/python" -c 'import torch; print(torch.__version__)' 2>/dev/null) (OMP_NUM_THREADS=$OMP_NUM_THREADS, MALLOC_MMAP_THRESHOLD_=$MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_=$MALLOC_TRIM_THRESHOLD_)"
"$venv/bin/python" -W ignore "$root/benchmarks/python_reference/checkpoint_reference.py" --zero_grad inplace \
  --threads "$OMP_NUM_THREADS" --steps "$rounds" --json "$out/pytorch.json" 2>&1 | grep -v '^USDT:' | tee "$out/pytorch.log"
echo "== actckpt"
"$build/benchmarks/actckpt_bench" --num_layers=8 --hidden_dim=256 --head_dim=64 --ff_dim=1024 --total_tokens=2048 \
  --batch_size=8 --rounds="$rounds" --warm_allocator=false --benchmark_filter='baseline|classic|sync' \
  --pareto_budgets=0 --out="$out/actckpt" 2>&1 | tee "$out/actckpt.log"
cat "$out/actckpt/results.md"
