// The copy engine (offload/copy_engine.hpp): a copy source stays alive until its copy is done, a
// failed copy reaches backward as an error and returns its memory, a throwing completion callback
// fails its ticket; directly, copies run in the order submitted and a failure reaches its waiter.

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

#include <actckpt/offload/copy_engine.hpp>

TEST_CASE("async copy: the device source stays alive until its copy is done" * test_device::cpu_only("the CPU copy worker (its queue and fault injector) is under test; CUDA copies are events on side streams, [cuda] cases")) {
  IsolatedOffload iso;
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  iso.context->engine().set_fault_injector([&] {  // holds the worker before each copy
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return release; });
  });
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto h = wrapped[0](torch::randn({16, 32}, test_device::options()));
  auto first_output = weak_storage(h);
  h = wrapped[1](h);  // pushes layer 1's stash: layer 0's... (layer 0's input is the data)
  h = wrapped[2](h);  // layer 1's input (= first_output) starts its offload, held by the worker
  CHECK(iso.context->engine().pending() > 0);
  CHECK_FALSE(first_output.expired());  // the queued copy still reads it
  {
    std::lock_guard<std::mutex> lock(m);
    release = true;
  }
  cv.notify_all();
  wait_until_idle(*iso.context, std::chrono::seconds(2));
  CHECK(iso.context->engine().pending() == 0);
  CHECK(first_output.expired());  // copied: the device copy was released
  iso.context->engine().set_fault_injector(nullptr);
  h.sum().backward();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("async copy failure: backward reports it clearly, memory is returned, the next step trains" * test_device::cpu_only("the CPU copy worker (its queue and fault injector) is under test; CUDA copies are events on side streams, [cuda] cases")) {
  IsolatedOffload iso;
  iso.context->engine().set_fault_injector([] { throw std::runtime_error("injected copy failure"); });
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto x = torch::randn({16, 32}, test_device::options());
  {
    auto loss = chain(wrapped, x).sum();
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("injected copy failure"));
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  iso.context->engine().set_fault_injector(nullptr);
  chain(layers, x).sum().backward();
  auto g_ref = take_grads(*layers[0]);
  chain(wrapped, x).sum().backward();
  check_bitwise_equal(take_grads(*layers[0]), g_ref);
}

TEST_CASE("copy engine: a completion callback that throws fails its ticket with a message naming it") {
  actckpt::CopyEngine engine;
  auto src = torch::arange(64, test_device::options(torch::kFloat));
  auto dst = torch::empty({64}, test_device::options());
  auto ticket = engine.copy(dst, src, {}, [] { throw std::runtime_error("callback boom"); });
  std::string message = "<no error>";
  try {
    ticket->synchronize();
  } catch (const std::exception& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("completion callback") != std::string::npos);
  CHECK(message.find("callback boom") != std::string::npos);
  // The worker survived and keeps copying.
  auto dst2 = torch::empty({64}, test_device::options());
  engine.copy(dst2, src)->synchronize();
  CHECK(bitwise_equal(dst2, src));
  CHECK(engine.pending() == 0);
}

// ---------------------------------------------------------------------------------------------
// The engine on its own (CPU worker): order, failures, shutdown.

TEST_CASE("copy engine: copies run in the order submitted; a later copy reads what an earlier one wrote" * test_device::cpu_only("the CPU copy worker (its queue and fault injector) is under test; CUDA copies are events on side streams, [cuda] cases")) {
  actckpt::CopyEngine engine;
  // The first copy is held back on the worker, so every later one is queued behind it: a worker
  // that did not keep submission order would run the second copy on the stale buffer.
  std::atomic<bool> release{false};
  std::atomic<int> calls{0};
  engine.set_fault_injector([&] {
    if (calls++ == 0)
      while (!release) std::this_thread::yield();
  });
  const auto src = torch::arange(1024, test_device::options(torch::kFloat));
  auto buffer = torch::zeros({1024}, test_device::options());
  auto dst = torch::full({1024}, -1.0f, test_device::options());
  std::mutex order_mutex;
  std::vector<int> order;
  auto note = [&](int i) {
    return [&, i] {
      std::lock_guard<std::mutex> lock(order_mutex);
      order.push_back(i);
    };
  };
  auto first = engine.copy(buffer, src, {}, note(0));         // src -> buffer (an offload)
  auto second = engine.copy(dst, buffer, {}, note(1));        // buffer -> dst (its prefetch)
  std::vector<std::shared_ptr<actckpt::CopyTicket>> more;
  std::vector<torch::Tensor> outs;
  for (int i = 2; i < 8; ++i) {
    outs.push_back(torch::zeros({16}, test_device::options()));
    more.push_back(engine.copy(outs.back(), torch::full({16}, float(i), test_device::options()), {}, note(i)));
  }
  CHECK_FALSE(second->done());
  CHECK(engine.pending() >= 7);
  release = true;
  for (auto& t : more) t->synchronize();
  second->synchronize();
  CHECK(first->done());
  CHECK(bitwise_equal(dst, src));
  for (int i = 2; i < 8; ++i) CHECK(bitwise_equal(outs[i - 2], torch::full({16}, float(i), test_device::options())));
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(engine.pending() == 0);
  CHECK(calls == 8);
}

