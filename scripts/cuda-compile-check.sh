#!/usr/bin/env bash
# Syntax-check actckpt's CUDA code path (ACTCKPT_WITH_CUDA=1) on a machine without a GPU.
#
#   scripts/cuda-compile-check.sh [options] system   # the LibTorch headers of this machine
#   scripts/cuda-compile-check.sh [options] trixie   # Debian trixie's CUDA LibTorch 2.6 headers
#
# system: LibTorch's include dirs (default: Debian's 1.13 under /usr/include) plus, after them,
#         tests/cuda_check/stub for the generated c10/cuda/impl/cuda_cmake_macros.h that a CPU
#         LibTorch lacks.
# trixie: fetches libtorch-dev and libtorch-cuda-dev 2.6 from trixie with `apt-get download`
#         (private apt lists, the system's apt state is untouched), falling back to copies in
#         $ACTCKPT_DEBS_DIR; unpacks them with dpkg -x under --cache, once. Offline, put
#         libtorch-dev_2.6*.deb and libtorch-cuda-dev_2.6*.deb (Debian trixie, amd64) in a folder
#         and name it in ACTCKPT_DEBS_DIR; without them the check is skipped (exit 77).
#
# Options:
#   --cxx PATH            C++ compiler (default: $CXX, else g++)
#   --std FLAG            language flag (default: -std=c++20)
#   --cache DIR           download/unpack dir for trixie (default: build/cuda-check)
#   --torch-include DIRS  colon-separated LibTorch include dirs for `system`
#                         (default: /usr/include:/usr/include/torch/csrc/api/include)
#   --torch-flags FLAGS   LibTorch's compile flags (default: -D_GLIBCXX_USE_CXX11_ABI=1)
#   --cuda-include DIR    CUDA headers (default: $CUDA_HOME/include, else /usr/local/cuda/include)
#   --cufile-include DIR  cufile.h, for the disk tier's GPUDirect Storage path (default: the torch
#                         wheel's .venv/lib/python3*/site-packages/nvidia/cu*/include in the
#                         checkout where it has one; 'none' leaves the path out, as a build without
#                         cufile.h does)
#   --source FILE         file to check (default: tests/cuda_check/cuda_path.cpp)
#   --no-werror           report warnings without failing on them
# Environment: ACTCKPT_NO_FETCH=1 skips apt-get (offline machines); ACTCKPT_DEBS_DIR names a
# folder with the two trixie .deb files.
# Exit status: 0 parsed cleanly, 1 compile error, 2 usage error, 77 skipped (headers missing).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cxx=${CXX:-g++}
std=-std=c++20
cache=$root/build/cuda-check
torch_include=/usr/include:/usr/include/torch/csrc/api/include
torch_flags=-D_GLIBCXX_USE_CXX11_ABI=1
cuda_include=${CUDA_HOME:-/usr/local/cuda}/include
cufile_include=
source=$root/tests/cuda_check/cuda_path.cpp
werror=-Werror
mode=

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
skip() { echo "SKIPPED: $*"; exit 77; }

while (($#)); do
  case $1 in
    --cxx) cxx=$2; shift 2 ;;
    --std) std=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --torch-include) torch_include=$2; shift 2 ;;
    --torch-flags) torch_flags=$2; shift 2 ;;
    --cuda-include) cuda_include=$2; shift 2 ;;
    --cufile-include) cufile_include=$2; shift 2 ;;
    --source) source=$2; shift 2 ;;
    --no-werror) werror=; shift ;;
    -h | --help) usage; exit 0 ;;
    system | trixie) mode=$1; shift ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
[[ -n $mode ]] || { usage >&2; exit 2; }

[[ -f $cuda_include/cuda_runtime_api.h ]] || skip "no CUDA headers in $cuda_include"

