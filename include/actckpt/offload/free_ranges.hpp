#pragma once
/// \file free_ranges.hpp
/// The placement both stash tiers share: the free space of one region (a host pool slab, the
/// disk store's file) as address-ordered ranges, handed out first fit at the exact size asked
/// and coalesced with their free neighbours when given back. A training step that takes and
/// gives back in the same order every step lands every piece where it landed in the first step,
/// so neither tier fragments over a run. Not thread-safe: its owner holds its own lock.

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <map>
#include <optional>

namespace actckpt {

class FreeRanges {
 public:
  /// Free space of `size` bytes from `offset` (a new region, or new space of one).
  void add(std::size_t offset, std::size_t size) { give(offset, size); }

  /// The lowest offset with `want` free bytes after it (first fit), taken; none when no range
  /// is large enough.
  std::optional<std::size_t> take(std::size_t want) {
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < want) continue;
      const std::size_t offset = it->first;
      const std::size_t rest = it->second - want;
      free_.erase(it);
      if (rest > 0) free_.emplace(offset + want, rest);
      return offset;
    }
    return std::nullopt;
  }

  /// Gives [offset, offset + size) back, merged with the free ranges it touches.
  void give(std::size_t offset, std::size_t size) {
    if (size == 0) return;
    std::size_t begin = offset;
    auto next = free_.lower_bound(begin);
    if (next != free_.end() && next->first == begin + size) {
      size += next->second;
      next = free_.erase(next);
    }
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == begin) {
        begin = prev->first;
        size += prev->second;
        free_.erase(prev);
      }
    }
    free_.emplace(begin, size);
  }

  /// Number of free ranges (fragmentation: 1 for a region with one hole or none in use).
  std::size_t count() const { return free_.size(); }
  /// The largest request `take` could serve now.
  std::size_t largest() const {
    std::size_t largest = 0;
    for (const auto& [offset, size] : free_) largest = std::max(largest, size);
    return largest;
  }
  /// All free bytes.
  std::size_t total() const {
    std::size_t total = 0;
    for (const auto& [offset, size] : free_) total += size;
    return total;
  }

 private:
  std::map<std::size_t, std::size_t> free_;  // offset -> size, coalesced, address order
};

}  // namespace actckpt
