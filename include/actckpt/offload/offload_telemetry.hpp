#pragma once
/// \file offload_telemetry.hpp
/// What the offload pipeline of one `OffloadContext` did, the question every user of async
/// offload asks: did the copies hide behind compute, or did the step wait for them?
///  - bytes moved device-to-host (offloads) and host-to-device (restores), and the copy counts;
///  - copy time: CUDA events on the copy streams; on CPU, the copy worker's own clock;
///  - stall time: how long the compute waited for a copy: a restore whose copy was not done,
///    a synchronous offload, a host buffer whose previous copy had not finished;
///  - overlap: the share of copy time hidden behind compute, 1 - stall / copy time.
/// \code
///   auto context = actckpt::OffloadContext::current();
///   context->reset_telemetry();          // start of a step
///   ... forward, backward ...
///   auto t = context->take_telemetry();  // t.stall_ms, t.overlap(), t.d2h_gbps(), ...
/// \endcode
/// On CUDA the timings come from events, read without waiting for them: a copy whose events have
/// not completed yet is counted by a later read (`pending_copies` says how many are waiting), so
/// synchronize the device before reading a step's figures.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actckpt/base/config.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace actckpt {

/// Which way a stash copy goes.
enum class CopyDirection {
  device_to_host,  ///< an offload
  host_to_device,  ///< a restore (prefetched or not)
};

constexpr std::string_view to_string(CopyDirection d) noexcept {
  return d == CopyDirection::device_to_host ? "device_to_host" : "host_to_device";
}

/// One copy, placed in time (for traces). CUDA copies are placed from their events, aligned at
/// the moment telemetry was last reset (or, before any reset, at the context's first copy).
struct CopySpan {
  CopyDirection direction = CopyDirection::device_to_host;
  std::int64_t bytes = 0;
  std::string label;  ///< the layer whose stash moved
  std::chrono::steady_clock::time_point begin, end;
  bool disk = false;  ///< a disk write (device_to_host) or read (host_to_device), not a host copy
};

/// The figures, summed since the last reset.
struct OffloadTelemetry {
  std::uint64_t d2h_copies = 0, h2d_copies = 0;
  std::int64_t d2h_bytes = 0, h2d_bytes = 0;
  double d2h_ms = 0, h2d_ms = 0;  ///< time the copies themselves took
  /// The disk tier (disk_store.hpp): bytes written and read back, and the time the I/O took.
  /// Not counted in d2h/h2d above; counted in `copy_ms()`, `stall_ms` and `overlap()`.
  std::uint64_t disk_writes = 0, disk_reads = 0;
  std::int64_t disk_write_bytes = 0, disk_read_bytes = 0;
  double disk_write_ms = 0, disk_read_ms = 0;
  double disk_stall_ms = 0;       ///< the part of `stall_ms` spent waiting for disk I/O
  double stall_ms = 0;            ///< time the compute waited for copies
  std::uint64_t stalls = 0;       ///< waits longer than zero
  std::uint64_t pending_copies = 0;  ///< CUDA copies not finished at the read: not in the figures yet
  std::vector<CopySpan> spans;    ///< the copies (at most `TelemetryRecorder::max_spans`)

  double copy_ms() const { return d2h_ms + h2d_ms + disk_ms(); }
  std::uint64_t copies() const { return d2h_copies + h2d_copies + disk_writes + disk_reads; }
  double disk_ms() const { return disk_write_ms + disk_read_ms; }
  /// Share of disk I/O time hidden behind compute, in [0, 1]; 1 when nothing went to disk.
  double disk_overlap() const {
    if (disk_ms() <= 0) return 1.0;
    return std::clamp(1.0 - disk_stall_ms / disk_ms(), 0.0, 1.0);
  }
  double disk_write_gbps() const { return disk_write_ms > 0 ? static_cast<double>(disk_write_bytes) / (disk_write_ms * 1e6) : 0.0; }
  double disk_read_gbps() const { return disk_read_ms > 0 ? static_cast<double>(disk_read_bytes) / (disk_read_ms * 1e6) : 0.0; }
  /// Share of copy time hidden behind compute, in [0, 1]; 1 when nothing was copied.
  double overlap() const {
    if (copy_ms() <= 0) return 1.0;
    return std::clamp(1.0 - stall_ms / copy_ms(), 0.0, 1.0);
  }
  /// Effective bandwidth of the copies each way, GB/s (1e9 bytes); 0 when none.
  double d2h_gbps() const { return d2h_ms > 0 ? static_cast<double>(d2h_bytes) / (d2h_ms * 1e6) : 0.0; }
  double h2d_gbps() const { return h2d_ms > 0 ? static_cast<double>(h2d_bytes) / (h2d_ms * 1e6) : 0.0; }
};

