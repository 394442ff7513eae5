// MemoryMeter (measure/memory_meter.hpp): known allocations give known bytes, per thread, through
// autograd and the copy worker; host stash bytes from the pool.
// Cases needing CUDA carry [cuda] in their name and test_device::needs_cuda(): reported skipped where CUDA is absent.

#include "memory_fixtures.hpp"

#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>

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

TEST_CASE("MemoryMeter counts a known CPU allocation in current and peak bytes" * test_device::cpu_only("measures LibTorch's CPU allocator")) {
  MemoryMeter meter;
  CHECK(meter.device_bytes() == 0);
  CHECK(meter.device_peak_bytes() == 0);
  auto t = tensor_of_bytes(10 * MiB);
  CHECK(meter.device_bytes() == 10 * MiB);
  CHECK(meter.device_peak_bytes() == 10 * MiB);
  {
    auto u = tensor_of_bytes(4 * MiB);
    CHECK(meter.device_bytes() == 14 * MiB);
  }
  CHECK(meter.device_bytes() == 10 * MiB);
  CHECK(meter.device_peak_bytes() == 14 * MiB);
  t.reset();
  CHECK(meter.device_bytes() == 0);
  CHECK(meter.device_peak_bytes() == 14 * MiB);
  meter.reset_peak();
  CHECK(meter.device_peak_bytes() == 0);
  const auto r = meter.read();
  CHECK(r.device_bytes == 0);
  CHECK(r.host_stash_bytes == 0);
}

TEST_CASE("MemoryMeter ignores the release of memory allocated before it started" * test_device::cpu_only("measures LibTorch's CPU allocator")) {
  auto before = tensor_of_bytes(3 * MiB);
  MemoryMeter meter;
  auto t = tensor_of_bytes(1 * MiB);
  before.reset();  // not ours: must not drive the count below what this scope holds
  CHECK(meter.device_bytes() == 1 * MiB);
  CHECK(meter.device_peak_bytes() == 1 * MiB);
}

TEST_CASE("nested MemoryMeters both count, and the outer one keeps counting after the inner ends" * test_device::cpu_only("measures LibTorch's CPU allocator")) {
  MemoryMeter outer;
  auto a = tensor_of_bytes(2 * MiB);
  torch::Tensor b;
  {
    MemoryMeter inner;
    b = tensor_of_bytes(3 * MiB);
    CHECK(inner.device_bytes() == 3 * MiB);
    CHECK(outer.device_bytes() == 5 * MiB);
    CHECK(inner.counts_this_thread());
    CHECK(outer.counts_this_thread());
  }
  auto c = tensor_of_bytes(1 * MiB);
  CHECK(outer.device_bytes() == 6 * MiB);
  CHECK(outer.device_peak_bytes() == 6 * MiB);
}

TEST_CASE("two MemoryMeters in two threads each measure their own thread" * test_device::cpu_only("measures LibTorch's CPU allocator per thread")) {
  std::int64_t peaks[2] = {0, 0}, currents[2] = {0, 0};
  auto work = [&](int i, std::int64_t bytes) {
    MemoryMeter meter;
    for (int round = 0; round < 20; ++round) {
      auto t = tensor_of_bytes(bytes);
      auto u = t.clone();  // a second block of the same size, from an ATen kernel
      std::this_thread::yield();
    }
    auto keep = tensor_of_bytes(bytes / 2);
    peaks[i] = meter.device_peak_bytes();
    currents[i] = meter.device_bytes();
  };
  std::thread a(work, 0, 2 * MiB), b(work, 1, 6 * MiB);
  a.join();
  b.join();
  CHECK(peaks[0] == 4 * MiB);
  CHECK(currents[0] == 1 * MiB);
  CHECK(peaks[1] == 12 * MiB);
  CHECK(currents[1] == 3 * MiB);
}

