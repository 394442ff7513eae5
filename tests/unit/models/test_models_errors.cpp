// The benchmark model (include/actckpt/models/) and the benchmark's configuration
// (benchmarks/stack_config.hpp) follow the library's error rules (base/errors.hpp): a mistake of
// the caller is an actckpt::UsageError whose message names the setting, not LibTorch's c10::Error.

#include <doctest/doctest.h>

#include <actckpt/base/errors.hpp>
#include <actckpt/models/transformer_stack.hpp>
#include <torch/torch.h>

#include "stack_config.hpp"  // benchmarks/
#include "test_device.hpp"

using actckpt::UsageError;
using namespace actckpt::models;

TEST_CASE("A StackConfig that cannot run is an actckpt::UsageError naming the setting" * test_device::no_tensors()) {
  bench::StackConfig c;
  REQUIRE_NOTHROW(c.validate());
  c.num_layers = 0;
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("num_layers must be at least 1"), UsageError);
  c = bench::StackConfig{};
  c.total_tokens = 4;  // below batch_size 8: no token per sequence
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("total_tokens (4) must be at least batch_size (8)"), UsageError);
  c = bench::StackConfig{};
  c.device = "tpu";  // c10::Device's own parser refuses it with a c10::Error: reported as ours
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("device must be cpu or cuda[:N], not 'tpu'"), UsageError);
  c = bench::StackConfig{};
  c.dtype = "int8";
  CHECK_THROWS_WITH_AS(c.autocast_dtype(), doctest::Contains("dtype must be float32, bf16 or fp16"), UsageError);
  // Not LibTorch's error: a `catch (const c10::Error&)` does not swallow it.
  try {
    c.validate();
    FAIL("validate accepted dtype int8");
  } catch (const c10::Error&) {
    FAIL("validate raised c10::Error, not actckpt::UsageError");
  } catch (const UsageError&) {
  }
}

TEST_CASE("The benchmark model's own checks raise actckpt::UsageError") {
  CHECK_THROWS_WITH_AS(TransformerStack(TransformerBlockOptions(32, 16, 64), 0, StackMode::ckpt_classic),
                       doctest::Contains("TransformerStack needs at least one layer, got 0"), UsageError);
  CHECK_THROWS_WITH_AS(TransformerBlock(TransformerBlockOptions(48, 10, 64)),
                       doctest::Contains("head_dim (10) must divide hidden_dim (48)"), UsageError);
  GptModel gpt(GptOptions(11, 16, TransformerBlockOptions(32, 16, 64), 1).mode(StackMode::baseline));
  gpt->to(test_device::device());
  CHECK(gpt(torch::zeros({1, 16}, test_device::options(torch::kLong))).sizes() == torch::IntArrayRef({1, 16, 11}));
  CHECK_THROWS_WITH_AS(gpt(torch::zeros({1, 17}, test_device::options(torch::kLong))),
                       doctest::Contains("sequence of 17 tokens exceeds max_seq_len 16"), UsageError);
}
