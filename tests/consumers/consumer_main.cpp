// What a user of an installed (or vendored) actckpt writes: only the public header and the
// documented API. Checks for real that each offload policy gives the unwrapped block's
// gradients bit for bit, with dropout on and an input that does not require grad.
#include <actckpt/actckpt.hpp>
// Code written against the flat include paths of earlier releases compiles unchanged: every
// old path is a deprecated forwarding header (include/compat/actckpt/), kept for one release.
// The layout test checks this list names each of them (distributed.hpp: distributed_consumer_main.cpp).
#include <actckpt/argument_storage.hpp>
#include <actckpt/async_offload.hpp>
#include <actckpt/autocast_state.hpp>
#include <actckpt/checkpoint_function.hpp>
#include <actckpt/checkpoint_record.hpp>
#include <actckpt/checkpointed.hpp>
#include <actckpt/checkpointed_layer.hpp>
#include <actckpt/config.hpp>
#include <actckpt/copy_engine.hpp>
#include <actckpt/errors.hpp>
#include <actckpt/functional.hpp>
#include <actckpt/host_buffer_pool.hpp>
#include <actckpt/label_layers.hpp>
#include <actckpt/layer_stand_in.hpp>
#include <actckpt/layer_traits.hpp>
#include <actckpt/memory_meter.hpp>
#include <actckpt/memory_timeline.hpp>
#include <actckpt/no_offload.hpp>
#include <actckpt/non_reentrant.hpp>
#include <actckpt/observer.hpp>
#include <actckpt/offload_context.hpp>
#include <actckpt/offload_saved.hpp>
#include <actckpt/offload_telemetry.hpp>
#include <actckpt/optimizer_state.hpp>
#include <actckpt/plain.hpp>
#include <actckpt/planner.hpp>
#include <actckpt/policy.hpp>
#include <actckpt/recompute_state.hpp>
#include <actckpt/rng_state.hpp>
#include <actckpt/saved_offload.hpp>
#include <actckpt/saved_tensor_hooks.hpp>
#include <actckpt/stash_options.hpp>
#include <actckpt/stash_stack.hpp>
#include <actckpt/sync_offload.hpp>
#include <actckpt/tensor_stash.hpp>
#include <actckpt/wrap_every.hpp>
#include <torch/torch.h>

#include <cstdio>
#include <string>
#include <vector>

struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t dim, int64_t hidden)
      : fc1(register_module("fc1", torch::nn::Linear(dim, hidden))),
        gelu(register_module("gelu", torch::nn::GELU())),
        dropout(register_module("dropout", torch::nn::Dropout(0.1))),
        fc2(register_module("fc2", torch::nn::Linear(hidden, dim))) {}

  torch::Tensor forward(torch::Tensor x) { return fc2(dropout(gelu(fc1(x)))); }

  torch::nn::Linear fc1;
  torch::nn::GELU gelu;
  torch::nn::Dropout dropout;
  torch::nn::Linear fc2;
};
TORCH_MODULE(Block);

namespace {

constexpr uint64_t kDropoutSeed = 1234;

struct Step {
  torch::Tensor output;
  std::vector<torch::Tensor> grads;  // one per parameter of the shared block, in order
};

// One training step from the same RNG state; gradients land on `block`'s parameters, which
// every wrapper shares.
template <class Model>
Step run_step(Model& model, Block& block, const torch::Tensor& x) {
  for (auto& p : block->parameters()) p.mutable_grad() = torch::Tensor();
  torch::manual_seed(kDropoutSeed);
  Step step;
  step.output = model(x);
  step.output.pow(2).sum().backward();
  for (auto& p : block->parameters()) {
    step.grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
  }
  return step;
}

int failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    std::printf("MISMATCH: %s\n", what.c_str());
    ++failures;
  }
}

template <class Policy>
void check_policy(const char* policy, Block& block, const torch::Tensor& x, const Step& reference) {
  actckpt::Checkpointed<Block, Policy> wrapped(block);
  expect(wrapped->layer().ptr() == block.ptr(),
         std::string(policy) + ": layer() is not the block it was built from");
  const Step step = run_step(wrapped, block, x);
  expect(torch::equal(step.output, reference.output), std::string(policy) + ": forward output");
  const auto names = block->named_parameters().keys();
  for (size_t i = 0; i < reference.grads.size(); ++i) {
    const std::string what = std::string(policy) + ": gradient of " + names[i];
    if (!step.grads[i].defined()) {
      expect(false, what + " is missing");
    } else {
      expect(torch::equal(step.grads[i], reference.grads[i]), what);
    }
  }
}

}  // namespace

int main() {
  torch::manual_seed(0);
  Block block(16, 64);
  block->train();
  const torch::Tensor x = torch::randn({8, 16});  // raw data: requires no grad

  const Step reference = run_step(block, block, x);
  for (const auto& g : reference.grads) expect(g.defined(), "reference step left a parameter without gradient");
  // The comparison means something only if dropout really draws from the RNG.
  torch::manual_seed(kDropoutSeed + 1);
  expect(!torch::equal(block(x), reference.output), "dropout is not active in train mode");

  check_policy<actckpt::NoOffload>("NoOffload", block, x, reference);
  check_policy<actckpt::SyncOffload>("SyncOffload", block, x, reference);
  check_policy<actckpt::AsyncOffload>("AsyncOffload", block, x, reference);

  if (failures != 0) {
    std::printf("consumer FAILED: %d mismatches\n", failures);
    return 1;
  }
  std::printf("consumer OK\n");
  return 0;
}