TEST_CASE("MemoryMeter sees autograd's allocations in backward" * test_device::cpu_only("measures LibTorch's CPU allocator")) {
  MemoryMeter meter;
  auto w = torch::randn({512, 512}, test_device::options().requires_grad(true));
  const auto after_w = meter.device_bytes();
  CHECK(after_w == 512 * 512 * 4);
  auto loss = torch::matmul(torch::ones({256, 512}, test_device::options()), w).pow(2).sum();
  loss.backward();
  loss.reset();
  // w.grad stays: exactly one more weight-sized block than before.
  CHECK(meter.device_bytes() == after_w + 512 * 512 * 4);
  CHECK(meter.device_peak_bytes() > meter.device_bytes());
}

TEST_CASE_TEMPLATE("MemoryMeter reports offloaded stashes as host stash bytes of the pool, not device bytes" * test_device::cpu_only("the stashes' device is the CPU allocator the meter reads"), Policy,
                   actckpt::SyncOffload, actckpt::AsyncOffload) {
  CheckpointedChain<Policy> chain;
  CheckpointedChain<actckpt::NoOffload> classic;
  torch::manual_seed(0);
  const int64_t stash = 32 * 64 * 4;  // [32, 64] float inputs
  auto x = torch::randn({32, 64}, test_device::options());

  std::int64_t classic_after_forward = 0;
  {
    MemoryMeter meter(torch::kCPU, classic.iso.pool);
    auto y = classic.forward(x);
    classic_after_forward = meter.device_bytes();
    CHECK(meter.host_stash_peak_bytes() == 0);
    y.sum().backward();
  }

  MemoryMeter meter(torch::kCPU, chain.iso.pool);
  CHECK(&meter.pool() == chain.iso.pool.get());
  auto y = chain.forward(x);
  chain.drain();
  const auto pool_live = static_cast<std::int64_t>(chain.iso.pool->stats().live_bytes);
  CHECK(meter.host_stash_bytes() == pool_live);
  CHECK(meter.host_stash_peak_bytes() >= pool_live);
  // Sync: all three inputs went to the host; async keeps the newest on the device. Buffers
  // are rounded up to the pool's granularity.
  const int64_t moved = std::is_same_v<Policy, actckpt::SyncOffload> ? 3 : 2;
  CHECK(pool_live >= moved * stash);
  CHECK(pool_live < moved * (stash + static_cast<int64_t>(actckpt::HostBufferPool::granularity)));
  // The inputs of layers 1 and 2 live only in their stashes: the device holds that much less
  // than classic checkpointing (x, the input of layer 0, is held by the test either way). For
  // async, the input of layer 1 was released by the copy worker: its meter is this thread's.
  const int64_t freed = std::is_same_v<Policy, actckpt::SyncOffload> ? 2 : 1;
  CHECK(classic_after_forward - meter.device_bytes() == freed * stash);

  y.sum().backward();
  y.reset();
  chain.drain();
  CHECK(meter.host_stash_bytes() == 0);
}

TEST_CASE("MemoryMeter on CUDA reads the caching allocator [cuda]" * test_device::needs_cuda()) {
  test_device::require_cuda();
#if ACTCKPT_WITH_CUDA
  MemoryMeter meter(torch::Device(torch::kCUDA, 0));
  const auto start = meter.device_bytes();
  CHECK(meter.device_peak_bytes() == start);
  auto t = torch::empty({10 * MiB / 4}, torch::TensorOptions().device(torch::kCUDA));
  CHECK(meter.device_bytes() - start == 10 * MiB);
  t.reset();
  CHECK(meter.device_bytes() == start);
  CHECK(meter.device_peak_bytes() - start == 10 * MiB);

  MemoryTimeline timeline(meter, "cuda");
  auto u = torch::empty({MiB / 4}, torch::TensorOptions().device(torch::kCUDA));
  u.reset();
  timeline.stop();
  std::int64_t high = 0;
  for (const auto& s : timeline.samples()) high = std::max(high, s.device_bytes - start);
  CHECK(high == MiB);
#endif
}
