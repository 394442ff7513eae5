#pragma once
/// \file offload_context.hpp
/// Everything stashes of one training loop share: the host buffer pool, the copy engine (side
/// streams, or the CPU worker), the stash stack that drives keep-N and prefetch, and the
/// offload telemetry (bytes moved, copy time, stall, overlap: `offload_telemetry.hpp`).
///
/// Each thread has a default context, so two models trained in two threads never see each
/// other's stashes; pass a context explicitly (`CheckpointedImpl::set_offload_context`) or make
/// one current for a region (`OffloadContextScope`) to share or separate them deliberately.
/// Contexts share `HostBufferPool::shared()` unless given their own pool. A context may also
/// hold a disk store (disk_store.hpp), the tier for `DiskOffload` and `PoolExhaustion::spill_to_disk`.

#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "actckpt/offload/copy_engine.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/offload/disk_store.hpp"
#include "actckpt/offload/host_buffer_pool.hpp"
#include "actckpt/offload/stash_stack.hpp"

namespace actckpt {

class OffloadContext {
 public:
  static std::shared_ptr<OffloadContext> create(std::shared_ptr<HostBufferPool> pool = HostBufferPool::shared(),
                                                std::shared_ptr<DiskStore> disk = nullptr) {
    ACTCKPT_CHECK(pool != nullptr, UsageError, "actckpt: OffloadContext::create needs a host buffer pool, got null");
    auto context = std::shared_ptr<OffloadContext>(new OffloadContext(std::move(pool)));
    context->disk_ = std::move(disk);
    return context;
  }

  /// The context in effect on this thread: the innermost `OffloadContextScope`, else the
  /// thread's own default context.
  static std::shared_ptr<OffloadContext> current() {
    auto& scoped = scoped_stack();
    if (!scoped.empty()) return scoped.back();
    thread_local std::shared_ptr<OffloadContext> thread_default = create();
    return thread_default;
  }

  HostBufferPool& pool() const { return *pool_; }
  const std::shared_ptr<HostBufferPool>& pool_ptr() const { return pool_; }
  CopyEngine& engine() { return engine_; }
  StashStack& stack() { return stack_; }
  /// The disk tier, or null. Stashes already on disk keep the store they went to.
  const std::shared_ptr<DiskStore>& disk_ptr() const { return disk_; }
  void set_disk_store(std::shared_ptr<DiskStore> disk) { disk_ = std::move(disk); }

  /// The offload figures since the last reset (see offload_telemetry.hpp): bytes and copies
  /// each way, copy time, stall, overlap. Synchronize the device first for a step's figures.
  OffloadTelemetry telemetry() { return engine_.telemetry().snapshot(); }
  /// The figures, then starts again from zero (once per step).
  OffloadTelemetry take_telemetry() { return engine_.telemetry().take(); }
  void reset_telemetry() { engine_.telemetry().reset(); }

  /// The offload-saved layer whose forward completed last in this context (saved_offload.hpp)
  /// becomes `layer`; returns the one before it. A layer's backward prefetches the saved
  /// tensors of the layer before it, so they are on their way back while it runs.
  std::weak_ptr<StackEntry> exchange_last_saved_layer(std::weak_ptr<StackEntry> layer) {
    std::lock_guard<std::mutex> lock(last_saved_layer_mutex_);
    std::swap(last_saved_layer_, layer);
    return layer;
  }

 private:
  friend class OffloadContextScope;
  explicit OffloadContext(std::shared_ptr<HostBufferPool> pool) : pool_(std::move(pool)) {}
  static std::vector<std::shared_ptr<OffloadContext>>& scoped_stack() {
    thread_local std::vector<std::shared_ptr<OffloadContext>> stack;
    return stack;
  }

  std::shared_ptr<HostBufferPool> pool_;
  std::shared_ptr<DiskStore> disk_;  // before the engine: the engine's worker finishes its I/O first
  CopyEngine engine_;
  StashStack stack_;
  std::mutex last_saved_layer_mutex_;
  std::weak_ptr<StackEntry> last_saved_layer_;
};

/// Makes `context` current on this thread for the guard's lifetime.
class OffloadContextScope {
 public:
  explicit OffloadContextScope(std::shared_ptr<OffloadContext> context) {
    ACTCKPT_CHECK(context != nullptr, UsageError, "actckpt: OffloadContextScope needs a context, got null");
    OffloadContext::scoped_stack().push_back(std::move(context));
  }
  ~OffloadContextScope() { OffloadContext::scoped_stack().pop_back(); }
  OffloadContextScope(const OffloadContextScope&) = delete;
  OffloadContextScope& operator=(const OffloadContextScope&) = delete;
};

}  // namespace actckpt
