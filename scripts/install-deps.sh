#!/usr/bin/env bash
# Installs the Debian 12 packages actckpt builds and tests with; does nothing when all are there.
set -euo pipefail

# libgloo-dev: the Gloo headers that actckpt/distributed/distributed.hpp (c10d's ProcessGroupGloo) includes.
# torchrun (python3-torch) is not installed: it is large, and the distributed tests start their
# ranks with torchrun's variables and agent store themselves (tests/distributed).
packages=(libtorch-dev doctest-dev libbenchmark-dev libopenblas0-pthread cmake g++ ninja-build
  libcli11-dev python3-matplotlib libgloo-dev)

missing=()
for p in "${packages[@]}"; do
  # dpkg -s also succeeds for removed-but-configured packages; require "install ok installed".
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=()
if ((EUID != 0)); then sudo=(sudo); fi
echo "install-deps: installing ${missing[*]}"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
