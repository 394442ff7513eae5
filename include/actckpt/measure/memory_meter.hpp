#pragma once
/// \file memory_meter.hpp
/// `actckpt::MemoryMeter`: how many bytes a region of code holds on its compute device, now and
/// at its peak, and, separately, how many bytes of offloaded stashes wait in the host buffer pool.
/// \code
///   actckpt::MemoryMeter meter(torch::kCPU);   // measuring starts here: build the model after it
///   ... train ...
///   auto r = meter.read();                      // r.device_peak_bytes, r.host_stash_peak_bytes
///   meter.reset_peak();                         // peaks start again from the current values
/// \endcode
///
/// How it counts, per device type:
///  - CPU: through LibTorch's memory-reporting hook (a `c10::MemoryReportingInfoBase` installed
///    as the thread's PROFILER_STATE debug info). The hook is thread-local and LibTorch carries
///    it into autograd threads and, through `at::ThreadLocalState`, into actckpt's CPU copy
///    worker, so a meter counts the blocks allocated by its own thread's work and nothing else:
///    two meters in two threads each see their own model. "Current" is the bytes of blocks
///    allocated while the meter lived and not yet freed; blocks that existed before it are
///    invisible (their release too), so create the meter before the model to count weights.
///    Memory LibTorch's CPU allocator does not hand out (actckpt's host buffer pool, `from_blob`,
///    oneDNN scratch) is not device memory here, exactly as a stash in host RAM is not GPU memory.
///  - CUDA: the caching allocator's statistics for the device (all threads of the process).
///    The device figure is `active_bytes`: what the device really holds, including blocks freed
///    by their tensor while a copy on a side stream still reads them (`record_stream` keeps them
///    until the copy is done; asynchronous offload frees its sources this way). `allocated_bytes`,
///    which `torch.cuda.max_memory_allocated` reports, drops at the free and so understates
///    an offloading step by the stashes in flight; it is read as `device_allocated_*`. The
///    peaks are reset when the meter starts and by `reset_peak()`. The meter initializes CUDA
///    (LibTorch's lazy initialization) before it reads the allocator.
/// Host stash bytes are the pool's live bytes (the pool of the thread's current
/// `OffloadContext` unless one is given); the pool's peak is reset at the same moments. Give each
/// model its own pool (`OffloadContext::create(HostBufferPool::create(limit))`) to separate them.
///
/// A meter is a scope: create and destroy it on the same thread, innermost first. Nested meters
/// (and a timeline on an outer meter) keep working: each hook passes reports on to the one it
/// covers. While a meter lives on a thread, LibTorch's own autograd profiler cannot use that
/// thread's PROFILER_STATE slot (they share it); do not run both at once.
/// Reading is thread-safe and lock-free; counting costs one map insert per allocation.
/// LibTorch 1.13 logs once per process "Memory block of unknown size was allocated before the
/// profiling started" when a metered thread frees a block from before any meter: harmless, the
/// meter ignores such releases by design.

#include <c10/core/Allocator.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <c10/util/ThreadLocalDebugInfo.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <utility>

#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/offload/host_buffer_pool.hpp"
#include "actckpt/offload/offload_context.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/Context.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace actckpt {

/// One reading of a meter. Bytes; "peak" is since the meter started or its last `reset_peak()`.
struct MemoryReading {
  std::int64_t device_bytes = 0;           ///< held on the compute device now
  std::int64_t device_peak_bytes = 0;      ///< the most held on the compute device
  std::int64_t host_stash_bytes = 0;       ///< offloaded stashes in the host buffer pool now
  std::int64_t host_stash_peak_bytes = 0;  ///< the most there
  /// CUDA: the allocator's `allocated_bytes` (see the file comment), now and at the peak;
  /// on CPU equal to the device figures (a CPU block is held until its last reader is done).
  std::int64_t device_allocated_bytes = 0;
  std::int64_t device_allocated_peak_bytes = 0;
};

/// Receives every allocation and release a meter sees, on the thread that made it (the
/// timeline). `delta` > 0 is an allocation, < 0 a release; `device_bytes` is the count after it
/// (CPU: the meter's own; CUDA: the device's allocated bytes as the allocator reported them).
class MemorySink {
 public:
  virtual ~MemorySink() = default;
  virtual void on_memory(std::int64_t delta, std::int64_t device_bytes) = 0;
};

namespace detail {

/// The totals of `reportMemoryUsage` are int64_t in LibTorch 1.13 and size_t in 2.x; deducing
/// them from the base's own declaration keeps the override right on every version without a
/// version table.
template <class F>
struct report_signature;
template <class C, class Size, class Total>
struct report_signature<void (C::*)(void*, Size, Total, Total, c10::Device)> {
  using size_type = Size;
  using total_type = Total;
};
using ReportSignature = report_signature<decltype(&c10::MemoryReportingInfoBase::reportMemoryUsage)>;

/// The hook a meter installs. Shared (through `at::ThreadLocalState`) with every thread that
/// runs work of the meter's thread, so it may outlive the meter; reports then change nothing
/// anyone reads.
class MemoryHook final : public c10::MemoryReportingInfoBase {
 public:
  using Size = ReportSignature::size_type;
  using Total = ReportSignature::total_type;

