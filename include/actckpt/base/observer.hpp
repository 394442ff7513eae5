#pragma once
/// \file observer.hpp
/// A process-wide, thread-safe stream of what checkpointed layers and stashes do: phase
/// boundaries (`fwd 3`, `bwd 3`), offloads, prefetches and restores. Memory timelines, tests of
/// the prefetch order and future planners listen to it.
///
/// With no observer installed, emitting an event is one relaxed atomic load, so recording off
/// costs nothing measurable.
///
/// Observers must not throw. Events are emitted from destructors, from the CPU copy worker and
/// from the middle of stash bookkeeping, where unwinding would end the process or leave a stash
/// half-moved. So an exception from `on_event` is caught: the first one in the process becomes a
/// LibTorch warning (TORCH_WARN), every one is counted in `observer_failures()`, and the event
/// still reaches the other observers.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include <c10/util/Exception.h>

namespace actckpt {

/// What happened.
enum class EventKind {
  forward_begin,    ///< a checkpointed layer starts its forward (phase "fwd <label>")
  forward_end,      ///< ... and finished it
  backward_begin,   ///< its backward starts: inputs are restored, then recomputed
  recompute_end,    ///< the recompute finished; gradients are computed next
  backward_end,     ///< its backward finished
  offload_begin,    ///< a stash starts moving to host memory
  offload_end,      ///< ... and arrived there (the device copy is released)
  prefetch_begin,   ///< a stash starts moving back to the device ahead of need
  restore_end,      ///< a stash is usable on the device again (the compute side waited for it)
  stash_released,   ///< a stash's memory was returned (consumed, error or graph dropped)
};

/// Short stable name of an event kind, for logs and traces.
constexpr std::string_view to_string(EventKind k) noexcept {
  switch (k) {
    case EventKind::forward_begin: return "forward_begin";
    case EventKind::forward_end: return "forward_end";
    case EventKind::backward_begin: return "backward_begin";
    case EventKind::recompute_end: return "recompute_end";
    case EventKind::backward_end: return "backward_end";
    case EventKind::offload_begin: return "offload_begin";
    case EventKind::offload_end: return "offload_end";
    case EventKind::prefetch_begin: return "prefetch_begin";
    case EventKind::restore_end: return "restore_end";
    case EventKind::stash_released: return "stash_released";
  }
  return "unknown";
}

/// Who events are about: a checkpointed call's label (for people) and, where it has one, the
/// identity of its layer (for programs). A listener that must tell layers apart compares
/// `layer`, never parses `label`: labels are the user's to choose and need not be unique.
struct EventSource {
  std::string label;
  /// The emitting layer's `CheckpointedLayer` (its address; only a key, never dereferenced by
  /// actckpt, and possibly gone by the time an event from the copy worker arrives); null for the
  /// functional form and for unwrapped layers that announce their phases.
  const void* layer = nullptr;
};

/// One event. `label` names the layer (its `CheckpointedImpl::label()`), `layer` is its identity
/// (see EventSource), `bytes` the stash size.
struct Event {
  EventKind kind;
  std::string_view label;
  std::int64_t bytes = 0;
  std::chrono::steady_clock::time_point time = std::chrono::steady_clock::now();
  const void* layer = nullptr;
};

/// Receives events; `on_event` may be called from any thread (forward, autograd, copy worker)
/// and must not throw (see the file comment for what happens if it does).
class Observer {
 public:
  virtual ~Observer() = default;
  virtual void on_event(const Event& event) = 0;
};

/// What observers threw so far (see the file comment), process-wide.
struct ObserverFailures {
  std::uint64_t count = 0;
  std::string last_message;  ///< "<event kind>: <what()>" of the newest one
};

namespace detail {
struct ObserverRegistry {
  std::mutex mutex;
  std::vector<std::shared_ptr<Observer>> observers;
  std::atomic<int> count{0};
  ObserverFailures failures;  // guarded by mutex
  static ObserverRegistry& instance() {
    static ObserverRegistry registry;
    return registry;
  }
};

/// Records an observer's exception; warns the first time. Never throws.
inline void observer_failed(EventKind kind, const char* what) noexcept {
  try {
    auto& r = ObserverRegistry::instance();
    std::string message = std::string(to_string(kind)) + ": " + what;
    bool first = false;
    {
      std::lock_guard<std::mutex> lock(r.mutex);
      first = r.failures.count++ == 0;
      r.failures.last_message = message;
    }
    if (first)
      TORCH_WARN("actckpt: an Observer threw from on_event (", message,
                 "); ignored, observers must not throw. Later failures are only counted: "
                 "see actckpt::observer_failures().");
  } catch (...) {  // out of memory while reporting: nothing more can be done
  }
}
}  // namespace detail

/// True while at least one observer is installed: lets code skip work whose only purpose is to
/// emit events.
inline bool observing() noexcept {
  return detail::ObserverRegistry::instance().count.load(std::memory_order_relaxed) > 0;
}

/// The exceptions observers threw so far in this process (count and newest message).
inline ObserverFailures observer_failures() {
  auto& r = detail::ObserverRegistry::instance();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.failures;
}

/// Installs an observer for as long as the returned guard lives.
class ObserverScope {
 public:
  explicit ObserverScope(std::shared_ptr<Observer> observer) : observer_(std::move(observer)) {
    auto& r = detail::ObserverRegistry::instance();
    std::lock_guard<std::mutex> lock(r.mutex);
    r.observers.push_back(observer_);
    r.count.fetch_add(1, std::memory_order_release);
  }
  ~ObserverScope() {
    auto& r = detail::ObserverRegistry::instance();
    std::lock_guard<std::mutex> lock(r.mutex);
    auto it = std::find(r.observers.begin(), r.observers.end(), observer_);
    if (it != r.observers.end()) {
      r.observers.erase(it);
      r.count.fetch_sub(1, std::memory_order_release);
    }
  }
  ObserverScope(const ObserverScope&) = delete;
  ObserverScope& operator=(const ObserverScope&) = delete;

 private:
  std::shared_ptr<Observer> observer_;
};

/// Sends an event to every installed observer (cheap no-op when none is installed). Never
/// throws: safe in destructors and on the copy worker.
inline void emit(EventKind kind, std::string_view label, std::int64_t bytes = 0, const void* layer = nullptr) noexcept {
  if (!observing()) return;
  auto& r = detail::ObserverRegistry::instance();
  std::vector<std::shared_ptr<Observer>> snapshot;
  try {
    std::lock_guard<std::mutex> lock(r.mutex);
    snapshot = r.observers;
  } catch (const std::exception& e) {  // copying the list ran out of memory
    detail::observer_failed(kind, e.what());
    return;
  }
  const Event event{kind, label, bytes, std::chrono::steady_clock::now(), layer};
  for (const auto& o : snapshot) {
    try {
      o->on_event(event);
    } catch (const std::exception& e) {
      detail::observer_failed(kind, e.what());
    } catch (...) {
      detail::observer_failed(kind, "an exception not derived from std::exception");
    }
  }
}

/// `emit` for `source`'s layer.
inline void emit(EventKind kind, const EventSource& source, std::int64_t bytes = 0) noexcept {
  emit(kind, source.label, bytes, source.layer);
}

}  // namespace actckpt
