#pragma once
/// \file copy_engine.hpp
/// Runs stash copies off the compute path, and says when each is done (docs/pitfalls.md#p9).
///
/// CUDA tensors: the copy runs on a side stream of the device, one per direction, so that at the
/// forward/backward turn a prefetch never queues behind pending offloads. Before it starts, the
/// side stream waits for an event on the compute stream: the one the caller recorded when the
/// source was ready (`mark_ready`, taken before the layer that follows was queued), else one
/// recorded at submission (the destination's memory is no longer used by earlier kernels); and
/// for the event of a copy it must follow (`CopyOptions::after`: a prefetch after its offload).
/// The device-side tensor is recorded on the side stream so the caching allocator does not hand
/// its memory to anyone before the copy finishes; a timing event recorded after the copy tells
/// the compute stream (or the host) when the data is there, and times the copy for telemetry.
///
/// CPU tensors: a worker thread stands in for the copy stream, so the same pipeline (queue
/// order, tickets, lifetime of the source) runs and is tested on machines without a GPU. The
/// worker runs under the submitting thread's LibTorch thread-local state, so that memory it
/// releases is reported to the same memory meter. One worker serves both directions, in
/// submission order: a prefetch never overtakes the offload of the same stash.

#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/core/GradMode.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#include "actckpt/base/config.hpp"
#include "actckpt/offload/offload_telemetry.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace actckpt {

/// One copy in flight. Shared by the submitter and the engine.
class CopyTicket {
 public:
  /// True once the copy has finished (successfully or not).
  bool done() const {
#if ACTCKPT_WITH_CUDA
    if (event_) return event_->query();
#endif
    std::lock_guard<std::mutex> lock(mutex_);
    return finished_;
  }

  /// Blocks the calling thread until the copy has finished; rethrows a copy failure.
  void synchronize() const {
#if ACTCKPT_WITH_CUDA
    if (event_) {
      event_->synchronize();
      rethrow_error();
      return;
    }
#endif
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return finished_; });
    if (error_) std::rethrow_exception(error_);
  }

  /// Makes work submitted after this call on the current compute stream wait for the copy
  /// (without blocking the host on CUDA). On CPU the compute "stream" is the calling thread.
  void make_compute_wait() const {
#if ACTCKPT_WITH_CUDA
    if (event_) {
      event_->block(c10::cuda::getCurrentCUDAStream(device_index_));
      rethrow_error();
      return;
    }
#endif
    synchronize();
  }

  /// Rethrows the copy's failure if it is known to have failed; never waits.
  void rethrow_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) std::rethrow_exception(error_);
  }

 private:
  friend class CopyEngine;
  void finish(std::exception_ptr error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      finished_ = true;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }

  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  bool finished_ = false;
  std::exception_ptr error_;
#if ACTCKPT_WITH_CUDA
  std::shared_ptr<at::cuda::CUDAEvent> event_;
  std::shared_ptr<at::cuda::CUDAEvent> start_event_;
  c10::DeviceIndex device_index_ = 0;

 public:
  /// The CUDA timing event recorded after the copy (null for CPU copies).
  const std::shared_ptr<at::cuda::CUDAEvent>& cuda_event() const { return event_; }
  /// The CUDA timing event recorded on the copy stream just before the copy started.
  const std::shared_ptr<at::cuda::CUDAEvent>& cuda_start_event() const { return start_event_; }
  c10::DeviceIndex device_index() const { return device_index_; }
#endif
};

/// "The source of a copy is ready here": on CUDA an event on the compute stream, recorded by
/// `CopyEngine::mark_ready` when a stash's source was complete (before the next layer's work was
/// queued), so its copy need not wait for that work. Empty on CPU, where the compute thread
/// finished the source before it could stash it.
struct ReadyMark {
#if ACTCKPT_WITH_CUDA
  std::shared_ptr<at::cuda::CUDAEvent> event;
  c10::DeviceIndex device_index = 0;
#endif
};

