#pragma once
/// \file tensor_stash.hpp
/// One stashed tensor: a checkpointed layer's input kept until its backward, on the device or
/// in a host buffer, according to `StashOptions`.
///
/// Lifetime rules (docs/pitfalls.md#p6, #p9, #p12):
///  - a device tensor being copied out stays referenced by the copy until the copy is done;
///  - a host buffer being read or written stays referenced by its copy (CPU) or fenced by the
///    copy's event (CUDA) before the pool hands it out again;
///  - destroying a stash at any point (consumed, an exception, a dropped graph) returns its
///    memory; nothing waits for a backward that will never come.
/// A stash holds its tensor detached: it never extends the autograd graph.
///
/// Every copy goes through the context's copy engine (synchronous stashes wait for theirs at
/// once), so offload telemetry counts them all: stashes report how long the compute waited.
/// With `StashOptions::verify_checksums` (or ACTCKPT_VERIFY_STASHES=1 in the environment) an
/// offloaded stash is checksummed when it leaves and verified when it is back: a corrupted
/// stash fails its backward with a message naming the layer, instead of training on bad data.
///
/// The disk tier (disk_store.hpp): a stash whose options say `StashTier::disk` (`DiskOffload`),
/// or whose host pool is full under `PoolExhaustion::spill_to_disk`, goes to the context's disk
/// store instead of a host buffer, through the same engine (`CopyEngine::run_io`), stack and
/// checksums; a failed read fails its backward naming the layer and the directory.

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/policy/stash_options.hpp"

namespace actckpt {

class TensorStash final : public StackEntry {
 public:
  /// Where the stash's data is now.
  enum class Location { device, host, disk };

  /// Stashes `tensor` for the layer `source` names. Sync stashes are on the host when this returns (or on
  /// the device after the documented pool fallback); async stashes start on the device and
  /// join the context's stack, which moves them out once N newer stashes exist.
  /// An expanded tensor (a dimension of stride 0, as `expand` or broadcasting make) is stashed
  /// as its unexpanded self and expanded again on restore: copying the expansion would move,
  /// and in backward allocate on the device, every repeated element of a storage that holds few.
  /// `ready` marks where the tensor's data was complete (`CopyEngine::mark_ready`, taken before
  /// the layer ran), so its copy need not wait for the layer's own work; null: now.
  TensorStash(const at::Tensor& tensor, const StashOptions& options, std::shared_ptr<OffloadContext> context,
              EventSource source, std::shared_ptr<const ReadyMark> ready = nullptr)
      : TensorStash(unexpanded(tensor), tensor.sizes(), options, std::move(context), std::move(source),
                    std::move(ready)) {}

  /// True when stash checksums are on for every stash: ACTCKPT_VERIFY_STASHES set to anything
  /// but "" or "0" (read once per process).
  static bool checksums_forced_by_environment() {
    static const bool on = [] {
      const char* v = std::getenv("ACTCKPT_VERIFY_STASHES");
      return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
    }();
    return on;
  }

 private:
  TensorStash(const at::Tensor& tensor, c10::IntArrayRef expanded_sizes, const StashOptions& options,
              std::shared_ptr<OffloadContext> context, EventSource source, std::shared_ptr<const ReadyMark> ready)
      : options_(options),
        context_(std::move(context)),
        label_(std::move(source.label)),
        layer_(source.layer),
        sizes_(tensor.sizes().vec()),
        strides_(tensor.strides().vec()),
        expanded_sizes_(tensor.sizes() == expanded_sizes ? std::vector<int64_t>{} : expanded_sizes.vec()),
        tensor_options_(tensor.options()),
        dense_(tensor.is_non_overlapping_and_dense() || strides_worth_keeping(tensor)),
        bytes_(static_cast<std::size_t>(tensor.numel()) * tensor.element_size()),
        misalignment_(tensor.numel() > 0 ? reinterpret_cast<std::uintptr_t>(tensor.data_ptr()) % kLine : 0),
        device_(tensor.detach()),
        ready_(std::move(ready)) {
    switch (options_.mode) {
      case StashMode::device:
        break;
      case StashMode::sync_host: {
        // A stash not worth moving (empty, or under min_offload_bytes) stays: moving it would
        // free next to nothing and hold a pool buffer.
        offloadable_ = worth_moving();
        if (offloadable_) take_checksum();
        std::lock_guard<std::mutex> lock(mutex_);
        if (offloadable_) move_to_host_locked(/*async=*/false);
        break;
      }
      case StashMode::async_host:
        // Only stashes worth moving join the stack, so the newest N counts tensors that move.
        offloadable_ = worth_moving();
        if (offloadable_) {
          take_checksum();
          context_->stack().push(this, options_.keep_on_device);
          on_stack_ = true;
        }
        break;
    }
  }