/// Collects the figures of one context; thread-safe (the compute thread, autograd threads and the
/// copy worker all report here).
class TelemetryRecorder {
 public:
  /// Spans kept per reset; a long run without resets keeps summing but stops placing copies.
  static constexpr std::size_t max_spans = 4096;

  using Clock = std::chrono::steady_clock;

  /// A copy timed on the host (CPU worker, or a blocking copy).
  void add_copy(CopyDirection direction, std::int64_t bytes, std::string_view label, Clock::time_point begin,
                Clock::time_point end) {
    std::lock_guard<std::mutex> lock(mutex_);
    add_copy_locked(direction, bytes, label, begin, end);
  }

  /// The compute waited `ms` (measured on the host) for a copy (`disk`: for disk I/O).
  void add_stall(double ms, bool disk = false) {
    if (ms <= 0) return;
    std::lock_guard<std::mutex> lock(mutex_);
    totals_.stall_ms += ms;
    totals_.stalls += 1;
    if (disk) totals_.disk_stall_ms += ms;
  }

  /// A disk write (`device_to_host`) or read (`host_to_device`) of the disk tier, timed on the
  /// copy worker.
  void add_disk(CopyDirection direction, std::int64_t bytes, std::string_view label, Clock::time_point begin,
                Clock::time_point end) {
    const double ms = std::chrono::duration<double, std::milli>(end - begin).count();
    std::lock_guard<std::mutex> lock(mutex_);
    if (direction == CopyDirection::device_to_host) {
      totals_.disk_writes += 1;
      totals_.disk_write_bytes += bytes;
      totals_.disk_write_ms += ms;
    } else {
      totals_.disk_reads += 1;
      totals_.disk_read_bytes += bytes;
      totals_.disk_read_ms += ms;
    }
    if (totals_.spans.size() < max_spans)
      totals_.spans.push_back(CopySpan{direction, bytes, std::string(label), begin, end, /*disk=*/true});
  }

  /// Starts the figures again from zero.
  void reset() {
    std::lock_guard<std::mutex> lock(mutex_);
    totals_ = OffloadTelemetry{};
#if ACTCKPT_WITH_CUDA
    pending_.clear();
    pending_stalls_.clear();
    realign_references_locked();
#endif
  }

  /// The figures now (CUDA copies whose events completed are counted first).
  OffloadTelemetry snapshot() {
    std::lock_guard<std::mutex> lock(mutex_);
    resolve_locked();
    return totals_;
  }

  /// The figures now, then starts again from zero.
  OffloadTelemetry take() {
    std::lock_guard<std::mutex> lock(mutex_);
    resolve_locked();
    OffloadTelemetry out = std::move(totals_);
    totals_ = OffloadTelemetry{};
#if ACTCKPT_WITH_CUDA
    totals_.pending_copies = pending_.size();
    realign_references_locked();
#endif
    return out;
  }

#if ACTCKPT_WITH_CUDA
  using EventPtr = std::shared_ptr<at::cuda::CUDAEvent>;

  /// An event that can be timed against others (LibTorch's default CUDA events cannot).
  static EventPtr timing_event() { return std::make_shared<at::cuda::CUDAEvent>(cudaEventDefault); }

