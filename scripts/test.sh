#!/usr/bin/env bash
# The project's test command: dependencies, then configure + build + every ctest test of one
# LibTorch (a CMake workflow preset, CMakePresets.json).
#
#   scripts/test.sh                     LibTorch 2.x, the pinned torch wheel (the one the main job
#                                       uses; a CUDA build: the CUDA path is compiled and linked,
#                                       its cases skip without a GPU): workflow `ci`, build/ci
#   scripts/test.sh --libtorch system   Debian's LibTorch 1.13: workflow `ci-1.13`, build/ci-1.13
#   --asan                              then the unit tests under ASan+UBSan (workflow `asan`,
#                                       on Debian's 1.13, build/asan)
#
# .ci/run runs the first, then the second with --asan.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

libtorch=wheel
asan=0
while (($#)); do
  case $1 in
    --libtorch) libtorch=$2; shift 2 ;;
    --libtorch=*) libtorch=${1#--libtorch=}; shift ;;
    --asan) asan=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $libtorch in
  wheel) preset=ci ;;
  system) preset=ci-1.13 ;;
  *) echo "test.sh: --libtorch must be wheel or system" >&2; exit 2 ;;
esac

start=$SECONDS
stamp() { printf '[test.sh %4ds] %s\n' $((SECONDS - start)) "$*"; }

stamp "dependencies: scripts/install-deps.sh"
scripts/install-deps.sh
if [[ $libtorch == wheel ]]; then
  stamp "LibTorch 2.x: scripts/install-libtorch.sh"
  scripts/install-libtorch.sh >/dev/null
fi

stamp "workflow $preset (LibTorch: $libtorch)"
rc=0
cmake --workflow --preset "$preset" || rc=$?
# ctest counts whole tests; a test file can pass with some of its cases skipped (a [cuda] case
# without a GPU): the device switch's lines count those cases, so the summary shows every skip.
if [[ -f build/$preset/Testing/Temporary/LastTest.log ]]; then
  stamp "$(scripts/device-switch-summary.sh "build/$preset/Testing/Temporary/LastTest.log" --list || true)"
fi
((rc == 0)) || { stamp "workflow $preset FAILED ($rc)"; exit "$rc"; }
stamp "workflow $preset passed"

if ((asan)); then
  # Sanitizer run: the unit tests again, built with AddressSanitizer (leak detection on) and
  # UBSan (the `asan` workflow preset, build tree build/asan); any report fails its test.
  stamp "workflow asan"
  cmake --workflow --preset asan
  stamp "workflow asan passed"
fi
stamp "done"