 public:
  ~TensorStash() override {
    if (on_stack_) context_->stack().remove(this);
    std::lock_guard<std::mutex> lock(mutex_);
    // A CPU copy still queued would hold the buffer and the source a little longer: wait for it,
    // so that when a step is abandoned (exception, dropped graph) its memory is back at once.
    // (CUDA copies need no wait: record_stream and the buffer's fence protect their memory.)
    for (const auto* ticket : {&offload_ticket_, &prefetch_ticket_}) {
      if (!*ticket || is_cuda_ticket(**ticket)) continue;
      try {
        (*ticket)->synchronize();
      } catch (...) {  // a failed copy: nothing to wait for, nothing to report from a destructor
      }
    }
    const bool had_memory = device_.defined() || host_ != nullptr || disk_ != nullptr || incoming_.defined();
    release_host_locked();
    device_.reset();
    incoming_.reset();
    if (had_memory) emit(EventKind::stash_released, label_, static_cast<std::int64_t>(bytes_), layer_);
  }

  TensorStash(const TensorStash&) = delete;
  TensorStash& operator=(const TensorStash&) = delete;

  /// The stashed tensor, usable on its device by the compute stream (values, sizes, dtype,
  /// device equal to the original; strides too when the original was dense). Consumes the
  /// stash. Starts the prefetch of the stash below this one on the stack.
  at::Tensor restore() {
    if (on_stack_) {
      context_->stack().take(this);  // prefetches the next one; must precede our own lock
      on_stack_ = false;
    }
    std::lock_guard<std::mutex> lock(mutex_);
    if (consumed_) throw StashConsumed(c10::str("actckpt: the stash of layer '", label_, "' was already restored once"), label_);
    consumed_ = true;
    at::Tensor result;
    if (location_ == Location::device) {
      result = std::move(device_);
    } else {
      // Sync stashes start their copy back now; async ones normally had it started by the
      // stash above them (StashStack::take), while that layer recomputed.
      begin_prefetch_locked();
      try {
        wait_for_compute(*prefetch_ticket_);
        // Never waits: the prefetch followed the offload (stream order on CUDA, the worker's
        // order on CPU). Only a failure of the offload is left to report.
        if (offload_ticket_) offload_ticket_->rethrow_error();
      } catch (const std::exception& e) {
        release_host_locked();
        incoming_.reset();
        throw OffloadFailed(c10::str("actckpt: moving the stashed input of layer '", label_, "' between device and ",
                                     tier_name(), " failed: ", e.what()),
                            label_);
      }
      result = std::move(incoming_);
      record_on_consuming_stream(result);
      if (checksum_) verify_checksum(result);
      emit(EventKind::restore_end, label_, static_cast<std::int64_t>(bytes_), layer_);
    }
    release_host_locked();
    if (!expanded_sizes_.empty()) result = result.expand(expanded_sizes_);
    return result;
  }

  void begin_offload() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (location_ != Location::device || !offloadable_ || consumed_) return;
    move_to_host_locked(/*async=*/true);
  }

