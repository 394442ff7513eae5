#pragma once
/// \file host_buffer_pool.hpp
/// A bounded, reusable pool of host memory that offloaded stashes live in
/// (docs/pitfalls.md#p10, #p11).
///
/// Host memory for CUDA stashes is pinned (page-locked), because only pinned memory lets a copy
/// run asynchronously; pinning costs milliseconds and synchronizes the device. LibTorch's pinned
/// (caching host) allocator, which LibTorch's own asynchronous copies know how to fence, rounds
/// every block up to a power of two: asked per stash, it holds up to twice the bytes stashed.
/// So the pool takes memory in large **slabs** and places each stash inside a slab at its exact
/// size (rounded up to `alignment`): a buffer is a view of its slab's storage, so LibTorch still
/// recognises it as pinned. Pinned slabs have power-of-two sizes (what that allocator really
/// reserves, so the pool's limit and byte counts are what is pinned); CPU stashes use slabs from
/// the C heap, outside LibTorch's CPU allocator (a memory meter on the CPU "device" sees the stash
/// leave, as it would on a GPU), with the same placement logic.
///
/// Placement: address-ordered first fit over the slabs in the order they were made, freed ranges
/// coalesced with their free neighbours. A training step that stashes and frees in the same order
/// every step then lands every stash where it landed in the first step: the pool stops growing
/// after one step. Slabs grow with the pool (about 1/32 of what it holds, at least the request), so
/// the unused tail of the newest slab stays a small part of what is held.
///
/// A freed range may still be the source or target of an asynchronous device copy: the holder
/// sets a reuse fence on its buffer (a CUDA event wait); releasing never waits on it, and the
/// pool runs it before any byte of that range is handed out again or its slab is freed.
///
/// The pool never waits for memory: when the limit (counting slab bytes) would be exceeded even
/// after free slabs were returned, `try_acquire` returns null and the caller applies its
/// documented fallback (keep the stash on the device, or throw). `trim()` returns every slab with
/// no stash in it to the system (for pinned slabs, also emptying LibTorch's pinned cache; this
/// also frees pinned blocks other code cached there and no longer uses). Thread-safe.

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
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/config.hpp"
#include "actckpt/offload/free_ranges.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/cuda/CachingHostAllocator.h>
#endif

namespace actckpt {

/// Byte counts of a pool, all readable while training runs.
struct HostPoolStats {
  std::size_t live_bytes = 0;          ///< bytes of buffers currently holding stashes (alignment included)
  std::size_t peak_live_bytes = 0;     ///< the most `live_bytes` has been
  std::size_t stashed_bytes = 0;       ///< bytes the live stashes asked for (before any rounding)
  std::size_t peak_stashed_bytes = 0;  ///< the most `stashed_bytes` has been
  std::size_t reserved_bytes = 0;      ///< bytes held: the slabs obtained from the system (live + free)
  std::size_t peak_reserved_bytes = 0; ///< the most `reserved_bytes` has been
  std::size_t live_buffers = 0;        ///< buffers currently handed out
  std::uint64_t system_allocations = 0;///< slabs obtained from the system, ever
  std::uint64_t reuses = 0;            ///< requests placed in slabs the pool already held
  std::uint64_t exhaustions = 0;       ///< requests refused because of the limit
  std::size_t slabs = 0;               ///< slabs held now
  std::size_t free_ranges = 0;         ///< free ranges inside the slabs (fragmentation: 1 per slab is none)
  std::size_t largest_free_bytes = 0;  ///< the largest request the slabs held now could take
};

class HostBufferPool;

/// One host buffer, handed out by the pool; it goes back to the pool when the last
/// `std::shared_ptr<HostBuffer>` to it is dropped.
class HostBuffer {
 public:
  void* data() const { return bytes_.data_ptr(); }
  std::size_t capacity() const { return capacity_; }
  bool pinned() const { return pinned_; }

  /// A CPU tensor of `sizes` and `dtype` over the first `nbytes` of this buffer. It shares the
  /// storage of the buffer's slab (for pinned buffers, the storage LibTorch's pinned allocator
  /// made), so asynchronous copies from and into it are recognised as pinned by LibTorch.
  at::Tensor view_as(c10::IntArrayRef sizes, c10::ScalarType dtype, std::size_t nbytes) const {
    return bytes_.narrow(0, 0, static_cast<int64_t>(nbytes)).view(dtype).view(sizes);
  }