/// How one copy is done.
struct CopyOptions {
  CopyDirection direction = CopyDirection::device_to_host;
  /// The layer whose stash moves (telemetry, traces).
  std::string label;
  /// The source is complete at this mark (null: at submission).
  std::shared_ptr<const ReadyMark> ready;
  /// A copy this one must follow (a prefetch after the offload of the same stash). CUDA: the
  /// copy stream waits for its event, the host does not; CPU: the worker's order guarantees it.
  std::shared_ptr<const CopyTicket> after;
};

/// Submits copies. One engine per `OffloadContext`; thread-safe.
class CopyEngine {
 public:
  CopyEngine() : telemetry_(std::make_shared<TelemetryRecorder>()) {}
  CopyEngine(const CopyEngine&) = delete;
  CopyEngine& operator=(const CopyEngine&) = delete;

  /// Finishes every queued copy (nobody is left waiting on a ticket), then stops the worker.
  ~CopyEngine() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
  }

  /// `dst.copy_(src)` off the compute path. `src` and `dst` stay referenced until the copy is
  /// done, then are dropped (so a device source is released only after its copy finished);
  /// `on_done` runs after that, on the worker (CPU; only if the copy succeeded) or right after
  /// submission (CUDA, where completion is observed through the ticket's event). If it throws,
  /// the copy counts as failed: the error, naming the callback, is rethrown to whoever waits on
  /// the ticket (an exception on the worker thread would otherwise end the process).
  /// `keep_alive` (the host buffer, say) is held as long as the tensors.
  /// `options` say which way it goes (telemetry), when its source is ready and what it follows.
  std::shared_ptr<CopyTicket> copy(at::Tensor dst, at::Tensor src, std::shared_ptr<void> keep_alive = {},
                                   std::function<void()> on_done = {}, CopyOptions options = {}) {
    auto ticket = std::make_shared<CopyTicket>();
#if ACTCKPT_WITH_CUDA
    if (src.is_cuda() || dst.is_cuda()) {
      submit_cuda(*ticket, dst, src, options);
      src.reset();
      dst.reset();
      // The copy is in flight and fenced by the ticket's event: a callback that throws must not
      // unwind past the ticket (its owner would lose the fence), so the error travels with it.
      ticket->finish(run_on_done(on_done));
      return ticket;
    }
#endif
    {
      std::lock_guard<std::mutex> lock(mutex_);
      TORCH_CHECK(!stopping_, "actckpt: copy submitted to a copy engine that is shutting down");
      queue_.push_back(Job{std::move(dst), std::move(src), std::move(keep_alive), ticket, std::move(on_done),
                           at::ThreadLocalState(), options.direction, std::move(options.label), {}, 0});
      if (!worker_.joinable()) worker_ = std::thread([this] { run_worker(); });
    }
    cv_.notify_all();
    return ticket;
  }

  /// Runs `io` (a disk tier read or write of `bytes` for layer `label`: `device_to_host` writes,
  /// `host_to_device` reads) on the worker, in order with the copies, for CPU and CUDA tensors
  /// alike; timed into the telemetry's disk figures. `io` and `keep_alive` are dropped once it
  /// has run (under the submitter's thread-local state, as a copy's tensors are); `on_done` runs
  /// after, only on success. A throw from `io` fails the ticket.
  std::shared_ptr<CopyTicket> run_io(CopyDirection direction, std::int64_t bytes, std::string label,
                                     std::function<void()> io, std::shared_ptr<void> keep_alive = {},
                                     std::function<void()> on_done = {}) {
    auto ticket = std::make_shared<CopyTicket>();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      TORCH_CHECK(!stopping_, "actckpt: disk I/O submitted to a copy engine that is shutting down");
      queue_.push_back(Job{at::Tensor(), at::Tensor(), std::move(keep_alive), ticket, std::move(on_done),
                           at::ThreadLocalState(), direction, std::move(label), std::move(io), bytes});
      if (!worker_.joinable()) worker_ = std::thread([this] { run_worker(); });
    }
    cv_.notify_all();
    return ticket;
  }

  /// Marks the moment `source`'s data is complete on its device (see `ReadyMark`); null for
  /// CPU tensors, whose data is complete when the compute thread hands them over.
  std::shared_ptr<const ReadyMark> mark_ready([[maybe_unused]] const at::Tensor& source) const {
#if ACTCKPT_WITH_CUDA
    if (source.is_cuda()) {
      auto mark = std::make_shared<ReadyMark>();
      mark->device_index = source.device().index();
      mark->event = std::make_shared<at::cuda::CUDAEvent>();
      mark->event->record(c10::cuda::getCurrentCUDAStream(mark->device_index));
      return mark;
    }
#endif
    return nullptr;
  }

  /// Test hook: called on the worker before each CPU copy; an exception it throws fails that
  /// copy as a broken copy path would (the error reaches whoever waits on the ticket).
  void set_fault_injector(std::function<void()> injector) {
    std::lock_guard<std::mutex> lock(mutex_);
    fault_injector_ = std::move(injector);
  }

  /// Test hook: called on the worker after each CPU copy with its direction and destination
  /// (a test corrupts a host buffer here to check that stash checksums catch it).
  void set_after_copy_hook(std::function<void(CopyDirection, at::Tensor&)> hook) {
    std::lock_guard<std::mutex> lock(mutex_);
    after_copy_hook_ = std::move(hook);
  }

  /// The telemetry of this engine's copies (and of the waits its users report).
  TelemetryRecorder& telemetry() { return *telemetry_; }
  const std::shared_ptr<TelemetryRecorder>& telemetry_ptr() const { return telemetry_; }

  /// Copies queued and not yet finished on the CPU worker.
  std::size_t pending() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return queue_.size() + (busy_ ? 1 : 0);
  }

 private:
  struct Job {
    at::Tensor dst;
    at::Tensor src;
    std::shared_ptr<void> keep_alive;
    std::shared_ptr<CopyTicket> ticket;
    std::function<void()> on_done;
    at::ThreadLocalState state;
    CopyDirection direction;
    std::string label;
    std::function<void()> io;  // a disk tier job (run_io) instead of a copy
    std::int64_t io_bytes = 0;
  };

  /// The worker's copy. It stands in for a copy engine, so it runs on this one thread: a plain
  /// memcpy where the layouts allow. `Tensor::copy_` splits a large copy over an OpenMP team of
  /// the worker's own (the worker is outside the compute threads' parallel region), whose threads
  /// then compete with the compute team for the cores. Measured on 2 shared cores with
  /// OMP_NUM_THREADS=2 (actckpt_bench CPU default, 4 A/B rounds): async/sync step time 0.74-1.46
  /// with copy_, 0.62-0.97 with memcpy.
  static void cpu_copy(at::Tensor& dst, const at::Tensor& src) {
    const bool plain = dst.is_cpu() && src.is_cpu() && dst.dtype() == src.dtype() && dst.numel() == src.numel() &&
                       dst.is_contiguous() && src.is_contiguous() && !dst.is_conj() && !src.is_conj() &&
                       !dst.is_neg() && !src.is_neg();
    if (!plain) {
      dst.copy_(src);
    } else if (src.nbytes() > 0) {
      std::memcpy(dst.data_ptr(), src.data_ptr(), src.nbytes());
    }
  }

  void run_worker() {
    for (;;) {
      std::optional<Job> job;
      std::function<void()> injector;
      std::function<void(CopyDirection, at::Tensor&)> after_copy;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        job.emplace(std::move(queue_.front()));
        queue_.pop_front();
        busy_ = true;
        injector = fault_injector_;
        after_copy = after_copy_hook_;
      }
      std::exception_ptr error;
      {
        at::ThreadLocalStateGuard tls(job->state);
        c10::NoGradGuard no_grad;
        try {
          if (injector) injector();
          const auto begin = TelemetryRecorder::Clock::now();
          if (job->io) {
            job->io();
            telemetry_->add_disk(job->direction, job->io_bytes, job->label, begin, TelemetryRecorder::Clock::now());
          } else {
            cpu_copy(job->dst, job->src);
            telemetry_->add_copy(job->direction, static_cast<std::int64_t>(job->src.nbytes()), job->label, begin,
                                 TelemetryRecorder::Clock::now());
            if (after_copy) after_copy(job->direction, job->dst);
          }
        } catch (...) {
          error = std::current_exception();
        }
        // Drop the references under the submitter's thread-local state: the memory meter of
        // that thread sees the source leave.
        job->src.reset();
        job->dst.reset();
        job->io = nullptr;  // the tensors it holds
        job->keep_alive.reset();
      }
      // Before the ticket finishes: whoever waits on it sees the callback's effects (an
      // observer's offload_end comes before the restore) and its failure.
      if (!error) error = run_on_done(job->on_done);
      {
        // Not pending any more before anyone waiting on the ticket wakes up: pending() == 0
        // must hold once every ticket has been waited for.
        std::lock_guard<std::mutex> lock(mutex_);
        busy_ = false;
      }
      job->ticket->finish(error);
    }
  }

  /// Runs a copy's completion callback; what it throws is returned, wrapped so that the
  /// message says where it came from.
  static std::exception_ptr run_on_done(const std::function<void()>& on_done) noexcept {
    if (!on_done) return nullptr;
    try {
      on_done();
      return nullptr;
    } catch (const std::exception& e) {
      return std::make_exception_ptr(
          std::runtime_error(std::string("actckpt: the completion callback of a stash copy threw: ") + e.what()));
    } catch (...) {
      return std::current_exception();
    }
  }

