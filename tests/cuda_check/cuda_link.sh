#!/usr/bin/env bash
# The CUDA path linked, not only parsed (label `cuda-link`, CUDA LibTorch builds only): each
# executable the GPU script builds must load LibTorch's CUDA libraries, and the unit tests' CUDA
# cases must have been compiled in, so that on a machine without a GPU, ACTCKPT_REQUIRE_CUDA=1
# makes them fail for the missing device, not for a missing CUDA path (as on the GPU machine,
# where they run).
#
#   cuda_link.sh ACTCKPT_TESTS [OTHER_EXECUTABLE...]
set -uo pipefail
tests=$1
fail=0
for exe in "$@"; do
  [[ -n $exe ]] || continue  # a target this build does not have
  needed=$(readelf -d "$exe" | awk '/NEEDED/ {print $NF}' | tr -d '[]' | tr '\n' ' ')
  for lib in libtorch_cuda.so libc10_cuda.so; do
    if [[ " $needed" != *" $lib "* ]]; then
      echo "FAIL: $(basename "$exe") does not link $lib (NEEDED: $needed)"; fail=1
    fi
  done
  # Every library resolves (the CUDA runtime included) with nothing missing.
  if ldd "$exe" | grep -q 'not found'; then
    echo "FAIL: $(basename "$exe") has unresolved libraries:"; ldd "$exe" | grep 'not found'; fail=1
  fi
  echo "$(basename "$exe"): links $(ldd "$exe" | awk '/libtorch_cuda|libc10_cuda|libcudart/ {printf "%s ", $3}')"
done

if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
  echo "a GPU is present: the [cuda] cases run in unit.cuda; nothing more to check here"
  exit "$fail"
fi
out=$(ACTCKPT_REQUIRE_CUDA=1 "$tests" --test-case='*[cuda]*' --no-intro=true 2>&1)
rc=$?
if ((rc == 0)); then
  echo "FAIL: with ACTCKPT_REQUIRE_CUDA=1 and no GPU the [cuda] cases passed"; fail=1
elif grep -q 'built without its CUDA path' <<<"$out"; then
  echo "FAIL: the [cuda] cases say actckpt was built without its CUDA path"; fail=1
elif ! grep -q 'no CUDA device is available' <<<"$out"; then
  echo "FAIL: the [cuda] cases failed, but not for the missing device:"; echo "$out" | tail -n 30; fail=1
else
  echo "ACTCKPT_REQUIRE_CUDA=1: the [cuda] cases fail for the missing device only ($(grep -c 'no CUDA device is available' <<<"$out") reports)"
fi
((fail == 0)) && echo "cuda-link OK"
exit "$fail"
