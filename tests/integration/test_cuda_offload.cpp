// Offload on CUDA end to end: gradients equal to the unwrapped model's with copies over side
// streams, and async offload under fp16 autocast.
// Cases needing CUDA carry [cuda] in their name and skip with a message where CUDA is absent.

#include "offload_fixtures.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <type_traits>

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::NoOffload;
using actckpt::SyncOffload;

TEST_CASE_TEMPLATE("[cuda] gradients on CUDA are equal to the unwrapped model's, with offload over side streams",
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  if (!cuda_or_skip()) return;
  torch::manual_seed(0);
  std::vector<actckpt::models::TransformerBlock> layers;
  for (int i = 0; i < 4; ++i) {
    layers.emplace_back(actckpt::models::TransformerBlockOptions(64, 16, 128).dropout(0.1));
    layers.back()->to(torch::kCUDA);
  }
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({2, 32, 64}, torch::kCUDA);
  torch::manual_seed(3);
  chain(layers, x).pow(2).mean().backward();
  std::vector<torch::Tensor> g_ref;
  for (auto& l : layers)
    for (auto& g : take_grads(*l)) g_ref.push_back(g);
  torch::manual_seed(3);
  chain(wrapped, x).pow(2).mean().backward();
  std::vector<torch::Tensor> g;
  for (auto& l : layers)
    for (auto& t : take_grads(*l)) g.push_back(t);
  REQUIRE(g.size() == g_ref.size());
  // fp32: the recompute runs the same kernels on the same inputs with the forward's RNG state
  // (dropout's Philox offset included), so the gradients are the same bits.
  double max_diff = 0;
  for (std::size_t i = 0; i < g.size(); ++i) max_diff = std::max(max_diff, (g[i] - g_ref[i]).abs().max().item<double>());
  MESSAGE("largest gradient difference on CUDA: " << max_diff);
  check_bitwise_equal(g, g_ref);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("[cuda] async offload under fp16 autocast matches the unwrapped model and frees device memory") {
  if (!cuda_or_skip()) return;
  torch::manual_seed(1);
  auto layers = mlp_stack(6, 256, 1024);
  for (auto& l : layers) l->to(torch::kCUDA);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  actckpt::AutocastState fp16;
  fp16.cuda_enabled = true;
  fp16.cuda_dtype = torch::kHalf;
  auto x = torch::randn({512, 256}, torch::kCUDA);
  torch::Tensor ref_loss, loss;
  {
    actckpt::AutocastReplayGuard on(fp16);
    ref_loss = chain(layers, x).to(torch::kFloat).pow(2).mean();
  }
  ref_loss.backward();
  std::vector<torch::Tensor> g_ref;
  for (auto& l : layers)
    for (auto& g : take_grads(*l)) g_ref.push_back(g);
  {
    actckpt::AutocastReplayGuard on(fp16);
    loss = chain(wrapped, x).to(torch::kFloat).pow(2).mean();
  }
  CHECK(iso.pool->stats().live_bytes > 0);  // stashes went to pinned host memory
  loss.backward();
  torch::cuda::synchronize();
  std::vector<torch::Tensor> g;
  for (auto& l : layers)
    for (auto& t : take_grads(*l)) g.push_back(t);
  for (std::size_t i = 0; i < g.size(); ++i) CHECK(torch::allclose(g[i], g_ref[i], 1e-3, 1e-4));
  CHECK(iso.pool->stats().live_bytes == 0);
}
