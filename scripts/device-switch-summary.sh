#!/usr/bin/env bash
# Sums the device switch's lines (tests/doctest_main.cpp) over the unit tests of one ctest run.
#
#   scripts/device-switch-summary.sh LastTest.log [--list]
#
# LastTest.log is ctest's record of every test's output (BUILD/Testing/Temporary/LastTest.log).
# Prints, per checkpoint form (the unit.X tests and the unit.X.reentrant ones), the cases that ran,
# the cases skipped because they cannot run here (never counted passed), and the device; with
# --list also each skipped case and why. Exit status 1 when the log holds no device switch line
# from a unit test that ran (a unit test that printed nothing cannot have been counted).
set -euo pipefail
log=${1:?usage: device-switch-summary.sh LastTest.log [--list]}
list=${2:-}
[[ -f $log ]] || { echo "device-switch-summary: no $log" >&2; exit 1; }
awk -v list="$list" '
  /^[0-9]+\/[0-9]+ Test: / { test = $3; form = (test ~ /\.reentrant$/) ? "reentrant" : "default"; next }
  /^\[device switch\] [a-z]+: [0-9]+ cases ran/ {
    if (test !~ /^unit\./) next
    device[$3] = 1
    ran[form] += $4
    match($0, /, [0-9]+ skipped/); n = substr($0, RSTART + 2, RLENGTH - 10) + 0
    skipped[form] += n
    tests[form]++
    next
  }
  /^\[device switch\] skipped: / { if (list != "") { sub(/^\[device switch\] skipped: /, ""); print "  skipped in " test ": " $0 } ; next }
  /^\[device switch\] ERROR: / { print "  " test ": " $0; errors++ ; next }
  END {
    d = ""; for (k in device) d = d (d == "" ? "" : ",") k; sub(/:$/, "", d); gsub(/:/, "", d)
    if (tests["default"] + tests["reentrant"] == 0) { print "device switch: no unit test printed its line"; exit 1 }
    printf "device switch (%s): default form %d cases ran, %d skipped (cannot run here) in %d tests; reentrant form %d ran, %d skipped in %d tests\n",
      d, ran["default"], skipped["default"], tests["default"], ran["reentrant"], skipped["reentrant"], tests["reentrant"]
    if (errors) { print "device switch: " errors " case(s) ran without taking their device from the switch"; exit 2 }
  }' "$log"
