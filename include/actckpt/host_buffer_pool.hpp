#pragma once
/// \file host_buffer_pool.hpp
/// A bounded, reusable pool of host buffers that offloaded stashes live in
/// (docs/pitfalls.md#p10, #p11).
///
/// Buffers for CUDA stashes are pinned (page-locked), because only pinned memory lets a copy run
/// asynchronously; pinning costs milliseconds and synchronizes the device, so buffers are kept
/// and reused from step to step instead of being allocated per stash. They come from LibTorch's
/// pinned (caching host) allocator, which LibTorch's own asynchronous copies know how to fence,
/// and which rounds every block up to a power of two: the pool asks for exactly that rounded
/// size, so its limit and byte counts are what is really pinned. `trim()` gives pinned buffers
/// back to that allocator and then empties its cache, so the memory returns to the system (this
/// also frees pinned blocks other code cached there and no longer uses). Buffers for CPU stashes
/// come from the C heap, outside LibTorch's CPU allocator, so that a memory meter on the CPU
/// "device" sees the stash leave, as it would on a GPU.
///
/// The pool never waits for memory: when the limit would be exceeded, `try_acquire` returns
/// null and the caller applies its documented fallback (keep the stash on the device, or throw).
/// Thread-safe.

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <unistd.h>

#include "actckpt/config.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/cuda/CachingHostAllocator.h>
#endif

namespace actckpt {

/// Byte counts of a pool, all readable while training runs.
struct HostPoolStats {
  std::size_t live_bytes = 0;          ///< bytes of buffers currently holding stashes
  std::size_t peak_live_bytes = 0;     ///< the most `live_bytes` has been
  std::size_t stashed_bytes = 0;       ///< bytes the live stashes asked for (before any rounding)
  std::size_t peak_stashed_bytes = 0;  ///< the most `stashed_bytes` has been
  std::size_t reserved_bytes = 0;      ///< bytes obtained from the system (live + cached)
  std::size_t peak_reserved_bytes = 0; ///< the most `reserved_bytes` has been
  std::size_t live_buffers = 0;        ///< buffers currently handed out
  std::uint64_t system_allocations = 0;///< buffers obtained from the system, ever
  std::uint64_t reuses = 0;            ///< requests served from cached buffers
  std::uint64_t exhaustions = 0;       ///< requests refused because of the limit
};

class HostBufferPool;

/// One host buffer, handed out by the pool; it goes back to the pool when the last
/// `std::shared_ptr<HostBuffer>` to it is dropped.
class HostBuffer {
 public:
  void* data() const { return bytes_.data_ptr(); }
  std::size_t capacity() const { return capacity_; }
  bool pinned() const { return pinned_; }

  /// A CPU tensor of `sizes` and `dtype` over the first `nbytes` of this buffer. For pinned
  /// buffers it shares the storage LibTorch's pinned allocator made, so asynchronous copies
  /// from and into it are recognised as pinned by LibTorch.
  at::Tensor view_as(c10::IntArrayRef sizes, c10::ScalarType dtype, std::size_t nbytes) const {
    return bytes_.narrow(0, 0, static_cast<int64_t>(nbytes)).view(dtype).view(sizes);
  }

  /// Sets a function that blocks until pending asynchronous device work on this buffer is
  /// done (a CUDA event wait). The pool runs it before handing the buffer out again.
  void set_reuse_fence(std::function<void()> fence) { fence_ = std::move(fence); }

 private:
  friend class HostBufferPool;
  HostBuffer(at::Tensor bytes, std::size_t capacity, bool pinned)
      : bytes_(std::move(bytes)), capacity_(capacity), pinned_(pinned) {}
  at::Tensor bytes_;  // a 1-d uint8 tensor over the whole buffer
  std::size_t capacity_;
  std::size_t requested_ = 0;  // what the current holder asked for
  bool pinned_;
  std::function<void()> fence_;
};

/// The pool. Create with `HostBufferPool::create(limit)`, or use the process-wide
/// `HostBufferPool::shared()` (limit: half of physical RAM).
class HostBufferPool : public std::enable_shared_from_this<HostBufferPool> {
 public:
  /// Rounding of buffer sizes, so that stashes of nearly equal size share buffers.
  static constexpr std::size_t granularity = 4096;

  static std::shared_ptr<HostBufferPool> create(std::size_t limit_bytes) {
    return std::shared_ptr<HostBufferPool>(new HostBufferPool(limit_bytes));
  }

  static std::shared_ptr<HostBufferPool> shared() {
    static const std::shared_ptr<HostBufferPool> pool = create(default_limit());
    return pool;
  }

  /// Half of the machine's physical memory.
  static std::size_t default_limit() {
    const long pages = sysconf(_SC_PHYS_PAGES);
    const long page = sysconf(_SC_PAGE_SIZE);
    if (pages <= 0 || page <= 0) return std::size_t{8} << 30;
    return static_cast<std::size_t>(pages) * static_cast<std::size_t>(page) / 2;
  }

  ~HostBufferPool() { trim_locked(); }
  HostBufferPool(const HostBufferPool&) = delete;
  HostBufferPool& operator=(const HostBufferPool&) = delete;

