// Compile-only: instantiates every policy's forward and backward with ACTCKPT_WITH_CUDA=1, so
// the CUDA code path (streams, events, pinned buffers, CUDA RNG and autocast state) is parsed and
// type-checked against LibTorch's CUDA headers. Checked by scripts/cuda-compile-check.sh; it is
// never linked or run.
#include <actckpt/actckpt.hpp>
#include <torch/nn.h>

#if !ACTCKPT_WITH_CUDA
#error "cuda_path.cpp checks the CUDA path: compile it with -DACTCKPT_WITH_CUDA=1"
#endif

namespace {

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t dim)
      : fc1(register_module("fc1", torch::nn::Linear(dim, 4 * dim))),
        dropout(register_module("dropout", torch::nn::Dropout(0.1))),
        fc2(register_module("fc2", torch::nn::Linear(4 * dim, dim))) {}

  torch::Tensor forward(torch::Tensor x) { return fc2(dropout(torch::gelu(fc1(x)))); }

  torch::nn::Linear fc1;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Block);

template <class Policy>
torch::Tensor train_step(Block& block, const torch::Tensor& x) {
  actckpt::Checkpointed<Block, Policy> wrapped(block);
  wrapped->to(torch::kCUDA);
  auto y = wrapped(x.to(torch::kCUDA));
  y.sum().backward();
  return y;
}

}  // namespace

// Referenced from an exported function so every instantiation is kept.
torch::Tensor actckpt_cuda_path_check(Block& block, const torch::Tensor& x) {
  return train_step<actckpt::NoOffload>(block, x) + train_step<actckpt::SyncOffload>(block, x) +
         train_step<actckpt::AsyncOffload>(block, x);
}

// Every non-template member of the wrapper, for each policy (clone, pretty_print, train, ...).
template class actckpt::CheckpointedImpl<Block, actckpt::NoOffload>;
template class actckpt::CheckpointedImpl<Block, actckpt::SyncOffload>;
template class actckpt::CheckpointedImpl<Block, actckpt::AsyncOffload>;