  /// A copy on a CUDA stream between `start` and `end` (timing events); the compute's waits for
  /// it are reported separately (`add_cuda_stall`).
  void add_cuda_copy(CopyDirection direction, std::int64_t bytes, std::string_view label, c10::DeviceIndex device,
                     EventPtr start, EventPtr end) {
    std::lock_guard<std::mutex> lock(mutex_);
    ensure_reference_locked(device);
    pending_.push_back(PendingCopy{direction, bytes, std::string(label), device, std::move(start), std::move(end)});
  }

  /// The compute stream waited from `from` until `until` (both timing events).
  void add_cuda_stall(EventPtr from, EventPtr until) {
    std::lock_guard<std::mutex> lock(mutex_);
    pending_stalls_.emplace_back(std::move(from), std::move(until));
  }
#endif

 private:
  void add_copy_locked(CopyDirection direction, std::int64_t bytes, std::string_view label, Clock::time_point begin,
                       Clock::time_point end) {
    const double ms = std::chrono::duration<double, std::milli>(end - begin).count();
    if (direction == CopyDirection::device_to_host) {
      totals_.d2h_copies += 1;
      totals_.d2h_bytes += bytes;
      totals_.d2h_ms += ms;
    } else {
      totals_.h2d_copies += 1;
      totals_.h2d_bytes += bytes;
      totals_.h2d_ms += ms;
    }
    if (totals_.spans.size() < max_spans) totals_.spans.push_back(CopySpan{direction, bytes, std::string(label), begin, end});
  }

#if ACTCKPT_WITH_CUDA
  struct PendingCopy {
    CopyDirection direction;
    std::int64_t bytes;
    std::string label;
    c10::DeviceIndex device;
    EventPtr start, end;
  };
  /// Where device time meets host time: an event on the device's current stream and the host
  /// clock when it was recorded (exact when the device was idle then: the bench synchronizes
  /// before it resets).
  struct Reference {
    EventPtr event;
    Clock::time_point host;
  };

  void ensure_reference_locked(c10::DeviceIndex device) {
    if (references_.count(device) != 0) return;
    record_reference_locked(device);
  }
  void record_reference_locked(c10::DeviceIndex device) {
    Reference ref{timing_event(), Clock::now()};
    ref.event->record(c10::cuda::getCurrentCUDAStream(device));
    references_[device] = std::move(ref);
  }
  void realign_references_locked() {
    for (auto& [device, ref] : references_) record_reference_locked(device);
  }

  static double elapsed_ms(const EventPtr& from, const EventPtr& to) {
    return static_cast<double>(from->elapsed_time(*to));
  }

  /// Counts the CUDA copies and waits whose events have completed; leaves the others pending.
  void resolve_locked() {
    std::vector<PendingCopy> still;
    for (auto& p : pending_) {
      if (!p.end->query() || !p.start->query()) {
        still.push_back(std::move(p));
        continue;
      }
      const double ms = elapsed_ms(p.start, p.end);
      auto begin = Clock::now();
      auto ref = references_.find(p.device);
      if (ref != references_.end() && ref->second.event->query()) {
        const double offset = elapsed_ms(ref->second.event, p.start);
        begin = ref->second.host + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(offset));
      }
      add_copy_locked(p.direction, p.bytes, p.label, begin,
                      begin + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(ms)));
    }
    pending_ = std::move(still);
    std::vector<std::pair<EventPtr, EventPtr>> waiting;
    for (auto& s : pending_stalls_) {
      if (!s.first->query() || !s.second->query()) {
        waiting.push_back(std::move(s));
        continue;
      }
      const double waited = elapsed_ms(s.first, s.second);
      if (waited > 0) {
        totals_.stall_ms += waited;
        totals_.stalls += 1;
      }
    }
    pending_stalls_ = std::move(waiting);
    totals_.pending_copies = pending_.size();
  }

  std::vector<PendingCopy> pending_;
  std::vector<std::pair<EventPtr, EventPtr>> pending_stalls_;
  std::map<c10::DeviceIndex, Reference> references_;
#else
  void resolve_locked() {}
#endif

  std::mutex mutex_;
  OffloadTelemetry totals_;
};

}  // namespace actckpt
