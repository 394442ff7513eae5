#!/usr/bin/env bash
# The project's test command: dependencies, then configure + build + every ctest test (the `ci`
# workflow preset in CMakePresets.json; build tree build/ci).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/install-deps.sh
cmake --workflow --preset ci

# Sanitizer run: the unit tests again, built with AddressSanitizer (leak detection on) and
# UBSan (the `asan` workflow preset, build tree build/asan); any report fails its test.
cmake --workflow --preset asan
