// Observers (base/observer.hpp): a throwing observer changes nothing and is counted; directly,
// install/remove, every installed observer gets each event, and one that throws does not stop the
// others.

#include "offload_fixtures.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <type_traits>

#include <actckpt/base/observer.hpp>

#include <mutex>
#include <set>
#include <string_view>

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::NoOffload;
using actckpt::SyncOffload;

namespace {
struct ThrowingObserver : actckpt::Observer {
  std::atomic<int> calls{0};
  void on_event(const actckpt::Event& e) override {
    ++calls;
    throw std::runtime_error("observer boom at " + std::string(actckpt::to_string(e.kind)));
  }
};
}  // namespace

TEST_CASE_TEMPLATE("an observer that throws from every event changes nothing: same gradients, failures counted",
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  // Events come from destructors and (AsyncOffload on CPU) the copy worker: an exception there
  // would end the process. They are caught and counted instead.
  auto layers = mlp_stack(4);
  auto x = torch::randn({16, 32}, test_device::options());
  chain(layers, x).sum().backward();
  std::vector<std::vector<torch::Tensor>> expected;
  for (auto& l : layers) expected.push_back(take_grads(*l));

  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto thrower = std::make_shared<ThrowingObserver>();
  const auto failures_before = actckpt::observer_failures().count;
  {
    actckpt::ObserverScope scope(thrower);
    chain(wrapped, x).sum().backward();
    REQUIRE(wait_until_idle(*iso.context, std::chrono::seconds(2)));  // every offload_end emitted
  }
  const auto failures = actckpt::observer_failures();
  CHECK(thrower->calls.load() > 0);
  CHECK(failures.count - failures_before == static_cast<std::uint64_t>(thrower->calls.load()));
  CHECK(failures.last_message.find("observer boom") != std::string::npos);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CAPTURE(i);
    check_bitwise_equal(take_grads(*layers[i]), expected[i]);
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

// ---------------------------------------------------------------------------------------------
// The observer registry on its own (emit, ObserverScope, observer_failures()). Events carry a
// label unique to each case, so nothing else the process emits is counted.

namespace {

/// Keeps the kinds, labels and bytes of the events with its label.
struct LabelRecorder : actckpt::Observer {
  explicit LabelRecorder(std::string label) : label(std::move(label)) {}
  void on_event(const actckpt::Event& e) override {
    if (e.label != label) return;
    std::lock_guard<std::mutex> lock(mutex);
    kinds.emplace_back(actckpt::to_string(e.kind));
    bytes.push_back(e.bytes);
  }
  std::vector<std::string> seen() {
    std::lock_guard<std::mutex> lock(mutex);
    return kinds;
  }
  std::string label;
  std::mutex mutex;
  std::vector<std::string> kinds;  // by name: doctest can print a vector of strings
  std::vector<std::int64_t> bytes;
};

}  // namespace

TEST_CASE("observer: installed for the lifetime of its scope; every installed observer gets each event" * test_device::no_tensors()) {
  const std::string label = "observer-test-scope";
  auto first = std::make_shared<LabelRecorder>(label);
  auto second = std::make_shared<LabelRecorder>(label);
  actckpt::emit(EventKind::forward_begin, label);  // nobody installed yet
  {
    actckpt::ObserverScope one(first);
    CHECK(actckpt::observing());
    actckpt::emit(EventKind::offload_begin, label, 4096);
    {
      actckpt::ObserverScope two(second);
      actckpt::emit(EventKind::offload_end, label, 4096);
    }
    actckpt::emit(EventKind::restore_end, label, 4096);
  }
  actckpt::emit(EventKind::backward_end, label);  // both removed
  CHECK(first->seen() == std::vector<std::string>{"offload_begin", "offload_end", "restore_end"});
  CHECK(first->bytes == std::vector<std::int64_t>{4096, 4096, 4096});
  CHECK(second->seen() == std::vector<std::string>{"offload_end"});
}

TEST_CASE("observer: one that throws is counted with its message, and the others still get the event" * test_device::no_tensors()) {
  const std::string label = "observer-test-throwing";
  auto before = actckpt::observer_failures();
  auto recorder_before = std::make_shared<LabelRecorder>(label);
  auto thrower = std::make_shared<ThrowingObserver>();
  auto recorder_after = std::make_shared<LabelRecorder>(label);
  {
    actckpt::ObserverScope a(recorder_before);
    actckpt::ObserverScope b(thrower);
    actckpt::ObserverScope c(recorder_after);
    CHECK_NOTHROW(actckpt::emit(EventKind::prefetch_begin, label, 8));
    CHECK_NOTHROW(actckpt::emit(EventKind::stash_released, label, 8));
  }
  // Both observers around the throwing one got both events.
  const std::vector<std::string> both{"prefetch_begin", "stash_released"};
  CHECK(recorder_before->seen() == both);
  CHECK(recorder_after->seen() == both);
  const auto after = actckpt::observer_failures();
  CHECK(thrower->calls >= 2);
  CHECK(after.count >= before.count + 2);
  CHECK(after.last_message.find("stash_released") != std::string::npos);
  CHECK(after.last_message.find("observer boom at stash_released") != std::string::npos);
}

TEST_CASE("observer: to_string names every event kind distinctly" * test_device::no_tensors()) {
  const std::vector<EventKind> all{EventKind::forward_begin,  EventKind::forward_end,   EventKind::backward_begin,
                                   EventKind::recompute_end,  EventKind::backward_end,  EventKind::offload_begin,
                                   EventKind::offload_end,    EventKind::prefetch_begin, EventKind::restore_end,
                                   EventKind::stash_released};
  std::set<std::string_view> names;
  for (auto k : all) {
    CHECK(actckpt::to_string(k) != "unknown");
    names.insert(actckpt::to_string(k));
  }
  CHECK(names.size() == all.size());
}

