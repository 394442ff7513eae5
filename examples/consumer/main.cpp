// The smallest program using actckpt: an MLP whose blocks are checkpointed, their inputs
// offloaded to host memory in the background, trained for a few steps.
#include <actckpt/actckpt.hpp>
#include <torch/torch.h>

#include <cstdio>

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t dim)
      : fc1(register_module("fc1", torch::nn::Linear(dim, 4 * dim))),
        fc2(register_module("fc2", torch::nn::Linear(4 * dim, dim))) {}
  torch::Tensor forward(torch::Tensor x) { return x + fc2(torch::gelu(fc1(x))); }
  torch::nn::Linear fc1, fc2;
};
TORCH_MODULE(Block);

int main() {
  torch::manual_seed(0);
  torch::nn::Sequential model;
  for (int i = 0; i < 4; ++i) model->push_back(actckpt::Checkpointed<Block, actckpt::AsyncOffload>(64));
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));

  const auto x = torch::randn({32, 64});
  const auto target = torch::randn({32, 64});
  float first = 0, last = 0;
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model->forward(x), target);
    loss.backward();  // each block recomputes its activations here
    optimizer.step();
    last = loss.item<float>();
    if (step == 0) first = last;
  }
  std::printf("loss %.4f -> %.4f\n", first, last);
  std::printf(last < first ? "my_trainer OK\n" : "my_trainer: the loss did not fall\n");
  return last < first ? 0 : 1;
}
