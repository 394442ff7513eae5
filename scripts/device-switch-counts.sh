#!/usr/bin/env bash
# How many cases of a built actckpt_tests each value of the device switch selects, read from
# doctest's --list-test-cases (nothing runs; three listings, each a LibTorch load).
#
#   scripts/device-switch-counts.sh BUILD/tests/actckpt_tests
#
# Prints: all cases; the ones the switch selects for cpu (ACTCKPT_TEST_DEVICE unset, and =cpu)
# and for cuda (=cuda with ACTCKPT_REQUIRE_CUDA=1, as the GPU check runs it, so the [cuda] cases
# count even here); how many are [cuda] and how many are skipped on each. Fails when the plain run
# and ACTCKPT_TEST_DEVICE=cpu select different cases (the switch must not change a CPU run), or
# when a device selects no case.
set -euo pipefail
exe=${1:?usage: device-switch-counts.sh path/to/actckpt_tests}
[[ -x $exe ]] || { echo "device-switch-counts: $exe is not an executable" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# The names doctest would run, one a line (between the listing's two rules of '=').
names() { "$exe" --list-test-cases --no-intro=true 2>/dev/null | awk '/^====/ { n++; next } n == 1'; }
(unset ACTCKPT_TEST_DEVICE ACTCKPT_REQUIRE_CUDA; names) | sort >"$tmp/plain"
ACTCKPT_TEST_DEVICE=cpu ACTCKPT_REQUIRE_CUDA=0 names | sort >"$tmp/cpu"
ACTCKPT_TEST_DEVICE=cuda ACTCKPT_REQUIRE_CUDA=1 names | sort >"$tmp/cuda"
sort -u "$tmp/cpu" "$tmp/cuda" >"$tmp/all"
n() { wc -l <"$1" | tr -d ' '; }
cuda_tagged() { grep -cF '[cuda]' "$1" || true; }
all=$(n "$tmp/all") plain=$(n "$tmp/plain") cpu=$(n "$tmp/cpu") cuda=$(n "$tmp/cuda")
echo "device switch counts of $(basename "$exe"): $all cases in all"
echo "  plain run (no switch): $plain cases"
echo "  cpu:  $cpu cases ($(cuda_tagged "$tmp/cpu") of them [cuda]; $((all - cpu)) skipped here: [cuda] cases without a GPU)"
echo "  cuda: $cuda cases ($(cuda_tagged "$tmp/cuda") of them [cuda]; $((all - cuda)) cpu-only cases skipped)"
status=0
cmp -s "$tmp/plain" "$tmp/cpu" || { echo "device-switch-counts: the plain run and ACTCKPT_TEST_DEVICE=cpu select different cases" >&2; status=1; }
((cpu > 0 && cuda > 0)) || { echo "device-switch-counts: a device selects no case" >&2; status=1; }
exit "$status"