  explicit MemoryHook(c10::Device device)
      : device_(device),
        outer_chain_(c10::ThreadLocalDebugInfo::current()),
        outer_(dynamic_cast<c10::MemoryReportingInfoBase*>(
            c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE))) {}

  void reportMemoryUsage(void* ptr, Size alloc_size, Total total_allocated, Total total_reserved,
                         c10::Device device) override {
    if (outer_ != nullptr && outer_->memoryProfilingEnabled())
      outer_->reportMemoryUsage(ptr, alloc_size, total_allocated, total_reserved, device);
    if (device.type() != device_.type()) return;
    if (device_.is_cpu()) {
      count_cpu(ptr, static_cast<std::int64_t>(alloc_size));
    } else if (!device_.has_index() || device.index() == device_.index()) {
      deliver(static_cast<std::int64_t>(alloc_size), static_cast<std::int64_t>(total_allocated));
    }
  }

  bool memoryProfilingEnabled() const override { return true; }

  std::int64_t current() const { return current_.load(std::memory_order_relaxed); }
  std::int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

  /// True when this hook receives the calling thread's reports (itself or through a nested one).
  bool active_on_this_thread() const {
    auto* info = c10::ThreadLocalDebugInfo::get(c10::DebugInfoKind::PROFILER_STATE);
    for (auto* hook = dynamic_cast<const MemoryHook*>(info); hook != nullptr;
         hook = dynamic_cast<const MemoryHook*>(hook->outer_)) {
      if (hook == this) return true;
    }
    return false;
  }

  /// Release tracking (CPU; the planner's profiler): blocks allocated from now on are tagged
  /// with `epoch`, and each release of a block tagged with an epoch >= 0 adds its bytes to that
  /// epoch's count, which `take_releases` hands out. -1 stops tagging (blocks keep their tag).
  void set_epoch(int epoch) {
    std::lock_guard<std::mutex> lock(blocks_mutex_);
    epoch_ = epoch;
  }
  /// The bytes released since the last call, per allocation epoch (see `set_epoch`).
  std::map<int, std::int64_t> take_releases() {
    std::lock_guard<std::mutex> lock(blocks_mutex_);
    return std::exchange(released_, {});
  }

  /// Sets the sink (null removes it). When this returns, the old sink gets no more calls.
  void set_sink(MemorySink* sink) {
    std::lock_guard<std::mutex> lock(sink_mutex_);
    sink_ = sink;
    has_sink_.store(sink != nullptr, std::memory_order_release);
  }

 private:
  /// CPU: counts only blocks allocated under this hook, so that releasing a block somebody else
  /// allocated (before the meter, or in another meter's thread) cannot drive the count down.
  void count_cpu(void* ptr, std::int64_t size) {
    std::int64_t now = 0;
    {
      std::lock_guard<std::mutex> lock(blocks_mutex_);
      if (size > 0) {
        blocks_[ptr] = Block{size, epoch_};
      } else {
        auto it = blocks_.find(ptr);
        if (it == blocks_.end()) return;
        size = -it->second.size;
        if (it->second.epoch >= 0) released_[it->second.epoch] -= size;
        blocks_.erase(it);
      }
      now = current_.fetch_add(size, std::memory_order_relaxed) + size;
    }
    std::int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
    deliver(size, now);
  }

  void deliver(std::int64_t delta, std::int64_t device_bytes) {
    if (!has_sink_.load(std::memory_order_acquire)) return;  // recording off: one load
    std::lock_guard<std::mutex> lock(sink_mutex_);
    if (sink_ != nullptr) sink_->on_memory(delta, device_bytes);
  }

  const c10::Device device_;
  // Keeps the hook this one covers (a nested meter's outer one) alive while this one is.
  const std::shared_ptr<c10::ThreadLocalDebugInfo> outer_chain_;
  c10::MemoryReportingInfoBase* const outer_;

  struct Block {
    std::int64_t size;
    int epoch;  // see set_epoch; -1: untagged
  };
  std::mutex blocks_mutex_;
  std::unordered_map<void*, Block> blocks_;
  int epoch_ = -1;
  std::map<int, std::int64_t> released_;  // per allocation epoch, since the last take_releases
  std::atomic<std::int64_t> current_{0};
  std::atomic<std::int64_t> peak_{0};

  std::atomic<bool> has_sink_{false};
  std::mutex sink_mutex_;
  MemorySink* sink_ = nullptr;
};

}  // namespace detail

/// Measures a scope; see the file comment for what is counted where.
class MemoryMeter {
 public:
  /// Starts measuring `device` (CPU, or a CUDA device) and the host stash bytes of `pool`
  /// (null: the pool of the calling thread's current `OffloadContext`).
  explicit MemoryMeter(c10::Device device = c10::Device(c10::kCPU), std::shared_ptr<HostBufferPool> pool = nullptr)
      : device_(checked(device)),
        pool_(pool ? std::move(pool) : OffloadContext::current()->pool_ptr()),
        hook_(std::make_shared<detail::MemoryHook>(device_)) {
    guard_.emplace(c10::DebugInfoKind::PROFILER_STATE, hook_);
    reset_peak();
  }