  /// A buffer of at least `bytes`, pinned if asked; null when the limit does not allow it
  /// (after cached buffers were given back to the system to make room).
  std::shared_ptr<HostBuffer> try_acquire(std::size_t bytes, bool pinned) {
    const std::size_t want = pinned ? pinned_size(bytes) : round_up(std::max<std::size_t>(bytes, 1));
    std::unique_ptr<HostBuffer> buffer;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& cache = pinned ? free_pinned_ : free_plain_;
      auto it = cache.lower_bound(want);
      if (it != cache.end() && it->first <= 2 * want) {
        buffer.reset(it->second);
        cache.erase(it);
        ++stats_.reuses;
      } else {
        if (stats_.reserved_bytes + want > limit_) trim_locked();
        if (stats_.reserved_bytes + want > limit_) {
          ++stats_.exhaustions;
          return nullptr;
        }
        at::Tensor memory = allocate(want, pinned);
        if (!memory.defined()) {
          ++stats_.exhaustions;
          return nullptr;
        }
        buffer.reset(new HostBuffer(std::move(memory), want, pinned));
        ++stats_.system_allocations;
        stats_.reserved_bytes += want;
        stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
      }
      stats_.live_bytes += buffer->capacity_;
      live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
      stats_.live_buffers += 1;
      stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
      buffer->requested_ = bytes;
      stats_.stashed_bytes += bytes;
      stats_.peak_stashed_bytes = std::max(stats_.peak_stashed_bytes, stats_.stashed_bytes);
    }
    if (buffer->fence_) {
      buffer->fence_();
      buffer->fence_ = nullptr;
    }
    std::weak_ptr<HostBufferPool> owner = weak_from_this();
    return std::shared_ptr<HostBuffer>(buffer.release(), [owner](HostBuffer* b) {
      if (auto pool = owner.lock()) {
        pool->give_back(b);
      } else {  // the pool is gone: free the memory once device work on it is done
        if (b->fence_) b->fence_();
        delete b;
      }
    });
  }

  HostPoolStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return stats_;
  }

  /// `stats().live_bytes` without taking the pool's lock: callable from anywhere, including
  /// allocator hooks that may run while this thread holds the lock (a memory timeline).
  std::size_t live_bytes() const noexcept { return live_bytes_.load(std::memory_order_relaxed); }

  /// Resets the peaks to the current values (start of a measured region).
  void reset_peaks() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_live_bytes = stats_.live_bytes;
    stats_.peak_stashed_bytes = stats_.stashed_bytes;
    stats_.peak_reserved_bytes = stats_.reserved_bytes;
  }

  std::size_t limit() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return limit_;
  }
  /// Changes the bound; buffers already out stay out, cached ones are trimmed to fit.
  void set_limit(std::size_t limit_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = limit_bytes;
    if (stats_.reserved_bytes > limit_) trim_locked();
  }

  /// Returns every cached (unused) buffer to the system.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked();
  }

 private:
  explicit HostBufferPool(std::size_t limit_bytes) : limit_(limit_bytes) {}

  static std::size_t round_up(std::size_t n) { return (n + granularity - 1) / granularity * granularity; }

  /// What LibTorch's pinned allocator really reserves for `n` bytes: the next power of two.
  static std::size_t pinned_size(std::size_t n) {
    std::size_t p = granularity;
    while (p < n) p <<= 1;
    return p;
  }

  /// A byte tensor over new memory, or undefined when the system refuses. Plain buffers come
  /// from the C heap (not LibTorch's CPU allocator); pinned ones from LibTorch's pinned allocator.
  static at::Tensor allocate(std::size_t bytes, bool pinned) {
    const auto options = at::TensorOptions().dtype(at::kByte).device(c10::kCPU);
    if (pinned) {
#if ACTCKPT_WITH_CUDA
      try {
        return at::empty({static_cast<int64_t>(bytes)}, options.pinned_memory(true));
      } catch (const c10::Error&) {
        return {};
      }
#else
      TORCH_CHECK(false, "actckpt: pinned host memory needs a CUDA build of LibTorch and actckpt "
                         "(ACTCKPT_WITH_CUDA)");
#endif
    }
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (p == nullptr) return {};
    return at::from_blob(p, {static_cast<int64_t>(bytes)}, [](void* q) { std::free(q); }, options);
  }

  void give_back(HostBuffer* b) {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.live_bytes -= b->capacity_;
    live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
    stats_.live_buffers -= 1;
    stats_.stashed_bytes -= b->requested_;
    b->requested_ = 0;
    if (stats_.reserved_bytes > limit_) {  // the limit was lowered meanwhile
      release_locked(b);
      return;
    }
    (b->pinned_ ? free_pinned_ : free_plain_).emplace(b->capacity_, b);
  }

  void release_locked(HostBuffer* b) {
    if (b->fence_) b->fence_();
    stats_.reserved_bytes -= b->capacity_;
    delete b;
  }

  void trim_locked() {
    const bool had_pinned = !free_pinned_.empty();
    for (auto* cache : {&free_plain_, &free_pinned_}) {
      for (auto& [size, b] : *cache) release_locked(b);
      cache->clear();
    }
    if (had_pinned) empty_pinned_cache();
  }

  /// Returns LibTorch's cached, unused pinned blocks to the system.
  static void empty_pinned_cache() {
#if ACTCKPT_WITH_CUDA
#if ACTCKPT_TORCH_AT_LEAST(2, 8)
    at::getHostAllocator(at::kCUDA)->empty_cache();
#else
    at::cuda::CachingHostAllocator_emptyCache();
#endif
#endif
  }

  mutable std::mutex mutex_;
  std::size_t limit_;
  HostPoolStats stats_;
  std::atomic<std::size_t> live_bytes_{0};  // mirror of stats_.live_bytes, readable without the lock
  std::multimap<std::size_t, HostBuffer*> free_plain_;
  std::multimap<std::size_t, HostBuffer*> free_pinned_;
};

}  // namespace actckpt
