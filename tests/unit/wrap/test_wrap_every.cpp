// actckpt::wrap_every: which layers get wrapped, names kept, gradients unchanged, mixed
// Sequentials, multi-argument layers called through the Sequential, and bad arguments.

#include <actckpt/actckpt.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include "test_device.hpp"

#include <string>
#include <vector>

namespace {

struct WrapBlockImpl : torch::nn::Module {
  explicit WrapBlockImpl(int64_t dim) : fc(register_module("fc", torch::nn::Linear(dim, dim))) { to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) { return x + torch::tanh(fc(x)); }
  torch::nn::Linear fc;
};
TORCH_MODULE(WrapBlock);

/// Two tensor inputs and a non-tensor flag, as in examples/custom_block.
struct MaskedResidualBlockImpl : torch::nn::Module {
  explicit MaskedResidualBlockImpl(int64_t dim) : fc(register_module("fc", torch::nn::Linear(dim, dim))) { to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x, torch::Tensor mask, bool residual) {
    auto y = torch::gelu(fc(x)) * mask;
    return residual ? x + y : y;
  }
  torch::nn::Linear fc;
};
TORCH_MODULE(MaskedResidualBlock);

template <class Policy, class Layer>
bool is_wrapped(const torch::nn::Sequential& stack, std::size_t i) {
  return std::dynamic_pointer_cast<actckpt::CheckpointedImpl<Layer, Policy>>(stack->ptr(i)) != nullptr;
}

std::vector<WrapBlock> make_blocks(int n) {
  torch::manual_seed(7);
  std::vector<WrapBlock> blocks;
  for (int i = 0; i < n; ++i) blocks.emplace_back(8);
  return blocks;
}

}  // namespace