  MemoryMeter(const MemoryMeter&) = delete;
  MemoryMeter& operator=(const MemoryMeter&) = delete;
  ~MemoryMeter() { hook_->set_sink(nullptr); }

  c10::Device device() const { return device_; }
  HostBufferPool& pool() const { return *pool_; }
  const std::shared_ptr<HostBufferPool>& pool_ptr() const { return pool_; }

  /// Bytes held on the compute device now.
  std::int64_t device_bytes() const {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) return cuda_stats().current;
#endif
    return hook_->current();
  }

  /// The most bytes held on the compute device since the start or the last `reset_peak()`.
  std::int64_t device_peak_bytes() const {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) return cuda_stats().peak;
#endif
    return hook_->peak();
  }
  /// Bytes of offloaded stashes in the host pool now, and their peak.
  std::int64_t host_stash_bytes() const { return static_cast<std::int64_t>(pool_->live_bytes()); }
  std::int64_t host_stash_peak_bytes() const { return static_cast<std::int64_t>(pool_->stats().peak_live_bytes); }

  /// CUDA: the allocator's `allocated_bytes` now and at its peak (see the file comment); on CPU
  /// the same as `device_bytes()` / `device_peak_bytes()`.
  std::int64_t device_allocated_bytes() const {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) return cuda_stats().allocated;
#endif
    return hook_->current();
  }
  std::int64_t device_allocated_peak_bytes() const {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) return cuda_stats().allocated_peak;
#endif
    return hook_->peak();
  }

  MemoryReading read() const {
    return MemoryReading{device_bytes(),           device_peak_bytes(),           host_stash_bytes(),
                         host_stash_peak_bytes(), device_allocated_bytes(), device_allocated_peak_bytes()};
  }

  /// Peaks (device and host stash) start again from the current values.
  void reset_peak() {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) c10::cuda::CUDACachingAllocator::resetPeakStats(device_.index());
#endif
    hook_->reset_peak();
    pool_->reset_peaks();
  }

  /// True when allocations made on the calling thread are counted by this meter.
  bool counts_this_thread() const { return hook_->active_on_this_thread(); }

  /// Whether this meter can tell which releases free blocks allocated in an earlier epoch
  /// (CPU: it sees every block; CUDA: the allocator's statistics only, so no).
  bool tracks_releases() const { return device_.is_cpu(); }
  /// CPU: blocks allocated from now on belong to `epoch` (>= 0; -1 stops tagging), and
  /// `take_releases()` returns the bytes released since its last call per allocation epoch. The
  /// memory planner's profiler uses it to find releases whose timing depends on the plan.
  void set_epoch(int epoch) { hook_->set_epoch(epoch); }
  std::map<int, std::int64_t> take_releases() { return hook_->take_releases(); }

  /// Sends every allocation and release to `sink` (null stops); used by `MemoryTimeline`.
  void set_sink(MemorySink* sink) { hook_->set_sink(sink); }

 private:
  static c10::Device checked(c10::Device device) {
    ACTCKPT_CHECK(device.is_cpu() || device.is_cuda(), UsageError, "actckpt::MemoryMeter measures CPU or CUDA devices, not ",
                device);
#if ACTCKPT_WITH_CUDA
    if (device.is_cuda()) {
      // The caching allocator's statistics throw until CUDA is initialized, and nothing before
      // the first CUDA tensor initializes it (`torch::cuda::is_available()` does not).
      initialize_cuda();
      if (!device.has_index()) return c10::Device(c10::kCUDA, c10::cuda::current_device());
    }
#else
    ACTCKPT_CHECK(!device.is_cuda(), UsageError, "actckpt::MemoryMeter: measuring ", device,
                " needs a CUDA build of actckpt (ACTCKPT_WITH_CUDA)");
#endif
    return device;
  }

#if ACTCKPT_WITH_CUDA
  static void initialize_cuda() {
#if ACTCKPT_TORCH_AT_LEAST(2, 6)
    at::globalContext().lazyInitDevice(c10::DeviceType::CUDA);
#else
    at::globalContext().lazyInitCUDA();
#endif
  }

  struct CudaCounts {
    std::int64_t current, peak, allocated, allocated_peak;
  };
  CudaCounts cuda_stats() const {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device_.index());
    // [0]: the aggregate pool
    return {stats.active_bytes[0].current, stats.active_bytes[0].peak, stats.allocated_bytes[0].current,
            stats.allocated_bytes[0].peak};
  }
#endif

  const c10::Device device_;
  std::shared_ptr<HostBufferPool> pool_;
  std::shared_ptr<detail::MemoryHook> hook_;
  std::optional<c10::DebugInfoGuard> guard_;
};

}  // namespace actckpt
