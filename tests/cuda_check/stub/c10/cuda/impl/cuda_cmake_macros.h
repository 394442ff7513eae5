#pragma once
// Stand-in for the header PyTorch generates from c10/cuda/impl/cuda_cmake_macros.h.in in a CUDA
// build (a shared-library build defines exactly this). Debian's CPU LibTorch ships the c10/cuda
// headers without it; the CUDA compile check adds this directory with -idirafter, so a real
// generated header always wins.
#define C10_CUDA_BUILD_SHARED_LIBS
