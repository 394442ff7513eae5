// The benchmark model stack (models/transformer_stack.hpp): phases of the unwrapped stack,
// parameter names in every mode, StackConfig's checks, GptModel.

#include "memory_fixtures.hpp"

#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>
#include "stack_config.hpp"  // benchmarks/: the benchmark's StackConfig

#include <cctype>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

using actckpt::MemoryMeter;
using actckpt::MemoryTimeline;
using test_models::IsolatedOffload;
using test_models::MlpBlock;
using namespace memory_fixtures;

TEST_CASE("the unwrapped transformer stack announces fwd blocks.i / bwd blocks.i, so baseline timelines show phases") {
  using namespace actckpt::models;
  TransformerStack stack(TransformerBlockOptions(32, 16, 64), 3, StackMode::baseline);
  stack->to(test_device::device());
  auto x = torch::randn({2, 8, 32}, test_device::options());
  MemoryMeter meter;
  MemoryTimeline timeline(meter, "baseline", "zero_grad");
  auto loss = stack(x).pow(2).mean();
  timeline.mark("loss");
  loss.backward();
  timeline.stop();
  const auto seen = phases_of(timeline);
  const std::vector<std::string> expected = {"zero_grad",    "fwd blocks.0", "fwd",          "fwd blocks.1",
                                             "fwd",          "fwd blocks.2", "fwd",          "loss",
                                             "bwd blocks.2", "bwd blocks.1", "bwd blocks.0"};
  CHECK(seen == expected);
  // The checkpointed modes name their layers the same way.
  TransformerStack classic(TransformerBlockOptions(32, 16, 64), 3, StackMode::ckpt_classic);
  classic->to(test_device::device());
  auto* layer = dynamic_cast<actckpt::CheckpointedLayer*>(classic->named_modules()["blocks.1"].get());
  REQUIRE(layer != nullptr);
  CHECK(layer->label() == "blocks.1");
  CHECK_FALSE(layer->label_is_explicit());

  // Without an observer the stack adds no hooks (and therefore nothing to the graph).
  auto y = stack(x);
  CHECK(y.grad_fn()->pre_hooks().empty());
}

TEST_CASE("the transformer stack has the same parameter names in every mode and matches baseline gradients") {
  using namespace actckpt::models;
  const TransformerBlockOptions block(32, 16, 64);
  torch::manual_seed(1);
  TransformerStack base(block, 2, StackMode::baseline);
  auto x = torch::randn({2, 8, 32}, test_device::options());
  base(x).pow(2).mean().backward();
  for (auto mode : {StackMode::ckpt_classic, StackMode::ckpt_sync_offload, StackMode::ckpt_async_offload,
                    StackMode::offload_saved}) {
    CAPTURE(to_string(mode));
    TransformerStack other(block, 2, mode);
    CHECK(other->mode() == mode);
    auto a = base->named_parameters(), b = other->named_parameters();
    REQUIRE(a.size() == b.size());
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : a) b[p.key()].copy_(p.value());
    }
    other(x).pow(2).mean().backward();
    for (const auto& p : a) {
      CAPTURE(p.key());
      REQUIRE(b.contains(p.key()));
      CHECK(test_models::bitwise_equal(p.value().grad(), b[p.key()].grad()));
    }
  }
  CHECK(stack_mode_from_string("ckpt_async_offload") == StackMode::ckpt_async_offload);
  CHECK_FALSE(stack_mode_from_string("nope").has_value());
  CHECK(stack_mode_of<actckpt::SyncOffload>() == StackMode::ckpt_sync_offload);
  CHECK(stack_mode_from_string("offload_saved") == StackMode::offload_saved);
  CHECK(stack_mode_of<actckpt::OffloadSaved>() == StackMode::offload_saved);
  CHECK(form_name(StackMode::offload_saved) == "none");  // nothing is recomputed
}

TEST_CASE("StackConfig follows the seed's CLI and rejects what cannot run" * test_device::no_tensors()) {
  using bench::StackConfig;
  auto seed = StackConfig::seed();
  CHECK(seed.seq_len() == 250);
  CHECK(seed.num_heads() == 16);
  CHECK(seed.autocast_dtype() == c10::kHalf);
  StackConfig c;
  CHECK_NOTHROW(c.validate());
  c.head_dim = 48;  // does not divide 128
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("head_dim"), actckpt::UsageError);
  c = StackConfig{};
  c.dtype = "fp16";  // CPU autocast is bf16 only
  CHECK_THROWS_AS(c.validate(), actckpt::UsageError);
  c.dtype = "int8";
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("dtype"), actckpt::UsageError);
}

TEST_CASE("GptModel maps tokens to logits through the stack") {
  using namespace actckpt::models;
  GptModel gpt(GptOptions(11, 16, TransformerBlockOptions(32, 16, 64), 2).mode(StackMode::ckpt_classic));
  gpt->to(test_device::device());
  auto tokens = torch::randint(0, 11, {3, 16}, test_device::options(torch::kLong));
  auto logits = gpt(tokens);
  CHECK(logits.sizes() == torch::IntArrayRef({3, 16, 11}));
  torch::nn::functional::cross_entropy(logits.view({-1, 11}), tokens.view({-1})).backward();
  CHECK(gpt->tok_emb->weight.grad().defined());
  CHECK(gpt->named_parameters().contains("stack.blocks.1.attn.qkv.weight"));
  CHECK_THROWS_AS(gpt(torch::zeros({1, 17}, test_device::options(torch::kLong))), actckpt::UsageError);
}