  /// Sets a function that blocks until pending asynchronous device work on this buffer is
  /// done (a CUDA event wait). The pool runs it before handing these bytes out again.
  void set_reuse_fence(std::function<void()> fence) { fence_ = std::move(fence); }

 private:
  friend class HostBufferPool;
  HostBuffer(at::Tensor bytes, std::size_t capacity, bool pinned, void* slab, std::size_t offset)
      : bytes_(std::move(bytes)), capacity_(capacity), pinned_(pinned), slab_(slab), offset_(offset) {}
  at::Tensor bytes_;  // a 1-d uint8 view of the slab over this buffer's range
  std::size_t capacity_;
  std::size_t requested_ = 0;  // what the holder asked for
  bool pinned_;
  void* slab_;           // the pool's slab (valid while the pool lives)
  std::size_t offset_;   // where the range starts in the slab
  std::function<void()> fence_;
};

/// The pool. Create with `HostBufferPool::create(limit)`, or use the process-wide
/// `HostBufferPool::shared()` (limit: half of physical RAM).
class HostBufferPool : public std::enable_shared_from_this<HostBufferPool> {
 public:
  /// Alignment of every buffer inside its slab (and of a buffer's size): the rounding a stash pays.
  static constexpr std::size_t alignment = 64;
  /// Kept under its old name: buffer sizes are multiples of it.
  static constexpr std::size_t granularity = alignment;
  /// Smallest slab taken for CPU stashes (C heap) and for pinned ones (pinning is costly).
  static constexpr std::size_t min_plain_slab = std::size_t{64} << 10;
  static constexpr std::size_t min_pinned_slab = std::size_t{2} << 20;
  /// Slabs grow with the pool up to this (a larger request still gets a slab of its own).
  static constexpr std::size_t max_grown_slab = std::size_t{1} << 30;
  /// A new slab is about 1/growth_divisor of what the pool holds: the unused tail of the newest
  /// slab stays a small part of it.
  static constexpr std::size_t growth_divisor = 32;

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

  ~HostBufferPool() {
    // Buffers still out keep their slab's storage alive (their view holds it) and run their own
    // fence when dropped; freed ranges' fences run here, before the slabs go.
    for (auto& slab : slabs_) slab->run_fences();
    const bool had_pinned = std::any_of(slabs_.begin(), slabs_.end(), [](const auto& s) { return s->pinned; });
    slabs_.clear();
    if (had_pinned) empty_pinned_cache();
  }
  HostBufferPool(const HostBufferPool&) = delete;
  HostBufferPool& operator=(const HostBufferPool&) = delete;

