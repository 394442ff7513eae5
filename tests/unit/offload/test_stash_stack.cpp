// The stash stack (offload/stash_stack.hpp): through AsyncOffload, the newest N stashes stay on the
// device and the input of layer i-1 is prefetched while layer i recomputes; directly, the order of
// offloads and prefetches that push/take/remove start.

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

#include <actckpt/offload/stash_stack.hpp>

TEST_CASE("async offload keeps the newest N stashes on the device") {
  IsolatedOffload iso;
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  SUBCASE("N = 1 (default)") {
    auto layers = mlp_stack(4);
    auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
    auto y = chain(wrapped, torch::randn({16, 32}, test_device::options()));
    for (int i = 0; i < 3; ++i) CHECK(log->index_of(EventKind::offload_begin, std::to_string(i)) >= 0);
    CHECK(log->index_of(EventKind::offload_begin, "3") == -1);
    CHECK(iso.context->stack().size() == 4);
    y.sum().backward();
    CHECK(iso.context->stack().size() == 0);
  }
  SUBCASE("N = 2") {
    auto layers = mlp_stack(4);
    auto wrapped = wrap_stack<actckpt::BasicAsyncOffload<2>>(layers, iso);
    auto y = chain(wrapped, torch::randn({16, 32}, test_device::options()));
    CHECK(log->index_of(EventKind::offload_begin, "1") >= 0);
    CHECK(log->index_of(EventKind::offload_begin, "2") == -1);
    CHECK(log->index_of(EventKind::offload_begin, "3") == -1);
    y.sum().backward();
  }
}

TEST_CASE("async offload: while layer i recomputes, the input of layer i-1 is already being prefetched") {
  IsolatedOffload iso;
  auto layers = mlp_stack(5);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto y = chain(wrapped, torch::randn({16, 32}, test_device::options().requires_grad(true)));
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  y.sum().backward();
  // Backward visits layers 4, 3, 2, 1, 0. Layer 4's input never left the device; the input of
  // each layer i-1 (i = 4..1) starts coming back when layer i's backward begins, before its
  // recompute ends, and before layer i-1 asks for it.
  for (int i = 4; i >= 1; --i) {
    CAPTURE(i);
    const auto begin_i = log->index_of(EventKind::backward_begin, std::to_string(i));
    const auto recomputed_i = log->index_of(EventKind::recompute_end, std::to_string(i));
    const auto prefetch_prev = log->index_of(EventKind::prefetch_begin, std::to_string(i - 1));
    const auto begin_prev = log->index_of(EventKind::backward_begin, std::to_string(i - 1));
    REQUIRE(prefetch_prev >= 0);
    CHECK(begin_i < prefetch_prev);
    CHECK(prefetch_prev < recomputed_i);
    CHECK(prefetch_prev < begin_prev);
  }
  CHECK(log->index_of(EventKind::prefetch_begin, "4") == -1);
}

// ---------------------------------------------------------------------------------------------
// The stack on its own, with entries that record what they were asked to do.

namespace {

/// A stash stand-in: appends "offload <name>" / "prefetch <name>" to a shared log.
struct RecordingEntry : actckpt::StackEntry {
  RecordingEntry(std::string name, std::vector<std::string>& log) : name(std::move(name)), log(log) {}
  void begin_offload() override {
    if (refuse_offload) throw std::runtime_error("pool refused " + name);
    log.push_back("offload " + name);
  }
  void begin_prefetch() override { log.push_back("prefetch " + name); }
  std::string name;
  std::vector<std::string>& log;
  bool refuse_offload = false;
};

}  // namespace

TEST_CASE("stash stack: a push offloads the entry that just left the newest keep_on_device" * test_device::no_tensors()) {
  for (std::size_t keep : {0u, 1u, 2u, 3u}) {
    CAPTURE(keep);
    std::vector<std::string> log;
    actckpt::StashStack stack;
    std::vector<std::unique_ptr<RecordingEntry>> entries;
    for (int i = 0; i < 5; ++i) entries.push_back(std::make_unique<RecordingEntry>(std::to_string(i), log));
    std::vector<std::string> expected;
    for (std::size_t i = 0; i < 5; ++i) {
      stack.push(entries[i].get(), keep);
      // The entry keep places below the new top (if any) starts its offload now, once.
      if (i >= keep) expected.push_back("offload " + std::to_string(i - keep));
      CHECK(log == expected);
    }
    CHECK(stack.size() == 5);
  }
}

TEST_CASE("stash stack: take prefetches the entry below, in reverse order; remove prefetches nothing" * test_device::no_tensors()) {
  std::vector<std::string> log;
  actckpt::StashStack stack;
  RecordingEntry a("a", log), b("b", log), c("c", log), d("d", log);
  for (auto* e : {&a, &b, &c, &d}) stack.push(e, 4);  // keep 4: nothing offloaded
  CHECK(log.empty());
  // Backward takes the top first: each take starts the prefetch of the one below it.
  stack.take(&d);
  CHECK(log == std::vector<std::string>{"prefetch c"});
  stack.take(&c);
  CHECK(log == std::vector<std::string>{"prefetch c", "prefetch b"});
  // A stash destroyed (graph dropped) leaves without prefetching anything.
  stack.remove(&b);
  CHECK(log.size() == 2);
  CHECK(stack.size() == 1);
  // The bottom entry has nothing below it; taking an entry not on the stack is a no-op.
  stack.take(&a);
  stack.take(&d);
  stack.remove(&c);
  CHECK(log.size() == 2);
  CHECK(stack.size() == 0);
}

TEST_CASE("stash stack: when the offload a push starts throws, the new entry is not kept" * test_device::no_tensors()) {
  std::vector<std::string> log;
  actckpt::StashStack stack;
  RecordingEntry a("a", log), b("b", log);
  a.refuse_offload = true;
  stack.push(&a, 1);
  CHECK_THROWS_WITH(stack.push(&b, 1), doctest::Contains("pool refused a"));
  CHECK(stack.size() == 1);  // only a: b was dropped again
  stack.take(&a);            // nothing below a
  CHECK(log.empty());
  CHECK(stack.size() == 0);
}

