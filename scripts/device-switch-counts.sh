#!/usr/bin/env bash
# How many cases of a built actckpt_tests each value of the device switch selects, read from
# doctest's --count (nothing runs: a second or two per device).
#
#   scripts/device-switch-counts.sh BUILD/tests/actckpt_tests
#
# Prints one line per device: all cases; the ones the switch selects for cpu (ACTCKPT_TEST_DEVICE
# unset, and =cpu) and for cuda (=cuda with ACTCKPT_REQUIRE_CUDA=1, as the GPU check runs it, so
# the [cuda] cases count even here); how many are [cuda] and cpu-only. Fails when the plain run and
# ACTCKPT_TEST_DEVICE=cpu select different cases (the switch must not change a CPU run), or when a
# device selects no case.
set -euo pipefail
exe=${1:?usage: device-switch-counts.sh path/to/actckpt_tests}
[[ -x $exe ]] || { echo "device-switch-counts: $exe is not an executable" >&2; exit 1; }
count() { "$exe" --count "$@" | sed -n 's/.*unskipped test cases passing the current filters: \([0-9]*\).*/\1/p'; }
all=$(env -u ACTCKPT_TEST_DEVICE -u ACTCKPT_REQUIRE_CUDA "$exe" --count --no-skip | sed -n 's/.*filters: \([0-9]*\).*/\1/p')
plain=$(unset ACTCKPT_TEST_DEVICE ACTCKPT_REQUIRE_CUDA; count)
cpu=$(ACTCKPT_TEST_DEVICE=cpu ACTCKPT_REQUIRE_CUDA=0 count)
cpu_cuda_cases=$(ACTCKPT_TEST_DEVICE=cpu ACTCKPT_REQUIRE_CUDA=0 count '--test-case=*[cuda]*')
cuda=$(ACTCKPT_TEST_DEVICE=cuda ACTCKPT_REQUIRE_CUDA=1 count)
cuda_cases=$(ACTCKPT_TEST_DEVICE=cuda ACTCKPT_REQUIRE_CUDA=1 count '--test-case=*[cuda]*')
echo "device switch counts of $(basename "$exe"): $all cases in all"
echo "  plain run (no switch): $plain cases"
echo "  cpu:  $cpu cases ($cpu_cuda_cases of them [cuda]; $((all - cpu)) skipped here: [cuda] cases without a GPU)"
echo "  cuda: $cuda cases ($cuda_cases of them [cuda]; $((all - cuda)) cpu-only cases skipped)"
status=0
[[ $plain == "$cpu" ]] || { echo "device-switch-counts: the plain run selects $plain cases, ACTCKPT_TEST_DEVICE=cpu $cpu" >&2; status=1; }
((cpu > 0 && cuda > 0)) || { echo "device-switch-counts: a device selects no case" >&2; status=1; }
exit "$status"
