#pragma once
/// \file copy_engine.hpp
/// Runs stash copies off the compute path, and says when each is done (docs/pitfalls.md#p9).
///
/// CUDA tensors: the copy runs on a side stream of the device. Before it starts, the side
/// stream waits for an event recorded on the compute stream (the source is written, the
/// destination's memory is no longer used by earlier kernels); the device-side tensor is
/// recorded on the side stream so the caching allocator does not hand its memory to anyone
/// before the copy finishes; an event recorded after the copy tells the compute stream (or the
/// host) when the data is there.
///
/// CPU tensors: a worker thread stands in for the copy stream, so the same pipeline (queue
/// order, tickets, lifetime of the source) runs and is tested on machines without a GPU. The
/// worker runs under the submitting thread's LibTorch thread-local state, so that memory it
/// releases is reported to the same memory meter.

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

#include "actckpt/config.hpp"

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

 private:
  friend class CopyEngine;
  void rethrow_error() const {
    std::lock_guard<std::mutex> lock(mutex_);
    if (error_) std::rethrow_exception(error_);
  }
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
  c10::DeviceIndex device_index_ = 0;

 public:
  /// The CUDA event recorded after the copy (null for CPU copies).
  const std::shared_ptr<at::cuda::CUDAEvent>& cuda_event() const { return event_; }
#endif
};

/// Submits copies. One engine per `OffloadContext`; thread-safe.
class CopyEngine {
 public:
  CopyEngine() = default;
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
  std::shared_ptr<CopyTicket> copy(at::Tensor dst, at::Tensor src, std::shared_ptr<void> keep_alive = {},
                                   std::function<void()> on_done = {}) {
    auto ticket = std::make_shared<CopyTicket>();
#if ACTCKPT_WITH_CUDA
    if (src.is_cuda() || dst.is_cuda()) {
      submit_cuda(*ticket, dst, src);
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
                           at::ThreadLocalState()});
      if (!worker_.joinable()) worker_ = std::thread([this] { run_worker(); });
    }
    cv_.notify_all();
    return ticket;
  }

  /// Test hook: called on the worker before each CPU copy; an exception it throws fails that
  /// copy as a broken copy path would (the error reaches whoever waits on the ticket).
  void set_fault_injector(std::function<void()> injector) {
    std::lock_guard<std::mutex> lock(mutex_);
    fault_injector_ = std::move(injector);
  }

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
      {
        std::unique_lock<std::mutex> lock(mutex_);
        cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping and drained
        job.emplace(std::move(queue_.front()));
        queue_.pop_front();
        busy_ = true;
        injector = fault_injector_;
      }
      std::exception_ptr error;
      {
        at::ThreadLocalStateGuard tls(job->state);
        c10::NoGradGuard no_grad;
        try {
          if (injector) injector();
          cpu_copy(job->dst, job->src);
        } catch (...) {
          error = std::current_exception();
        }
        // Drop the references under the submitter's thread-local state: the memory meter of
        // that thread sees the source leave.
        job->src.reset();
        job->dst.reset();
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
  c10::cuda::CUDAStream side_stream(c10::DeviceIndex index) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = side_streams_.find(index);
    if (it == side_streams_.end())
      it = side_streams_.emplace(index, c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)).first;
    return it->second;
  }

  void submit_cuda(CopyTicket& ticket, at::Tensor& dst, at::Tensor& src) {
    const c10::DeviceIndex index = src.is_cuda() ? src.device().index() : dst.device().index();
    c10::cuda::CUDAGuard device_guard(index);
    const auto compute = c10::cuda::getCurrentCUDAStream(index);
    const auto side = side_stream(index);
    at::cuda::CUDAEvent inputs_ready;
    inputs_ready.record(compute);
    inputs_ready.block(side);
    {
      c10::cuda::CUDAStreamGuard on_side(side);
      c10::NoGradGuard no_grad;
      dst.copy_(src, /*non_blocking=*/true);
    }
    if (src.is_cuda()) src.record_stream(side);
    if (dst.is_cuda()) dst.record_stream(side);
    ticket.event_ = std::make_shared<at::cuda::CUDAEvent>();
    ticket.event_->record(side);
    ticket.device_index_ = index;
  }

  std::map<c10::DeviceIndex, c10::cuda::CUDAStream> side_streams_;
#endif

  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<Job> queue_;
  bool stopping_ = false;
  bool busy_ = false;
  std::function<void()> fault_injector_;
  std::thread worker_;
};

}  // namespace actckpt