  void begin_prefetch() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (location_ != Location::device && !consumed_) begin_prefetch_locked();
  }

  Location location() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return location_;
  }
  /// True while a prefetch has been started and the stash not yet restored.
  bool prefetching() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return prefetch_ticket_ != nullptr;
  }
  /// True when the stash holds its own copy, taken when it was made (a sync stash that moved to
  /// the host or to disk): in-place changes of the original since then cannot reach it. An async stash may
  /// still be copied after such a change, and a device stash is the original.
  bool holds_snapshot() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return options_.mode == StashMode::sync_host && location_ != Location::device && !consumed_;
  }
  /// Bytes of the stashed tensor's elements (what travels; a view moves only its own bytes, an
  /// expanded tensor only its unexpanded ones).
  std::size_t bytes() const { return bytes_; }
  const std::string& label() const { return label_; }

 private:
  bool worth_moving() const { return bytes_ > 0 && bytes_ >= options_.min_offload_bytes; }

  /// `t` with every expanded dimension (stride 0, size > 1) narrowed to size 1.
  static at::Tensor unexpanded(const at::Tensor& t) {
    at::Tensor compact = t;
    for (int64_t d = 0; d < t.dim(); ++d)
      if (t.stride(d) == 0 && t.size(d) > 1) compact = compact.narrow(d, 0, 1);
    return compact;
  }

  /// A view with gaps between its elements (a slice of a wider tensor) is restored with its own
  /// strides, gaps included, when they cost at most as many bytes again as its elements and no
  /// two elements share memory; other views are restored contiguous.
  static bool strides_worth_keeping(const at::Tensor& t) {
    if (t.numel() == 0) return false;
    std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dimensions of size > 1
    for (int64_t d = 0; d < t.dim(); ++d)
      if (t.size(d) > 1) dims.emplace_back(t.stride(d), t.size(d));
    std::sort(dims.begin(), dims.end());
    int64_t reach = 1;  // elements spanned by the dimensions so far
    for (const auto& [stride, size] : dims) {
      if (stride < reach) return false;  // overlapping (or stride 0)
      reach = stride * (size - 1) + reach;
    }
    return reach <= 2 * t.numel();
  }

  /// Where a restored copy goes: the original's sizes and strides (contiguous for a view whose
  /// strides are not kept, see above), with its data starting at the same offset within a
  /// 64-byte line as the original's did. BLAS kernels round differently for different row
  /// strides and alignments (MKL does, which the PyPI wheel's LibTorch uses on CPU: a sliced
  /// input restored contiguous gave recomputed gradients 1-2 ULP off), so the recompute must
  /// see the forward's input laid out as in the forward to be bitwise.
  at::Tensor empty_like_original() const {
    if (misalignment_ == 0) {
      return dense_ ? at::empty_strided(sizes_, strides_, tensor_options_) : at::empty(sizes_, tensor_options_);
    }
    std::vector<int64_t> strides = strides_;
    if (!dense_) {  // contiguous
      int64_t stride = 1;
      for (auto d = static_cast<int64_t>(sizes_.size()) - 1; d >= 0; --d) {
        strides[d] = stride;
        stride *= std::max<int64_t>(sizes_[d], 1);
      }
    }
    int64_t span = 1;  // elements from the first to the last one addressed (numel > 0 here)
    for (std::size_t d = 0; d < sizes_.size(); ++d) span += (sizes_[d] - 1) * strides[d];
    const auto element = static_cast<std::int64_t>(tensor_options_.dtype().itemsize());
    const auto line = static_cast<std::int64_t>(kLine);
    at::Tensor base = at::empty({span + line / element}, tensor_options_);
    const auto have = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(base.data_ptr()) % kLine);
    const std::int64_t shift = (static_cast<std::int64_t>(misalignment_) - have + line) % line;
    const std::int64_t offset = shift % element == 0 ? shift / element : 0;
    return base.as_strided(sizes_, strides, base.storage_offset() + offset);
  }

  /// Copies the device tensor into a pool buffer (asynchronously through the engine, or
  /// blocking) and drops the device reference. On pool exhaustion applies the fallback.
  void move_to_host_locked(bool async) {
    if (options_.tier == StashTier::disk) {
      move_to_disk_locked(async, "its policy writes to the disk tier (DiskOffload)");
      return;
    }
    const bool pinned = device_.is_cuda();
    host_ = context_->pool().try_acquire(bytes_, pinned);
    if (!host_) {
      if (options_.on_exhausted == PoolExhaustion::spill_to_disk) {
        move_to_disk_locked(async, "the host pool is full and it spills to disk (PoolExhaustion::spill_to_disk)");
        return;
      }
      if (options_.on_exhausted == PoolExhaustion::throw_error) {
        const auto limit = context_->pool().limit();
        const auto live = context_->pool().stats().live_bytes;
        throw HostPoolExhausted(c10::str("actckpt: host buffer pool exhausted: the ", bytes_, "-byte input of layer '",
                                         label_, "' does not fit under the pool limit of ", limit, " bytes (", live,
                                         " bytes in use). Raise it with HostBufferPool::set_limit, or choose "
                                         "PoolExhaustion::keep_on_device to keep such stashes on the device."),
                                label_, bytes_, limit, live);
      }
      offloadable_ = false;  // documented fallback: stays on the device
      return;
    }
    host_view_ = host_->view_as(sizes_, c10::typeMetaToScalarType(tensor_options_.dtype()), bytes_);
    const bool made_now = !device_.is_contiguous();
    at::Tensor source = made_now ? device_.contiguous() : device_;
    // A contiguous copy made here is written by the compute stream after the ready mark: its
    // copy must wait for the compute stream as it is now.
    if (made_now) ready_.reset();
    emit(EventKind::offload_begin, label_, static_cast<std::int64_t>(bytes_), layer_);
    std::string label = label_;
    const auto bytes = static_cast<std::int64_t>(bytes_);
    offload_ticket_ = context_->engine().copy(host_view_, std::move(source), host_,
                                              [label, bytes, layer = layer_] { emit(EventKind::offload_end, label, bytes, layer); },
                                              CopyOptions{CopyDirection::device_to_host, label_, ready_, nullptr});
    ready_.reset();
    fence_host_buffer(offload_ticket_);
    device_.reset();
    location_ = Location::host;
    if (!async) {
      // Synchronous: the stash is on the host when the constructor returns, and the compute
      // waited for all of it.
      try {
        wait_for_host(*offload_ticket_);
      } catch (const std::exception& e) {
        release_host_locked();
        throw OffloadFailed(c10::str("actckpt: moving the stashed input of layer '", label_,
                                     "' to host memory failed: ", e.what()),
                            label_);
      }
    }
  }

  /// Writes the device tensor into the disk store on the copy worker (waiting for it when
  /// synchronous) and drops the device reference. A context without a store, or a full store,
  /// throws here, in forward, naming the layer.
  void move_to_disk_locked(bool async, const char* why) {
    disk_store_ = context_->disk_ptr();
    if (!disk_store_) {
      throw UsageError(c10::str("actckpt: the input of layer '", label_, "' goes to disk (", why,
                                ") but its offload context has no disk store: make the context with "
                                "OffloadContext::create(pool, DiskStore::open(options)) or call set_disk_store"));
    }
    disk_ = disk_store_->acquire(bytes_, label_);
    const bool made_now = !device_.is_contiguous();
    at::Tensor source = made_now ? device_.contiguous() : device_;
    if (made_now) ready_.reset();
    // On CUDA the worker's side stream must wait for the source (the mark taken before the layer
    // ran, else now); on CPU the compute thread finished it before stashing.
    std::shared_ptr<const ReadyMark> ready = ready_ ? ready_ : context_->engine().mark_ready(source);
    emit(EventKind::offload_begin, label_, static_cast<std::int64_t>(bytes_), layer_);
    std::string label = label_;
    const auto bytes = static_cast<std::int64_t>(bytes_);
    offload_ticket_ = context_->engine().run_io(
        CopyDirection::device_to_host, bytes, label_,
        [store = disk_store_, extent = disk_, source = std::move(source), ready] { store->write(*extent, source, ready.get()); },
        disk_, [label, bytes, layer = layer_] { emit(EventKind::offload_end, label, bytes, layer); });
    ready_.reset();
    device_.reset();
    location_ = Location::disk;
    if (!async) {
      try {
        wait_for_host(*offload_ticket_);
      } catch (const std::exception& e) {
        release_host_locked();
        throw OffloadFailed(c10::str("actckpt: writing the stashed input of layer '", label_, "' to disk failed: ", e.what()),
                            label_);
      }
    }
  }

  const char* tier_name() const {
    return location_ == Location::disk ? "the disk store" : "host memory";
  }

  void begin_prefetch_locked() {
    if (prefetch_ticket_) return;
    incoming_ = empty_like_original();
#if ACTCKPT_WITH_CUDA
    if (incoming_.is_cuda()) incoming_stream_ = c10::cuda::getCurrentCUDAStream(incoming_.device().index());
#endif
    if (location_ == Location::disk) {
      if (options_.mode == StashMode::async_host) emit(EventKind::prefetch_begin, label_, static_cast<std::int64_t>(bytes_), layer_);
      // CUDA: the worker's side stream writes incoming_ only after the compute stream is done
      // with whatever that memory held before.
      std::shared_ptr<const ReadyMark> ready = context_->engine().mark_ready(incoming_);
      prefetch_ticket_ = context_->engine().run_io(
          CopyDirection::host_to_device, static_cast<std::int64_t>(bytes_), label_,
          [store = disk_store_, extent = disk_, dst = incoming_, ready]() mutable { store->read(*extent, dst, ready.get()); },
          disk_);
      return;
    }
    // Ahead of need only for async stashes; a sync stash's copy back is its restore.
    if (options_.mode == StashMode::async_host) emit(EventKind::prefetch_begin, label_, static_cast<std::int64_t>(bytes_), layer_);
    prefetch_ticket_ = context_->engine().copy(incoming_, host_view_, host_, {},
                                               CopyOptions{CopyDirection::host_to_device, label_, nullptr, offload_ticket_});
    fence_host_buffer(prefetch_ticket_);
  }

  /// The compute waits for `ticket`'s copy (CUDA: the compute stream, not the host), and the
  /// telemetry learns how long.
  void wait_for_compute(const CopyTicket& ticket) {
#if ACTCKPT_WITH_CUDA
    if (ticket.cuda_event()) {
      auto need = TelemetryRecorder::timing_event();
      need->record(c10::cuda::getCurrentCUDAStream(ticket.device_index()));
      context_->engine().telemetry().add_cuda_stall(std::move(need), ticket.cuda_event());
      ticket.make_compute_wait();
      return;
    }
#endif
    timed_host_wait(ticket);
  }

  /// The host waits for `ticket`'s copy (a synchronous offload). On CUDA the compute stream
  /// idles while the copy runs (the host queues nothing meanwhile): that is the stall.
  void wait_for_host(const CopyTicket& ticket) {
#if ACTCKPT_WITH_CUDA
    if (ticket.cuda_event()) {
      context_->engine().telemetry().add_cuda_stall(ticket.cuda_start_event(), ticket.cuda_event());
      ticket.synchronize();
      return;
    }
#endif
    timed_host_wait(ticket);
  }

  void timed_host_wait(const CopyTicket& ticket) {
    const auto begin = std::chrono::steady_clock::now();
    ticket.synchronize();
    context_->engine().telemetry().add_stall(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count(),
        /*disk=*/location_ == Location::disk);
  }

  /// A prefetched tensor was allocated on the stream current when the prefetch began; when the
  /// compute consumes it on another one, the allocator must not reuse its memory before that
  /// stream is done with it.
  void record_on_consuming_stream([[maybe_unused]] const at::Tensor& t) {
#if ACTCKPT_WITH_CUDA
    if (t.is_cuda() && incoming_stream_) {
      const auto now = c10::cuda::getCurrentCUDAStream(t.device().index());
      if (now != *incoming_stream_) t.record_stream(now);
    }
#endif
  }

  /// Two sums over the stash's bytes, one of them position-weighted (a swap or a shift of bytes
  /// changes it); computed on the tensor's own device.
  static std::pair<std::int64_t, std::int64_t> checksum_of(const at::Tensor& t) {
    c10::NoGradGuard no_grad;
    at::Tensor bytes = t.contiguous().reshape({-1}).view(at::kByte).to(at::kLong);
    if (bytes.numel() == 0) return {0, 0};
    at::Tensor weights = at::arange(bytes.numel(), bytes.options()).remainder(65521).add_(1);
    return {bytes.sum().item<std::int64_t>(), bytes.mul(weights).sum().item<std::int64_t>()};
  }

  void take_checksum() {
    if (!options_.verify_checksums && !checksums_forced_by_environment()) return;
    checksum_ = checksum_of(device_);
  }

  void verify_checksum(const at::Tensor& restored) const {
    const auto now = checksum_of(restored);
    if (now != *checksum_) {
      throw StashCorrupted(c10::str("actckpt: the stashed input of layer '", label_, "' (", bytes_,
                                    " bytes) came back from ", tier_name(), " different from what left the device "
                                    "(checksums ", checksum_->first, "/", checksum_->second, " then, ", now.first,
                                    "/", now.second, " now): something wrote to its host buffer or to the device "
                                    "tensor while a copy was in flight. Training on it would give wrong gradients."),
                           label_);
    }
  }

  static bool is_cuda_ticket([[maybe_unused]] const CopyTicket& ticket) {
#if ACTCKPT_WITH_CUDA
    return ticket.cuda_event() != nullptr;
#else
    return false;
#endif
  }

  /// CUDA: the pool may hand the buffer out again only after this copy's event completed.
  /// A wait there is a stall: the host buffer pool had to hand out a buffer whose copy was not
  /// done; the telemetry counts it.
  void fence_host_buffer([[maybe_unused]] const std::shared_ptr<CopyTicket>& ticket) {
#if ACTCKPT_WITH_CUDA
    if (ticket->cuda_event()) {
      auto event = ticket->cuda_event();
      std::weak_ptr<TelemetryRecorder> telemetry = context_->engine().telemetry_ptr();
      host_->set_reuse_fence([event, telemetry] {
        if (event->query()) return;
        const auto begin = std::chrono::steady_clock::now();
        event->synchronize();
        if (auto t = telemetry.lock())
          t->add_stall(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin).count());
      });
    }
