#pragma once
/// \file config.hpp
/// Build-time configuration of actckpt: version, CUDA switch and LibTorch version gates.
///
/// Headers cannot tell whether LibTorch was built with CUDA (Debian's CPU package ships the
/// CUDA headers without their generated config), so CMake decides and defines
/// ACTCKPT_WITH_CUDA=1 on the actckpt::actckpt target when the `torch_cuda` target exists.

#include <torch/version.h>

#define ACTCKPT_VERSION_MAJOR 0
#define ACTCKPT_VERSION_MINOR 1
#define ACTCKPT_VERSION_PATCH 0

#ifndef ACTCKPT_WITH_CUDA
#define ACTCKPT_WITH_CUDA 0
#endif

/// True when LibTorch is at least MAJOR.MINOR (autocast and allocator APIs changed in 2.x).
#define ACTCKPT_TORCH_AT_LEAST(major, minor) \
  (TORCH_VERSION_MAJOR > (major) ||          \
   (TORCH_VERSION_MAJOR == (major) && TORCH_VERSION_MINOR >= (minor)))