  /// A buffer of at least `bytes` (exactly `bytes` rounded up to `alignment`), pinned if asked;
  /// null when the limit does not allow it (after free slabs were given back to make room).
  std::shared_ptr<HostBuffer> try_acquire(std::size_t bytes, bool pinned) {
    const std::size_t want = align(std::max<std::size_t>(bytes, 1));
    Slab* slab = nullptr;
    std::size_t offset = 0;
    std::vector<std::shared_ptr<Fence>> fences;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!place_locked(want, pinned, slab, offset)) {
        if (!add_slab_locked(want, pinned)) {
          ++stats_.exhaustions;
          return nullptr;
        }
        const bool placed = place_locked(want, pinned, slab, offset);
        TORCH_INTERNAL_ASSERT(placed, "actckpt: a new host pool slab could not take the request it was made for");
      } else {
        ++stats_.reuses;
      }
      fences = slab->take_fences(offset, offset + want);
      slab->live += 1;
      stats_.live_bytes += want;
      live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
      stats_.live_buffers += 1;
      stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
      stats_.stashed_bytes += bytes;
      stats_.peak_stashed_bytes = std::max(stats_.peak_stashed_bytes, stats_.stashed_bytes);
    }
    // Device copies that still read or write these bytes (they were part of freed buffers) must
    // be done before the new holder touches them. Outside the lock: other threads go on.
    try {
      for (auto& f : fences) f->run();
    } catch (...) {  // a failed device wait: the range goes back (its fences still pending), nothing leaks
      std::lock_guard<std::mutex> lock(mutex_);
      release_locked(slab, offset, want, bytes, nullptr);
      throw;
    }
    at::Tensor view = slab->memory.narrow(0, static_cast<int64_t>(offset), static_cast<int64_t>(want));
    auto* buffer = new HostBuffer(std::move(view), want, pinned, slab, offset);
    buffer->requested_ = bytes;
    std::weak_ptr<HostBufferPool> owner = weak_from_this();
    return std::shared_ptr<HostBuffer>(buffer, [owner](HostBuffer* b) {
      if (auto pool = owner.lock()) {
        pool->give_back(b);
      } else {  // the pool is gone: the view keeps the slab's memory until device work on it is done
        if (b->fence_) b->fence_();
        delete b;
      }
    });
  }

  HostPoolStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    HostPoolStats s = stats_;
    s.slabs = slabs_.size();
    for (const auto& slab : slabs_) {
      s.free_ranges += slab->free.count();
      s.largest_free_bytes = std::max(s.largest_free_bytes, slab->free.largest());
    }
    return s;
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
  /// Changes the bound; buffers already out stay out, free slabs are trimmed to fit.
  void set_limit(std::size_t limit_bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    limit_ = limit_bytes;
    if (stats_.reserved_bytes > limit_) trim_locked();
  }

  /// Returns every slab that holds no stash to the system.
  void trim() {
    std::lock_guard<std::mutex> lock(mutex_);
    trim_locked();
  }

 private:
  /// A fence of a freed range; it runs once, whichever thread reuses those bytes first.
  struct Fence {
    explicit Fence(std::function<void()> f) : fn(std::move(f)) {}
    void run() { std::call_once(once, [this] { fn(); done.store(true, std::memory_order_release); }); }
    std::function<void()> fn;
    std::once_flag once;
    std::atomic<bool> done{false};
  };
  struct PendingFence {
    std::size_t begin, end;
    std::shared_ptr<Fence> fence;
  };

  struct Slab {
    at::Tensor memory;  // 1-d uint8 over the whole slab
    std::size_t size = 0;
    bool pinned = false;
    std::size_t live = 0;                   // buffers handed out of it
    FreeRanges free;                        // placement inside the slab (shared with the disk tier)
    std::vector<PendingFence> fences;       // fences of freed ranges not yet handed out again

    bool unused() const { return live == 0; }

    /// The fences of freed ranges overlapping [begin, end) (done ones dropped); they stay listed
    /// for the bytes of their range outside [begin, end), so those are fenced when reused too.
    std::vector<std::shared_ptr<Fence>> take_fences(std::size_t begin, std::size_t end) {
      std::vector<std::shared_ptr<Fence>> out;
      fences.erase(std::remove_if(fences.begin(), fences.end(),
                                  [](const PendingFence& p) { return p.fence->done.load(std::memory_order_acquire); }),
                   fences.end());
      for (const auto& p : fences)
        if (p.begin < end && begin < p.end) out.push_back(p.fence);
      return out;
    }
    void run_fences() {
      for (auto& p : fences) p.fence->run();
      fences.clear();
    }
  };

  explicit HostBufferPool(std::size_t limit_bytes) : limit_(limit_bytes) {}

  static std::size_t align(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }
  static std::size_t round_to(std::size_t n, std::size_t unit) { return (n + unit - 1) / unit * unit; }
  static std::size_t pow2_ceil(std::size_t n) {
    std::size_t p = 1;
    while (p < n) p <<= 1;
    return p;
  }
  static std::size_t pow2_floor(std::size_t n) {
    std::size_t p = 1;
    while (p * 2 <= n) p <<= 1;
    return p;
  }

  /// The size of a new slab for a request of `want` (aligned) bytes. It grows with what the pool
  /// holds. Pinned: a power of two (what LibTorch's pinned allocator reserves anyway). Plain: a
  /// whole number of such requests (stashes of equal size fill it exactly), in 4 KiB pages.
  std::size_t slab_size_for(std::size_t want, bool pinned) const {
    const std::size_t floor = pinned ? min_pinned_slab : min_plain_slab;
    const std::size_t grown = std::clamp(stats_.reserved_bytes / growth_divisor, floor, max_grown_slab);
    if (pinned) return std::max(pow2_ceil(want), pow2_floor(grown));
    return round_to(want * std::max<std::size_t>(1, grown / want), 4096);
  }
  /// The smallest slab that takes `want` bytes (near the limit).
  static std::size_t smallest_slab_for(std::size_t want, bool pinned) {
    return pinned ? pow2_ceil(want) : round_to(want, 4096);
  }

  /// Address-ordered first fit over the slabs of the kind asked for, oldest first.
  bool place_locked(std::size_t want, bool pinned, Slab*& slab, std::size_t& offset) {
    for (auto& s : slabs_) {
      if (s->pinned != pinned) continue;
      if (const auto placed = s->free.take(want)) {
        offset = *placed;
        slab = s.get();
        return true;
      }
    }
    return false;
  }

  /// Takes a new slab that can hold `want` bytes, within the limit; false when none can be had.
  bool add_slab_locked(std::size_t want, bool pinned) {
    std::size_t size = slab_size_for(want, pinned);
    if (stats_.reserved_bytes + size > limit_) trim_locked();
    if (stats_.reserved_bytes + size > limit_) size = smallest_slab_for(want, pinned);
    if (stats_.reserved_bytes + size > limit_) return false;
    at::Tensor memory = allocate(size, pinned);
    if (!memory.defined()) return false;
    auto slab = std::make_unique<Slab>();
    slab->memory = std::move(memory);
    slab->size = size;
    slab->pinned = pinned;
    slab->free.add(0, size);
    slabs_.push_back(std::move(slab));
    ++stats_.system_allocations;
    stats_.reserved_bytes += size;
    stats_.peak_reserved_bytes = std::max(stats_.peak_reserved_bytes, stats_.reserved_bytes);
    return true;
  }

  /// A byte tensor over new memory, or undefined when the system refuses. Plain slabs come
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
      ACTCKPT_CHECK(false, UsageError, "actckpt: pinned host memory needs a CUDA build of LibTorch and actckpt "
                         "(ACTCKPT_WITH_CUDA)");
