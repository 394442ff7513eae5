// Autocast state (replay/autocast_state.hpp), tested on their own: capture the thread's state,
// apply another and restore it, the replay guard's enter/exit (flags, dtype, nesting, cast cache)
// and AutocastCacheOff. The recompute runs under the forward's autocast state through these
// (docs/pitfalls.md#p2): a state not replayed recomputes in another precision.

#include <actckpt/replay/autocast_state.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include "test_device.hpp"

namespace {

/// Restores the thread's autocast state when a case ends, whatever the case did.
struct RestoreAutocast {
  actckpt::AutocastState saved = actckpt::AutocastState::current();
  ~RestoreAutocast() { saved.apply(); }
};

/// What a matmul of CPU tensors gives: on the CPU whatever the device switch says, since CPU
/// autocast is the state these cases set (CUDA autocast is replayed by the [cuda] fp16 case and
/// by the checkpointed cases under autocast on CUDA).
torch::ScalarType cpu_matmul_dtype() {
  auto a = torch::randn({4, 4}), b = torch::randn({4, 4});
  return torch::mm(a, b).scalar_type();
}

}  // namespace

TEST_CASE("autocast state: current() reads what apply() set, and applying the captured state restores it" * test_device::cpu_only("CPU autocast is the state under test")) {
  RestoreAutocast restore;
  const auto before = actckpt::AutocastState::current();
  CHECK_FALSE(before.cpu_enabled);  // the suite runs without autocast
  actckpt::AutocastState on = before;
  on.cpu_enabled = true;
  on.cpu_dtype = c10::kBFloat16;
  on.cache_enabled = false;
  on.apply();
  const auto now = actckpt::AutocastState::current();
  CHECK(now.cpu_enabled);
  CHECK(now.cpu_dtype == c10::kBFloat16);
  CHECK_FALSE(now.cache_enabled);
  CHECK(now.any_enabled());
  CHECK(cpu_matmul_dtype() == torch::kBFloat16);  // CPU autocast really is on
  before.apply();
  const auto back = actckpt::AutocastState::current();
  CHECK_FALSE(back.cpu_enabled);
  CHECK(back.cache_enabled == before.cache_enabled);
  CHECK(cpu_matmul_dtype() == torch::kFloat);
}

TEST_CASE("autocast state: the replay guard runs under the forward's state and gives the caller's back" * test_device::cpu_only("CPU autocast is the state under test")) {
  RestoreAutocast restore;
  actckpt::AutocastState forward;  // captured in a forward under CPU bf16 autocast
  forward.cpu_enabled = true;
  forward.cpu_dtype = c10::kBFloat16;
  REQUIRE_FALSE(actckpt::AutocastState::current().cpu_enabled);  // the caller's backward: off
  {
    actckpt::AutocastReplayGuard guard(forward);
    CHECK(actckpt::AutocastState::current().cpu_enabled);
    CHECK(cpu_matmul_dtype() == torch::kBFloat16);
  }
  CHECK_FALSE(actckpt::AutocastState::current().cpu_enabled);
  CHECK(cpu_matmul_dtype() == torch::kFloat);

  // The other way round: a forward without autocast, recomputed inside the caller's autocast region.
  actckpt::AutocastState plain;
  actckpt::AutocastState caller = plain;
  caller.cpu_enabled = true;
  caller.apply();
  {
    actckpt::AutocastReplayGuard guard(plain);
    CHECK_FALSE(actckpt::AutocastState::current().cpu_enabled);
    CHECK(cpu_matmul_dtype() == torch::kFloat);
  }
  CHECK(actckpt::AutocastState::current().cpu_enabled);
}

TEST_CASE("autocast state: AutocastCacheOff turns the cast cache off for its lifetime only" * test_device::no_tensors()) {
  RestoreAutocast restore;
  at::autocast::set_autocast_cache_enabled(true);
  {
    actckpt::AutocastCacheOff off;
    CHECK_FALSE(at::autocast::is_autocast_cache_enabled());
    {
      actckpt::AutocastCacheOff nested;
      CHECK_FALSE(at::autocast::is_autocast_cache_enabled());
    }
    CHECK_FALSE(at::autocast::is_autocast_cache_enabled());  // the outer one still holds
  }
  CHECK(at::autocast::is_autocast_cache_enabled());
}

TEST_CASE("autocast scope: bf16 autocast on the device's type inside, the caller's state after; nullopt changes "
          "nothing" * test_device::cpu_only("CPU autocast is the state under test")) {
  RestoreAutocast restore;
  const auto before = actckpt::AutocastState::current();
  {
    actckpt::AutocastScope scope(c10::Device(c10::kCPU), c10::kBFloat16);
    const auto inside = actckpt::AutocastState::current();
    CHECK(inside.cpu_enabled);
    CHECK(inside.cpu_dtype == c10::kBFloat16);
    CHECK_FALSE(inside.cuda_enabled);  // a CPU scope leaves CUDA's autocast alone
    CHECK(cpu_matmul_dtype() == torch::kBFloat16);
  }
  const auto after = actckpt::AutocastState::current();
  CHECK(after.cpu_enabled == before.cpu_enabled);
  CHECK(after.cpu_dtype == before.cpu_dtype);
  CHECK(cpu_matmul_dtype() == torch::kFloat);
  {
    actckpt::AutocastScope none(c10::Device(c10::kCPU), std::nullopt);  // float32: no autocast
    CHECK_FALSE(actckpt::AutocastState::current().cpu_enabled);
    CHECK(cpu_matmul_dtype() == torch::kFloat);
  }
}