# Echoes a directory holding the two trixie .deb files, or fails.
fetch_trixie_debs() {
  local dl=$cache/debs
  if compgen -G "$dl/libtorch-dev_*.deb" >/dev/null && compgen -G "$dl/libtorch-cuda-dev_*.deb" >/dev/null; then
    echo "$dl"; return 0
  fi
  mkdir -p "$dl"
  local t uri o
  t=$(mktemp -d)
  mkdir -p "$t/lists/partial" "$t/cache/archives/partial"
  uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [[ -z ${ACTCKPT_NO_FETCH:-} && -n $uri ]] && command -v apt-get >/dev/null; then
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri trixie main contrib" >"$t/sources.list"
    o="-o Dir::Etc::SourceList=$t/sources.list -o Dir::Etc::SourceParts=/dev/null -o Dir::State::Lists=$t/lists -o Dir::Cache=$t/cache"
    # shellcheck disable=SC2086  # $o is a list of options
    if apt-get $o -qq update >"$t/apt.log" 2>&1 &&
      (cd "$dl" && apt-get $o -qq download libtorch-dev libtorch-cuda-dev) >>"$t/apt.log" 2>&1; then
      rm -rf "$t"; echo "$dl"; return 0
    fi
    echo "apt-get download from trixie failed (last lines below); trying local copies" >&2
    tail -n 5 "$t/apt.log" >&2
  fi
  rm -rf "$t" "$dl"
  local d
  for d in "${ACTCKPT_DEBS_DIR:-}"; do
    if [[ -n $d ]] && compgen -G "$d/libtorch-dev_2*.deb" >/dev/null && compgen -G "$d/libtorch-cuda-dev_2*.deb" >/dev/null; then
      (cd "$d" && pwd); return 0
    fi
  done
  return 1
}

if [[ -z $cufile_include ]]; then
  for h in "$root"/.venv/lib/python3*/site-packages/nvidia/cu*/include/cufile.h; do
    [[ -f $h ]] && { cufile_include=$(dirname "$h"); break; }
  done
fi
cufile_flags=()
if [[ -n $cufile_include && $cufile_include != none ]]; then
  [[ -f $cufile_include/cufile.h ]] || { echo "error: no cufile.h in $cufile_include" >&2; exit 2; }
  cufile_flags=(-isystem "$cufile_include")
  cufile_label="with cufile.h from $cufile_include"
else
  cufile_label="without cufile.h (the cuFile path left out)"
fi

includes=()
case $mode in
  system)
    IFS=: read -r -a dirs <<<"$torch_include"
    for d in "${dirs[@]}"; do
      # -isystem /usr/include would break libstdc++'s #include_next; it is searched anyway.
      [[ $d == /usr/include ]] || includes+=(-isystem "$d")
    done
    found=
    for d in "${dirs[@]}"; do [[ -f $d/c10/cuda/CUDAStream.h ]] && found=1; done
    [[ -n $found ]] || skip "no c10/cuda/CUDAStream.h under $torch_include"
    includes+=(-idirafter "$root/tests/cuda_check/stub")
    label="configured LibTorch ($torch_include)"
    ;;
  trixie)
    unpacked=$cache/libtorch-2.6
    if [[ ! -f $unpacked/.unpacked ]]; then
      command -v dpkg >/dev/null || skip "no dpkg to unpack the trixie packages"
      debs=$(fetch_trixie_debs) || skip "cannot fetch libtorch-dev/libtorch-cuda-dev from trixie, and no local copies"
      rm -rf "$unpacked"; mkdir -p "$unpacked"
      for f in "$debs"/libtorch-dev_*.deb "$debs"/libtorch-cuda-dev_*.deb; do
        echo "unpacking $(basename "$f")"
        dpkg -x "$f" "$unpacked"
      done
      touch "$unpacked/.unpacked"
    fi
    [[ -f $unpacked/usr/include/c10/cuda/impl/cuda_cmake_macros.h ]] ||
      { echo "error: $unpacked holds no CUDA LibTorch headers" >&2; exit 1; }
    # Before the system dirs, so Debian 12's own 1.13 headers are never mixed in.
    includes+=(-isystem "$unpacked/usr/include" -isystem "$unpacked/usr/include/torch/csrc/api/include")
    label="LibTorch $(awk '/^#define TORCH_VERSION_(MAJOR|MINOR|PATCH) /{v = v sep $3; sep = "."} END{print v}' \
      "$unpacked/usr/include/torch/csrc/api/include/torch/version.h") (Debian trixie)"
    ;;
esac

# shellcheck disable=SC2206  # torch_flags is a list of flags
cmd=("$cxx" "$std" -fsyntax-only -Wall -Wextra $werror -DACTCKPT_WITH_CUDA=1 $torch_flags
  -I"$root/include" "${includes[@]}" -isystem "$cuda_include" "${cufile_flags[@]}" "$source")
echo "checking the CUDA path of actckpt against $label, $cufile_label"
echo "+ ${cmd[*]}"
start=$SECONDS
if "${cmd[@]}"; then
  echo "CUDA path compiles against $label ($((SECONDS - start)) s)"
else
  echo "CUDA path FAILS to compile against $label" >&2
  exit 1
fi
