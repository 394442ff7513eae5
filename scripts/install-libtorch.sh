#!/usr/bin/env bash
# Installs the pinned LibTorch 2.x (PyPI's torch wheel, scripts/libtorch-requirements.txt) into a
# project-local virtual environment, never the system Python; does nothing when it is there.
#
#   scripts/install-libtorch.sh          # prints what it did on stderr; the venv path on stdout
#
# The wheel is a CUDA 13 build; its C++ half (include/, lib/, share/cmake/Torch) is LibTorch with
# the CXX11 ABI. It is installed with --no-deps: of its nvidia-* dependencies (several GB) only the
# four that the CUDA 13 toolkit in /usr/local/cuda lacks or has too old come from PyPI; the rest
# of the CUDA runtime is the toolkit's (see the requirements file). A build against it therefore
# needs /usr/local/cuda (a CUDA LibTorch's CMake config needs the toolkit anyway); no GPU.
#
# Environment:
#   ACTCKPT_VENV   the virtual environment (default: .venv in the checkout; git ignores it)
#   PYTHON         the interpreter that creates it (default: /usr/bin/python3, else python3;
#                  it must be CPython 3.11, the wheel's tag: Debian 12's python3)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${ACTCKPT_VENV:-$root/.venv}
requirements=$root/scripts/libtorch-requirements.txt
# The stamp names the requirements' content: editing a pin reinstalls.
stamp=$venv/.actckpt-libtorch-$(sha256sum "$requirements" | cut -c1-16)

if [[ -f $stamp ]] && compgen -G "$venv/lib/python3*/site-packages/torch/share/cmake/Torch/TorchConfig.cmake" >/dev/null; then
  echo "install-libtorch: $(grep -m1 '^torch==' "$requirements") already in $venv" >&2
  echo "$venv"
  exit 0
fi

python=${PYTHON:-}
if [[ -z $python ]]; then
  for p in /usr/bin/python3 python3; do
    if command -v "$p" >/dev/null && "$p" -c 'import venv, ensurepip' 2>/dev/null; then python=$p; break; fi
  done
fi
if [[ -z $python ]]; then
  # Debian's python3 without ensurepip: python3-venv brings it.
  echo "install-libtorch: no python3 that can create a venv; installing python3-venv" >&2
  sudo=()
  ((EUID == 0)) || sudo=(sudo)
  "${sudo[@]}" apt-get update >&2
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv >&2
  python=/usr/bin/python3
fi

start=$SECONDS
echo "install-libtorch: installing $(grep -m1 '^torch==' "$requirements") into $venv with $python" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
# --no-deps: the requirements file lists every package that is wanted, pinned.
"$venv/bin/python" -m pip install --no-deps --no-input --disable-pip-version-check -q -r "$requirements" >&2
# (`pip check` would list torch's nvidia-*, triton and cuda-* requirements: left out on purpose.)
touch "$stamp"
echo "install-libtorch: done in $((SECONDS - start)) s ($(du -sh "$venv" | cut -f1) in $venv)" >&2
echo "$venv"