TEST_CASE("copy engine: a failed copy reaches its waiter only; its callback does not run; later copies run" * test_device::cpu_only("the CPU copy worker (its queue and fault injector) is under test; CUDA copies are events on side streams, [cuda] cases")) {
  actckpt::CopyEngine engine;
  std::atomic<int> calls{0};
  engine.set_fault_injector([&] {
    if (++calls == 2) throw std::runtime_error("injected copy failure #2");
  });
  std::atomic<int> callbacks{0};
  auto a = torch::zeros({8}, test_device::options()), b = torch::zeros({8}, test_device::options()), c = torch::zeros({8}, test_device::options());
  auto ta = engine.copy(a, torch::ones({8}, test_device::options()), {}, [&] { ++callbacks; });
  auto tb = engine.copy(b, torch::ones({8}, test_device::options()), {}, [&] { ++callbacks; });
  auto tc = engine.copy(c, torch::ones({8}, test_device::options()), {}, [&] { ++callbacks; });
  CHECK_NOTHROW(ta->synchronize());
  CHECK_THROWS_WITH(tb->synchronize(), doctest::Contains("injected copy failure #2"));
  CHECK(tb->done());
  // Known failed: rethrown without waiting, as often as asked.
  CHECK_THROWS_WITH(tb->rethrow_error(), doctest::Contains("injected copy failure #2"));
  CHECK_THROWS_WITH(tb->make_compute_wait(), doctest::Contains("injected copy failure #2"));
  CHECK_NOTHROW(tc->synchronize());
  CHECK_NOTHROW(ta->rethrow_error());
  CHECK(bitwise_equal(a, torch::ones({8}, test_device::options())));
  CHECK(bitwise_equal(b, torch::zeros({8}, test_device::options())));  // the failed copy never wrote
  CHECK(bitwise_equal(c, torch::ones({8}, test_device::options())));
  CHECK(callbacks == 2);
  CHECK(engine.pending() == 0);
}

TEST_CASE("copy engine: destroying the engine finishes every queued copy; no ticket is left waiting" * test_device::cpu_only("the CPU copy worker (its queue and fault injector) is under test; CUDA copies are events on side streams, [cuda] cases")) {
  std::vector<std::shared_ptr<actckpt::CopyTicket>> tickets;
  std::vector<torch::Tensor> outs;
  {
    actckpt::CopyEngine engine;
    engine.set_fault_injector([] { std::this_thread::sleep_for(std::chrono::milliseconds(2)); });
    for (int i = 0; i < 10; ++i) {
      outs.push_back(torch::zeros({64}, test_device::options()));
      tickets.push_back(engine.copy(outs.back(), torch::full({64}, float(i + 1), test_device::options())));
    }
  }
  for (int i = 0; i < 10; ++i) {
    CHECK(tickets[i]->done());
    CHECK_NOTHROW(tickets[i]->rethrow_error());
    CHECK(bitwise_equal(outs[i], torch::full({64}, float(i + 1), test_device::options())));
  }
}

TEST_CASE("copy engine: each copy's bytes are in the telemetry with its direction and label") {
  actckpt::CopyEngine engine;
  engine.telemetry().reset();
  actckpt::CopyOptions to_host;
  to_host.direction = actckpt::CopyDirection::device_to_host;
  to_host.label = "engine-test";
  actckpt::CopyOptions to_device = to_host;
  to_device.direction = actckpt::CopyDirection::host_to_device;
  auto host = torch::zeros({256}, test_device::options());
  engine.copy(host, torch::ones({256}, test_device::options()), {}, {}, to_host)->synchronize();
  auto back = torch::zeros({256}, test_device::options());
  engine.copy(back, host, {}, {}, to_device)->synchronize();
  const auto t = engine.telemetry().take();
  CHECK(t.d2h_bytes == 256 * 4);
  CHECK(t.h2d_bytes == 256 * 4);
  CHECK(t.d2h_copies == 1);
  CHECK(t.h2d_copies == 1);
  REQUIRE(t.spans.size() == 2);
  CHECK(t.spans[0].direction == actckpt::CopyDirection::device_to_host);
  CHECK(t.spans[1].direction == actckpt::CopyDirection::host_to_device);
  for (const auto& span : t.spans) {
    CHECK(span.label == "engine-test");
    CHECK(span.bytes == 256 * 4);
    CHECK(span.begin <= span.end);
  }
  CHECK(bitwise_equal(back, torch::ones({256}, test_device::options())));
}