TEST_CASE("wrap_every wraps layers first, first+k, ... and keeps names and gradients") {
  using Policy = actckpt::SyncOffload;
  auto blocks = make_blocks(5);
  torch::nn::Sequential plain;
  for (auto& b : blocks) plain->push_back(b);
  auto stack = actckpt::wrap_every<Policy>(blocks, 2);

  REQUIRE(stack->size() == 5);
  for (std::size_t i = 0; i < 5; ++i) {
    CHECK(is_wrapped<Policy, WrapBlock>(stack, i) == (i % 2 == 0));
  }
  auto shifted = actckpt::wrap_every<Policy>(blocks, 3, 1);
  for (std::size_t i = 0; i < 5; ++i) CHECK(is_wrapped<Policy, WrapBlock>(shifted, i) == (i == 1 || i == 4));
  CHECK(stack->named_parameters().keys() == plain->named_parameters().keys());

  const auto x = torch::randn({4, 8}, test_device::options());
  auto run = [&](torch::nn::Sequential& model) {
    for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
    model->forward(x).pow(2).sum().backward();
    std::vector<torch::Tensor> grads;
    for (auto& p : model->parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const auto expected = run(plain);
  const auto got = run(stack);
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) CHECK(test_models::bitwise_equal(got[i], expected[i]));
}

TEST_CASE("wrap_every on a mixed Sequential wraps only the given layer type, keeping custom names") {
  using Policy = actckpt::NoOffload;
  torch::manual_seed(3);
  torch::nn::Sequential model{{"embed", torch::nn::Linear(4, 8)},
                              {"a", WrapBlock(8)},
                              {"act", torch::nn::Tanh()},
                              {"b", WrapBlock(8)},
                              {"c", WrapBlock(8)},
                              {"head", torch::nn::Linear(8, 2)}};
  model->to(test_device::device());
  auto stack = actckpt::wrap_every<Policy, WrapBlock>(model, 2);
  CHECK(stack->named_children().keys() == model->named_children().keys());
  CHECK(stack->named_parameters().keys() == model->named_parameters().keys());
  const std::vector<bool> wrapped{false, true, false, false, true, false};  // blocks a and c
  for (std::size_t i = 0; i < wrapped.size(); ++i) CHECK(is_wrapped<Policy, WrapBlock>(stack, i) == wrapped[i]);
  CHECK(stack->ptr(0) == model->ptr(0));  // plain layers are shared, not copied
}

TEST_CASE("wrap_every stacks of multi-argument layers are called layer by layer") {
  using Policy = actckpt::AsyncOffload;
  torch::manual_seed(5);
  std::vector<MaskedResidualBlock> blocks{MaskedResidualBlock(8), MaskedResidualBlock(8), MaskedResidualBlock(8)};
  auto stack = actckpt::wrap_every<Policy>(blocks, 2);
  const auto x = torch::randn({4, 8}, test_device::options());
  const auto mask = (torch::rand({4, 8}, test_device::options()) > 0.3).to(torch::kFloat);

  auto run = [&](auto&& call_layer) {
    for (auto& b : blocks)
      for (auto& p : b->parameters()) p.mutable_grad() = torch::Tensor();
    auto h = x;
    for (std::size_t i = 0; i < blocks.size(); ++i) h = call_layer(i, h);
    h.sum().backward();
    std::vector<torch::Tensor> grads;
    for (auto& b : blocks)
      for (auto& p : b->parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const auto expected = run([&](std::size_t i, torch::Tensor h) { return blocks[i](h, mask, true); });
  std::vector<torch::nn::AnyModule> layers(stack->begin(), stack->end());
  const auto got = run([&](std::size_t j, torch::Tensor h) { return layers[j].forward<torch::Tensor>(h, mask, true); });
  REQUIRE(got.size() == expected.size());
  for (std::size_t j = 0; j < got.size(); ++j) CHECK(test_models::bitwise_equal(got[j], expected[j]));
}

TEST_CASE("wrap_every rejects k = 0 and empty holders with a clear message") {
  auto blocks = make_blocks(2);
  CHECK_THROWS_WITH(actckpt::wrap_every<actckpt::NoOffload>(blocks, 0), doctest::Contains("k must be at least 1"));
  blocks.push_back(WrapBlock(nullptr));
  CHECK_THROWS_WITH(actckpt::wrap_every<actckpt::NoOffload>(blocks, 1), doctest::Contains("layer 2 is an empty holder"));
}

TEST_CASE_TEMPLATE("wrap_every over Sequential blocks, k = 1, 2, 3: names kept, gradients bitwise", Policy,
                   actckpt::NoOffload, actckpt::SyncOffload, actckpt::AsyncOffload) {
  // torch::nn::Sequential cannot hold a Sequential (its forward is a template): the blocks left
  // unwrapped go in as actckpt::Plain, which runs them directly.
  torch::manual_seed(11);
  std::vector<torch::nn::Sequential> blocks;
  for (int i = 0; i < 4; ++i)
    blocks.push_back(test_device::on_device(
        torch::nn::Sequential(torch::nn::Linear(8, 8), torch::nn::Tanh(), torch::nn::Dropout(0.25), torch::nn::Linear(8, 8))));
  torch::nn::ModuleList reference;  // the unwrapped stack's names: "0.0.weight", "0.3.bias", ...
  for (auto& b : blocks) reference->push_back(b);
  const auto x = torch::randn({5, 8}, test_device::options().requires_grad(true));

  auto run = [&](auto&& forward) {
    for (auto& b : blocks)
      for (auto& p : b->parameters()) p.mutable_grad().reset();
    x.mutable_grad().reset();
    torch::manual_seed(3);  // the dropout masks
    auto y = forward(x);
    y.pow(2).sum().backward();
    std::vector<torch::Tensor> grads{y.detach(), x.grad().clone()};
    for (auto& b : blocks)
      for (auto& p : b->parameters()) grads.push_back(p.grad().clone());
    return grads;
  };
  const auto expected = run([&](torch::Tensor h) {
    for (auto& b : blocks) h = b->forward(h);
    return h;
  });

  for (std::size_t k : {1, 2, 3}) {
    CAPTURE(k);
    auto stack = actckpt::wrap_every<Policy>(blocks, k);
    REQUIRE(stack->size() == blocks.size());
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      CHECK(is_wrapped<Policy, torch::nn::Sequential>(stack, i) == (i % k == 0));
      if (i % k != 0) CHECK(std::dynamic_pointer_cast<actckpt::PlainImpl<torch::nn::Sequential>>(stack->ptr(i)) != nullptr);
    }
    CHECK(stack->named_parameters().keys() == reference->named_parameters().keys());
    const auto got = run([&](torch::Tensor h) { return stack->forward(h); });
    REQUIRE(got.size() == expected.size());
    for (std::size_t j = 0; j < got.size(); ++j) {
      CAPTURE(j);
      CHECK(test_models::bitwise_equal(got[j], expected[j]));
    }
    stack->eval();  // train/eval reaches the blocks through Plain and Checkpointed
    for (auto& b : blocks) CHECK_FALSE(b->is_training());
    stack->train();
    for (auto& b : blocks) CHECK(b->is_training());
  }
}
