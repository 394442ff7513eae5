#pragma once
/// \file stash_stack.hpp
/// The order in which asynchronous stashes were made, used twice:
///  - in forward, pushing a stash moves the one that just left the newest N to host memory
///    (the newest N stay on the device because backward needs them at once, docs/pitfalls.md#p13);
///  - in backward, layers need their inputs in reverse order, so taking a stash starts the
///    prefetch of the one below it: while layer i recomputes, the input of layer i-1 is already
///    on its way back.
/// Entries are not owned; a stash removes itself when it is restored or destroyed.
/// Thread-safe. Lock order: the stack's mutex, then an entry's own.

#include <algorithm>
#include <cstddef>
#include <mutex>
#include <vector>

namespace actckpt {

/// What the stack asks of a stash.
class StackEntry {
 public:
  virtual ~StackEntry() = default;
  /// Start moving to host memory (no-op when not eligible or already moved).
  virtual void begin_offload() = 0;
  /// Start moving back to the device (no-op when on the device or already coming back).
  virtual void begin_prefetch() = 0;
};

class StashStack {
 public:
  /// Adds the newest stash; the entry that is now `keep_on_device` places from the top starts
  /// its offload.
  void push(StackEntry* entry, std::size_t keep_on_device) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.push_back(entry);
    if (entries_.size() <= keep_on_device) return;
    try {
      entries_[entries_.size() - 1 - keep_on_device]->begin_offload();
    } catch (...) {  // e.g. the pool refused with PoolExhaustion::throw_error: the new entry is not kept
      entries_.pop_back();
      throw;
    }
  }

  /// Removes `entry` (about to be restored) and starts the prefetch of the entry below it.
  void take(StackEntry* entry) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = std::find(entries_.begin(), entries_.end(), entry);
    if (it == entries_.end()) return;
    it = entries_.erase(it);
    if (it != entries_.begin()) (*std::prev(it))->begin_prefetch();
  }

  /// Removes `entry` without prefetching anything (the stash is being destroyed).
  void remove(StackEntry* entry) {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.erase(std::remove(entries_.begin(), entries_.end(), entry), entries_.end());
  }

  /// Number of stashes waiting for their backward.
  std::size_t size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return entries_.size();
  }

 private:
  mutable std::mutex mutex_;
  std::vector<StackEntry*> entries_;
};

}  // namespace actckpt