#endif
    }
    void* p = std::aligned_alloc(4096, round_to(bytes, 4096));
    if (p == nullptr) return {};
    return at::from_blob(p, {static_cast<int64_t>(bytes)}, [](void* q) { std::free(q); }, options);
  }

  /// A buffer's range goes back to its slab (coalesced with free neighbours); its fence is kept
  /// with the range and runs when the bytes are handed out again. Never waits.
  void give_back(HostBuffer* b) {
    std::unique_ptr<HostBuffer> owned(b);
    std::lock_guard<std::mutex> lock(mutex_);
    // The view must not keep the slab's storage once the slab is freed; drop it first.
    b->bytes_ = at::Tensor();
    release_locked(static_cast<Slab*>(b->slab_), b->offset_, b->capacity_, b->requested_, std::move(b->fence_));
  }

  void release_locked(Slab* slab, std::size_t offset, std::size_t capacity, std::size_t requested,
                      std::function<void()> fence) {
    stats_.live_bytes -= capacity;
    live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
    stats_.live_buffers -= 1;
    stats_.stashed_bytes -= requested;
    if (fence) slab->fences.push_back({offset, offset + capacity, std::make_shared<Fence>(std::move(fence))});
    slab->free.give(offset, capacity);
    slab->live -= 1;
    if (slab->unused() && stats_.reserved_bytes > limit_) trim_locked();  // the limit was lowered meanwhile
  }

  /// Frees every unused slab (running the fences of its freed ranges first).
  void trim_locked() {
    bool freed_pinned = false;
    for (auto it = slabs_.begin(); it != slabs_.end();) {
      if (!(*it)->unused()) {
        ++it;
        continue;
      }
      (*it)->run_fences();
      freed_pinned = freed_pinned || (*it)->pinned;
      stats_.reserved_bytes -= (*it)->size;
      it = slabs_.erase(it);
    }
    if (freed_pinned) empty_pinned_cache();
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
  std::vector<std::unique_ptr<Slab>> slabs_;  // in the order they were made (first-fit order)
};

}  // namespace actckpt