#endif
  }

  void release_host_locked() {
    host_view_.reset();
    host_.reset();
    disk_.reset();  // after the tickets' jobs, which hold it too, the extent returns to the store
    offload_ticket_.reset();
    prefetch_ticket_.reset();
  }

  const StashOptions options_;
  const std::shared_ptr<OffloadContext> context_;
  const std::string label_;
  const void* const layer_;  // the layer's identity in events (EventSource::layer)
  const std::vector<int64_t> sizes_;
  const std::vector<int64_t> strides_;
  const std::vector<int64_t> expanded_sizes_;  // the sizes to expand to on restore; empty: none
  const at::TensorOptions tensor_options_;
  const bool dense_;  // restored with the original strides (dense, or a view whose strides are kept)
  const std::size_t bytes_;
  static constexpr std::size_t kLine = 64;
  const std::size_t misalignment_;  // the original's data address modulo kLine

  mutable std::mutex mutex_;
  Location location_ = Location::device;
  bool offloadable_ = false;
  bool on_stack_ = false;
  bool consumed_ = false;
  at::Tensor device_;                    // the data while on the device
  std::shared_ptr<const ReadyMark> ready_;  // where device_'s data was complete (CUDA)
  std::optional<std::pair<std::int64_t, std::int64_t>> checksum_;  // taken when it left the device
  std::shared_ptr<HostBuffer> host_;     // the data while on the host
  at::Tensor host_view_;                 // a CPU tensor over host_
  std::shared_ptr<DiskStore> disk_store_;  // the store the data went to (the context's may change)
  std::shared_ptr<DiskExtent> disk_;     // the data while on disk
  at::Tensor incoming_;                  // prefetch destination on the device
#if ACTCKPT_WITH_CUDA
  std::optional<c10::cuda::CUDAStream> incoming_stream_;  // the stream current when incoming_ was allocated
#endif
  std::shared_ptr<CopyTicket> offload_ticket_;
  std::shared_ptr<CopyTicket> prefetch_ticket_;
};

}  // namespace actckpt
