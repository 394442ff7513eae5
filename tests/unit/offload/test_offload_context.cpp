// The offload context (offload/offload_context.hpp): no stash memory survives an exception in a
// layer or a graph dropped without backward, and each thread has its own default context.

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

TEST_CASE_TEMPLATE("an exception inside a layer in forward or in backward leaves no stash memory", Policy,
                   NoOffload, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  std::vector<FaultyBlock> layers;
  for (int i = 0; i < 4; ++i) layers.emplace_back(32);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({16, 32}, test_device::options());
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> outputs;

  SUBCASE("in forward") {
    layers[2]->fail_every_forward = true;
    auto run = [&] {
      auto h = x;
      for (auto& l : wrapped) {
        h = l(h);
        outputs.push_back(weak_storage(h));
      }
    };
    CHECK_THROWS_WITH(run(), doctest::Contains("injected forward failure"));
    layers[2]->fail_every_forward = false;
  }
  SUBCASE("in the recompute during backward") {
    layers[1]->fail_recompute = true;
    auto h = x;
    for (auto& l : wrapped) {
      h = l(h);
      outputs.push_back(weak_storage(h));
    }
    auto loss = h.sum();
    h = torch::Tensor();
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("injected recompute failure"));
    loss = torch::Tensor();  // the graph goes with the loss
    layers[1]->fail_recompute = false;
  }
  for (auto& o : outputs) CHECK(o.expired());  // no stash keeps a device tensor alive
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  CHECK(iso.context->engine().pending() == 0);
  // The next step trains, and correctly.
  for (auto& l : layers) l->zero_grad();
  chain(layers, x).sum().backward();
  auto g_ref = take_grads(*layers[0]);
  chain(wrapped, x).sum().backward();
  check_bitwise_equal(take_grads(*layers[0]), g_ref);
}

TEST_CASE_TEMPLATE("a graph dropped without backward returns every stash", Policy, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(5);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  {
    auto y = chain(wrapped, torch::randn({16, 32}, test_device::options()));
    CHECK(iso.pool->stats().live_bytes > 0);
  }
  CHECK(iso.context->stack().size() == 0);
  // CPU copies may still be finishing on the worker: they hold the buffers until done.
  for (int i = 0; i < 200 && iso.pool->stats().live_bytes != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("stashes of two contexts never mix: each thread has its own default context") {
  auto main_context = actckpt::OffloadContext::current();
  std::shared_ptr<actckpt::OffloadContext> other;
  std::thread([&] { other = actckpt::OffloadContext::current(); }).join();
  CHECK(main_context != other);
  CHECK(main_context == actckpt::OffloadContext::current());
  IsolatedOffload iso;
  {
    actckpt::OffloadContextScope scope(iso.context);
    CHECK(actckpt::OffloadContext::current() == iso.context);
    auto layers = mlp_stack(3);
    std::vector<Checkpointed<MlpBlock, AsyncOffload>> wrapped;
    for (auto& l : layers) wrapped.emplace_back(l);  // no explicit context: the scope's is used
    auto y = chain(wrapped, torch::randn({16, 32}, test_device::options()));
    CHECK(iso.context->stack().size() == 3);
    CHECK(main_context->stack().size() == 0);
    y.sum().backward();
  }
  CHECK(actckpt::OffloadContext::current() == main_context);
}
