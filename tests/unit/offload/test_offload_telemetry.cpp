// Offload telemetry (offload/offload_telemetry.hpp): bytes, copies, copy time and spans of a step,
// nothing moved by classic checkpointing, a slow copy path counted as a stall; on CUDA, telemetry
// and the memory meter together.
// Cases needing CUDA carry [cuda] in their name and test_device::needs_cuda(): reported skipped where CUDA is absent.

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

TEST_CASE_TEMPLATE("[cuda] offload telemetry and the memory meter on CUDA" * test_device::needs_cuda(), Policy, SyncOffload, AsyncOffload) {
  test_device::require_cuda();
  torch::manual_seed(0);
  auto layers = mlp_stack(6, 256, 1024);
  for (auto& l : layers) l->to(torch::kCUDA);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({512, 256}, torch::kCUDA);
  chain(wrapped, x).pow(2).mean().backward();  // warm-up: pinned buffers, streams
  torch::cuda::synchronize();
  actckpt::MemoryMeter meter(torch::Device(torch::kCUDA, 0), iso.pool);
  iso.context->reset_telemetry();
  chain(wrapped, x).pow(2).mean().backward();
  torch::cuda::synchronize();
  const auto t = iso.context->take_telemetry();
  const std::int64_t stash = 512 * 256 * 4;
  const std::uint64_t moved = std::is_same_v<Policy, SyncOffload> ? 6 : 5;  // async keeps the newest
  CHECK(t.pending_copies == 0);
  CHECK(t.d2h_copies == moved);
  CHECK(t.h2d_copies == moved);
  CHECK(t.d2h_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.h2d_bytes == t.d2h_bytes);
  CHECK(t.d2h_ms > 0);
  CHECK(t.h2d_ms > 0);
  CHECK(t.overlap() >= 0);
  CHECK(t.overlap() <= 1);
  CHECK(t.spans.size() == 2 * moved);
  MESSAGE(Policy::name << ": copy " << t.copy_ms() << " ms, stall " << t.stall_ms << " ms, overlap "
                       << 100 * t.overlap() << "%, D2H " << t.d2h_gbps() << " GB/s, H2D " << t.h2d_gbps() << " GB/s");
  // Active bytes include sources whose copies were in flight; allocated bytes do not.
  const auto r = meter.read();
  CHECK(r.device_peak_bytes >= r.device_allocated_peak_bytes);
  CHECK(r.device_peak_bytes > 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

namespace {

/// One training step of `wrapped` on x, with the context's telemetry reset before it and taken
/// after it.
template <class W>
actckpt::OffloadTelemetry telemetry_of_step(std::vector<W>& wrapped, IsolatedOffload& iso, const torch::Tensor& x) {
  iso.context->reset_telemetry();
  chain(wrapped, x).sum().backward();
  REQUIRE(wait_until_idle(*iso.context));
  return iso.context->take_telemetry();
}

}  // namespace

TEST_CASE_TEMPLATE("offload telemetry: bytes, copies, copy time and spans of one step, each way", Policy, SyncOffload,
                   AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  const auto x = torch::randn({16, 32}, test_device::options());
  const std::int64_t stash = 16 * 32 * 4;
  // Sync moves every layer's input; async keeps the newest one (layer 3's) on the device.
  const std::uint64_t moved = std::is_same_v<Policy, SyncOffload> ? 4 : 3;
  telemetry_of_step(wrapped, iso, x);  // warm-up: pool buffers exist
  const auto t = telemetry_of_step(wrapped, iso, x);
  CHECK(t.d2h_copies == moved);
  CHECK(t.h2d_copies == moved);
  CHECK(t.copies() == 2 * moved);
  CHECK(t.d2h_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.h2d_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.d2h_ms > 0);
  CHECK(t.h2d_ms > 0);
  CHECK(t.d2h_gbps() > 0);
  CHECK(t.h2d_gbps() > 0);
  CHECK(t.stall_ms >= 0);
  CHECK(t.overlap() >= 0);
  CHECK(t.overlap() <= 1);
  CHECK(t.overlap() == doctest::Approx(std::clamp(1.0 - t.stall_ms / t.copy_ms(), 0.0, 1.0)));
  CHECK(t.pending_copies == 0);
  REQUIRE(t.spans.size() == 2 * moved);
  std::uint64_t d2h_spans = 0;
  for (const auto& s : t.spans) {
    CHECK(s.end >= s.begin);
    CHECK(s.bytes == stash);
    CHECK((s.label == "0" || s.label == "1" || s.label == "2" || s.label == "3"));
    if (s.direction == actckpt::CopyDirection::device_to_host) ++d2h_spans;
  }
  CHECK(d2h_spans == moved);
  // Taken: the next read starts from zero.
  const auto after = iso.context->telemetry();
  CHECK(after.copies() == 0);
  CHECK(after.stall_ms == 0);
  CHECK(after.spans.empty());
}

TEST_CASE("offload telemetry: classic checkpointing moves nothing and reports full overlap") {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<NoOffload>(layers, iso);
  const auto t = telemetry_of_step(wrapped, iso, torch::randn({16, 32}, test_device::options()));
  CHECK(t.copies() == 0);
  CHECK(t.d2h_bytes + t.h2d_bytes == 0);
  CHECK(t.stall_ms == 0);
  CHECK(t.overlap() == 1.0);
}

TEST_CASE_TEMPLATE("offload telemetry: a slow copy path is a stall, not hidden behind compute" *
                       test_device::cpu_only("the CPU copy worker's fault injector makes the copies slow; CUDA copies do not pass through it"),
                   Policy, SyncOffload,
                   AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  const auto x = torch::randn({16, 32}, test_device::options());
  telemetry_of_step(wrapped, iso, x);
  // Every copy now waits 20 ms on the worker before it starts: whoever needs it waits too.
  iso.context->engine().set_fault_injector([] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); });
  const auto t = telemetry_of_step(wrapped, iso, x);
  iso.context->engine().set_fault_injector(nullptr);
  CAPTURE(t.stall_ms);
  CAPTURE(t.copy_ms());
  CHECK(t.stalls >= 1);
  // Sync waits for each of its 3 offloads and 3 restores; async at least for its first restore.
  CHECK(t.stall_ms >= (std::is_same_v<Policy, SyncOffload> ? 6 * 20.0 : 20.0) * 0.9);
  CHECK(t.stall_ms > t.copy_ms());  // the copies themselves are microseconds
  CHECK(t.overlap() == 0.0);
}
