// Compile check (never run) of the NCCL path of actckpt/distributed/distributed.hpp: init_process_group on
// CUDA (ProcessGroupNCCL, the device set to LOCAL_RANK) and DistributedDataParallel over it,
// together with the whole CUDA path of cuda_path.cpp (one parse of LibTorch's headers checks
// both). See tests/cuda_check/CMakeLists.txt and scripts/cuda-compile-check.sh.

// A CUDA LibTorch's CMake targets define these (USE_C10D_NCCL comes with torch_cuda); a CPU-only
// LibTorch's headers are checked here as if they did.
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO 1
#endif
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL 1
#endif

#include <actckpt/wrap/checkpointed.hpp>
#include <actckpt/distributed/distributed.hpp>
#include <actckpt/policy/no_offload.hpp>

#include <torch/nn/modules/linear.h>

#include "cuda_path.cpp"

#if !ACTCKPT_WITH_NCCL
#error "ACTCKPT_WITH_NCCL is off: the NCCL path of distributed.hpp was not compiled"
#endif

double nccl_path() {
  auto world = actckpt::init_process_group(actckpt::ProcessGroupOptions().device_type(c10::kCUDA));
  actckpt::Checkpointed<torch::nn::Linear, actckpt::NoOffload> layer(8, 8);
  layer->to(world.device);
  actckpt::DistributedDataParallel<decltype(layer)> ddp(layer, world);
  {
    auto local_only = ddp.no_sync();
    ddp(at::ones({2, 8}, world.device)).sum().backward();
  }
  ddp(at::ones({2, 8}, world.device)).sum().backward();
  return ddp.comm_stats().hidden_fraction();
}
