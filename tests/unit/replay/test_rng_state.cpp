// RNG snapshots (replay/rng_state.hpp), tested on their own: a snapshot replays the dropout mask
// drawn after it, the replay guard restores the caller's generator on exit, and a snapshot taken
// before anything was captured replays nothing. This is what makes a recompute draw the forward's
// masks (docs/pitfalls.md#p1); a broken snapshot gives a silently wrong gradient.

#include <actckpt/replay/rng_state.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include "test_device.hpp"

#include <vector>

namespace {

/// A dropout mask of 4096 elements drawn from the CPU generator (on the CPU whatever the device
/// switch says: the CPU generator is what these cases capture and replay; the CUDA generators
/// are replayed in the [cuda] cases and by every checkpointed case on CUDA).
torch::Tensor dropout_mask() {
  return torch::dropout(torch::ones({4096}), /*p=*/0.5, /*train=*/true).ne(0);
}

}  // namespace

TEST_CASE("rng state: apply() makes the CPU generator draw the captured dropout mask again" * test_device::cpu_only("the CPU generator is what is captured and replayed")) {
  torch::manual_seed(1234);
  const auto snapshot = actckpt::RngSnapshot::capture({});
  const auto first = dropout_mask();
  const auto second = dropout_mask();
  REQUIRE_FALSE(torch::equal(first, second));  // the generator moved on: the masks differ
  snapshot.apply();
  CHECK(torch::equal(dropout_mask(), first));
  CHECK(torch::equal(dropout_mask(), second));  // and it goes on as it did after the capture
  CHECK(snapshot.device_states().empty());      // CPU only: no device generator touched
}

TEST_CASE("rng state: the replay guard draws the forked masks inside, the caller's stream after" * test_device::cpu_only("the CPU generator is what is captured and replayed")) {
  torch::manual_seed(99);
  const auto forked = actckpt::RngSnapshot::capture({});
  const auto forward_mask = dropout_mask();
  // The caller's generator, reseeded: what it draws next is its own stream's, not the forward's.
  torch::manual_seed(7);
  const auto callers_next = dropout_mask();
  REQUIRE_FALSE(torch::equal(callers_next, forward_mask));
  torch::manual_seed(7);
  {
    actckpt::RngReplayGuard guard(forked, {});
    CHECK(torch::equal(dropout_mask(), forward_mask));  // the recompute's mask is the forward's
  }
  CHECK(torch::equal(dropout_mask(), callers_next));  // the caller's generator is as it was
}

TEST_CASE("rng state: capture ignores CPU entries in the device list, and an empty snapshot applies nothing" * test_device::cpu_only("the CPU generator is what is captured and replayed")) {
  const auto with_cpu = actckpt::RngSnapshot::capture({c10::Device(c10::kCPU), c10::Device(c10::kCPU)});
  CHECK(with_cpu.device_states().empty());
  torch::manual_seed(5);
  const auto expected = dropout_mask();
  torch::manual_seed(5);
  actckpt::RngSnapshot{}.apply();  // default-constructed: nothing captured, the generator untouched
  CHECK(torch::equal(dropout_mask(), expected));
}
