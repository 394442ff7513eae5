// The offload policies (SyncOffload, AsyncOffload, NoOffload): where a stash lives and when it
// moves: released from the device before the next layer, each stash on the host before the next
// layer starts (sync), stashes under the size threshold left on the device; classic
// checkpointing uses no host memory.

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

TEST_CASE_TEMPLATE("offloading policies release the device copy of an input before the next layer runs", Policy,
                   SyncOffload, AsyncOffload) {
  auto layers = mlp_stack(4);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  // Inputs of layers 1..3 are produced inside the chain; watch whether their memory survives.
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> inputs;
  auto h = torch::randn({16, 32}, test_device::options().requires_grad(true));
  for (auto& l : wrapped) {
    auto next = l(h);
    h = next;
    inputs.push_back(weak_storage(h));
  }
  // Async copies finish on the worker, and only then release their source.
  wait_until_idle(*iso.context, std::chrono::seconds(2));
  // Input of layer 1 and 2 (outputs of layers 0 and 1) are gone from the device: only the host
  // copies remain. (Async keeps the newest stash, layer 3's input, on the device.)
  CHECK(inputs[0].expired());
  CHECK(inputs[1].expired());
  CHECK(iso.pool->stats().live_bytes >= 2 * 16 * 32 * sizeof(float));
  h.sum().backward();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("classic checkpointing keeps inputs on the device and uses no host memory") {
  auto layers = mlp_stack(3);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<NoOffload>(layers, iso);
  auto h = torch::randn({16, 32}, test_device::options().requires_grad(true));
  h = wrapped[0](h);
  auto first_output = weak_storage(h);
  h = wrapped[1](h);
  h = wrapped[2](h);
  CHECK_FALSE(first_output.expired());  // layer 1's stash holds it
  CHECK(iso.pool->stats().peak_live_bytes == 0);
  h.sum().backward();
}

TEST_CASE("sync offload: each stash is on the host before the next layer starts") {
  auto layers = mlp_stack(3);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<SyncOffload>(layers, iso);
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  chain(wrapped, torch::randn({16, 32}, test_device::options())).sum().backward();
  for (int i = 0; i + 1 < 3; ++i) {
    CAPTURE(i);
    auto done = log->index_of(EventKind::offload_end, std::to_string(i));
    auto next = log->index_of(EventKind::forward_begin, std::to_string(i + 1));
    REQUIRE(done >= 0);
    CHECK(done < next);
  }
}

TEST_CASE("async offload leaves stashes under the size threshold on the device") {
  IsolatedOffload iso;
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  auto layers = mlp_stack(4, 8, 16);  // 4x8 floats = 128 bytes per input, under 1 KiB
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto y = chain(wrapped, torch::randn({4, 8}, test_device::options()));
  CHECK(iso.context->stack().size() == 0);
  CHECK(log->index_of(EventKind::offload_begin, "0") == -1);
  CHECK(iso.pool->stats().peak_live_bytes == 0);
  y.sum().backward();

  auto big = mlp_stack(3, 64, 64);
  auto wrapped_big = wrap_stack<actckpt::BasicAsyncOffload<1, (1 << 20)>>(big, iso);
  chain(wrapped_big, torch::randn({16, 64}, test_device::options())).sum().backward();  // 4 KiB < 1 MiB threshold
  CHECK(iso.pool->stats().peak_live_bytes == 0);
}
