#!/usr/bin/env bash
# Prints the CMake prefix of the pinned LibTorch 2.x (installing it first if missing, see
# scripts/install-libtorch.sh), so that
#   cmake -DCMAKE_PREFIX_PATH="$(scripts/libtorch-prefix.sh)" ...
# builds against it. The install's messages go to stderr.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=$("$root/scripts/install-libtorch.sh")
shopt -s nullglob
prefixes=("$venv"/lib/python3*/site-packages/torch)
((${#prefixes[@]} == 1)) || { echo "libtorch-prefix: no single torch package in $venv" >&2; exit 1; }
echo "${prefixes[0]}"