#if ACTCKPT_WITH_CUDA
  /// The copy stream of one device and direction, made on first use.
  c10::cuda::CUDAStream side_stream(c10::DeviceIndex index, CopyDirection direction) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto key = std::make_pair(index, direction);
    auto it = side_streams_.find(key);
    if (it == side_streams_.end())
      it = side_streams_.emplace(key, c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)).first;
    return it->second;
  }

  void submit_cuda(CopyTicket& ticket, at::Tensor& dst, at::Tensor& src, const CopyOptions& options) {
    const c10::DeviceIndex index = src.is_cuda() ? src.device().index() : dst.device().index();
    c10::cuda::CUDAGuard device_guard(index);
    const auto compute = c10::cuda::getCurrentCUDAStream(index);
    const auto side = side_stream(index, options.direction);
    if (options.ready && options.ready->event && options.ready->device_index == index && !dst.is_cuda()) {
      // An offload: the source was complete at the mark; the host destination needs no fence
      // on the compute stream.
      options.ready->event->block(side);
    } else {
      at::cuda::CUDAEvent inputs_ready;
      inputs_ready.record(compute);
      inputs_ready.block(side);
    }
    if (options.after && options.after->cuda_event()) options.after->cuda_event()->block(side);
    ticket.start_event_ = TelemetryRecorder::timing_event();
    ticket.start_event_->record(side);
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      c10::NoGradGuard no_grad;
      dst.copy_(src, /*non_blocking=*/true);
    }
    if (src.is_cuda()) src.record_stream(side);
    if (dst.is_cuda()) dst.record_stream(side);
    ticket.event_ = TelemetryRecorder::timing_event();
    ticket.event_->record(side);
    ticket.device_index_ = index;
    telemetry_->add_cuda_copy(options.direction, static_cast<std::int64_t>(src.nbytes()), options.label, index,
                              ticket.start_event_, ticket.event_);
  }

  std::map<std::pair<c10::DeviceIndex, CopyDirection>, c10::cuda::CUDAStream> side_streams_;
#endif

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  bool busy_ = false;
  std::function<void()> fault_injector_;
  std::function<void(CopyDirection, at::Tensor&)> after_copy_hook_;
  std::shared_ptr<TelemetryRecorder> telemetry_;
  std::thread worker_;
};

}  // namespace actckpt
