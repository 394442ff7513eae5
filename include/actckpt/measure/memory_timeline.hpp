#pragma once
/// \file memory_timeline.hpp
/// `actckpt::MemoryTimeline`: the device bytes and host stash bytes of a `MemoryMeter` at every
/// allocation and release, labelled with the phase the model was in (`fwd 3`, `bwd 3`, or a
/// phase the caller marks, such as `loss` or `optimizer`), exported as CSV and as a
/// Chrome/Perfetto trace (open it at ui.perfetto.dev or chrome://tracing).
/// \code
///   actckpt::MemoryMeter meter(torch::kCPU);
///   ... build the model, warm up ...
///   actckpt::MemoryTimeline timeline(meter, "ckpt_async_offload");
///   auto loss = model(x).pow(2).mean();
///   timeline.mark("backward");
///   loss.backward();
///   timeline.stop();
///   timeline.write_csv(std::ofstream("timeline.csv"));
///   actckpt::MemoryTimeline::write_trace(std::ofstream("timeline.json"), {&timeline});
/// \endcode
///
/// Phases come from actckpt's observer events: checkpointed layers announce `forward_begin`,
/// `backward_begin` and so on with their label (`CheckpointedImpl::set_label`), and a stack of
/// unwrapped layers can announce the same events itself (models/transformer_stack.hpp does), so
/// checkpointed and unwrapped models give comparable timelines. Only events raised on threads
/// the meter counts are taken, so a second model trained in another thread does not mix its
/// phases in.
///
/// With no timeline recording, nothing is added to any allocation (the meter checks one flag)
/// or observer event (no observer is installed).

#include <c10/util/Exception.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/measure/memory_meter.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/offload/disk_store.hpp"
#include "actckpt/offload/offload_telemetry.hpp"

namespace actckpt {

/// One point of a timeline.
struct TimelineSample {
  std::int64_t time_ns = 0;            ///< since the timeline started
  std::int64_t device_bytes = 0;       ///< the meter's device bytes after this point
  std::int64_t host_stash_bytes = 0;   ///< the pool's live bytes after this point
  std::int64_t disk_bytes = 0;         ///< the watched disk store's live bytes (`watch_disk`; else 0)
  std::int64_t delta_bytes = 0;        ///< allocation (> 0) or release (< 0); 0 for events
  std::uint32_t phase = 0;             ///< index into `MemoryTimeline::phases()`
  std::string_view what;               ///< "alloc", "free", "mark" or an observer event name
};

/// A stretch of time spent in one phase.
struct PhaseSpan {
  std::string phase;
  std::int64_t begin_ns = 0;
  std::int64_t end_ns = 0;
};

namespace detail {

inline void write_json_string(std::ostream& out, std::string_view s) {
  out << '"';
  for (char c : s) {
    switch (c) {
      case '"': out << "\\\""; break;
      case '\\': out << "\\\\"; break;
      case '\n': out << "\\n"; break;
      case '\t': out << "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out << buf;
        } else {
          out << c;
        }
    }
  }
  out << '"';
}

/// Microseconds with nanosecond resolution, as trace viewers want them.
inline void write_micros(std::ostream& out, std::int64_t ns) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%lld.%03lld", static_cast<long long>(ns / 1000), static_cast<long long>(ns % 1000));
  out << buf;
}

/// MB as LibTorch and the seed report them: 2^20 bytes.
inline void write_megabytes(std::ostream& out, std::int64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6f", static_cast<double>(bytes) / 1048576.0);
  out << buf;
}

/// The recorder behind a timeline: a sink for the meter and an observer of actckpt's events.
class TimelineRecorder final : public MemorySink, public Observer {
 public:
  TimelineRecorder(const MemoryMeter& meter, std::string first_phase)
      : meter_(meter), start_(std::chrono::steady_clock::now()) {
    phases_.push_back(std::move(first_phase));
    device_bytes_ = meter.device_bytes();
    samples_.push_back(sample(0, "start"));
  }

  void on_memory(std::int64_t delta, std::int64_t device_bytes) override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return;
    device_bytes_ = device_bytes;
    samples_.push_back(sample(delta, delta >= 0 ? "alloc" : "free"));
  }

  void on_event(const Event& event) override {
    std::string phase;
    switch (event.kind) {
      case EventKind::forward_begin: phase = "fwd " + std::string(event.label); break;
      case EventKind::backward_begin: phase = "bwd " + std::string(event.label); break;
      case EventKind::forward_end: phase = "fwd"; break;
      case EventKind::backward_end: phase = "bwd"; break;
      default: break;  // stash movements: a point on the curve, no phase change
    }
    std::lock_guard<std::mutex> lock(mutex_);
    // Checked under the lock: once stop() has run, the meter may be gone.
    if (stopped_ || !meter_.counts_this_thread()) return;  // another model's thread, or outside the scope
    if (!phase.empty()) set_phase_locked(std::move(phase));
    samples_.push_back(sample(0, to_string(event.kind), event.label));
  }

  void mark(std::string phase) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return;
    set_phase_locked(std::move(phase));
    samples_.push_back(sample(0, "mark"));
  }

  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopped_) return;
    samples_.push_back(sample(0, "stop"));
    stopped_ = true;
  }

  std::vector<TimelineSample> samples() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return samples_;
  }
  std::vector<std::string> phases() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return phases_;
  }
  /// Labels of stash events (offload_begin 3, ...), one per sample that has one.
  std::map<std::size_t, std::string> event_labels() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return event_labels_;
  }
  std::chrono::steady_clock::time_point start() const { return start_; }

  void watch_disk(std::shared_ptr<const DiskStore> disk) {
    std::lock_guard<std::mutex> lock(mutex_);
    disk_ = std::move(disk);
  }
  bool watches_disk() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return disk_ != nullptr;
  }

 private:
  void set_phase_locked(std::string phase) {
    auto it = phase_index_.find(phase);
    if (it == phase_index_.end()) {
      if (phase == phases_.front()) {
        current_phase_ = 0;
        return;
      }
      it = phase_index_.emplace(phase, static_cast<std::uint32_t>(phases_.size())).first;
      phases_.push_back(std::move(phase));
    }
    current_phase_ = it->second;
  }

  TimelineSample sample(std::int64_t delta, std::string_view what, std::string_view label = {}) {
    const auto now = std::chrono::steady_clock::now();
    if (!label.empty()) event_labels_.emplace(samples_.size(), std::string(label));
    // live_bytes() takes no lock: this may run inside an allocation the store's own lock holder made.
    return TimelineSample{std::chrono::duration_cast<std::chrono::nanoseconds>(now - start_).count(), device_bytes_,
                          static_cast<std::int64_t>(meter_.pool().live_bytes()),
                          disk_ ? static_cast<std::int64_t>(disk_->live_bytes()) : 0, delta, current_phase_, what};
  }

  const MemoryMeter& meter_;
  const std::chrono::steady_clock::time_point start_;
  mutable std::mutex mutex_;
  bool stopped_ = false;
  std::int64_t device_bytes_ = 0;
  std::uint32_t current_phase_ = 0;
  std::vector<std::string> phases_;
  std::map<std::string, std::uint32_t> phase_index_;
  std::vector<TimelineSample> samples_;
  std::map<std::size_t, std::string> event_labels_;
  std::shared_ptr<const DiskStore> disk_;  // the disk tier whose bytes the samples carry (null: none)
};

}  // namespace detail

/// Records a meter's allocations and releases and the model's phases, from construction until
/// `stop()` (or destruction). Thread-safe. The meter must outlive the recording.
class MemoryTimeline {
 public:
  /// Starts recording `meter`. `name` names the timeline in exports (a mode, a run);
  /// `first_phase` is the phase until the first event or mark.
  explicit MemoryTimeline(MemoryMeter& meter, std::string name = "timeline", std::string first_phase = "start")
      : meter_(&meter),
        name_(std::move(name)),
        recorder_(std::make_shared<detail::TimelineRecorder>(meter, std::move(first_phase))) {
    meter.set_sink(recorder_.get());
    observing_.emplace(recorder_);
  }

  ~MemoryTimeline() { stop(); }
  MemoryTimeline(const MemoryTimeline&) = delete;
  MemoryTimeline& operator=(const MemoryTimeline&) = delete;

  /// Enters `phase` (e.g. "loss", "optimizer"); observer events change it too.
  void mark(std::string phase) { recorder_->mark(std::move(phase)); }

  /// Places stash copies on the timeline (`OffloadTelemetry::spans` of the recorded step): the
  /// trace draws them on a track of their own, so copies and compute phases line up.
  void add_copies(const std::vector<CopySpan>& spans) {
    std::lock_guard<std::mutex> lock(copies_mutex_);
    copies_.insert(copies_.end(), spans.begin(), spans.end());
  }
  std::vector<CopySpan> copies() const {
    std::lock_guard<std::mutex> lock(copies_mutex_);
    return copies_;
  }

  /// Ends the recording; the data stays readable and exportable.
  void stop() {
    if (meter_ == nullptr) return;
    meter_->set_sink(nullptr);
    observing_.reset();
    recorder_->stop();
    meter_ = nullptr;
  }

  const std::string& name() const { return name_; }
  /// Samples carry `disk`'s live bytes from now on (the disk tier, offload/disk_store.hpp): a
  /// `disk_bytes` column in the CSV and a "disk MB" counter in the trace.
  void watch_disk(std::shared_ptr<const DiskStore> disk) { recorder_->watch_disk(std::move(disk)); }
  std::vector<TimelineSample> samples() const { return recorder_->samples(); }
  /// Phase names; `TimelineSample::phase` indexes this.
  std::vector<std::string> phases() const { return recorder_->phases(); }

  /// Consecutive samples in the same phase, merged.
  std::vector<PhaseSpan> phase_spans() const {
    const auto samples = recorder_->samples();
    const auto phases = recorder_->phases();
    std::vector<PhaseSpan> spans;
    for (const auto& s : samples) {
      if (spans.empty() || spans.back().phase != phases[s.phase]) {
        if (!spans.empty()) spans.back().end_ns = s.time_ns;
        spans.push_back(PhaseSpan{phases[s.phase], s.time_ns, s.time_ns});
      } else {
        spans.back().end_ns = s.time_ns;
      }
    }
    return spans;
  }

  /// The highest device bytes recorded.
  std::int64_t peak_device_bytes() const {
    std::int64_t peak = 0;
    for (const auto& s : recorder_->samples()) peak = std::max(peak, s.device_bytes);
    return peak;
  }

  /// CSV with a header: time_ms,device_bytes,host_stash_bytes,delta_bytes,phase,what,label
  /// (and disk_bytes last when a disk store is watched)
  void write_csv(std::ostream& out) const {
    const auto samples = recorder_->samples();
    const auto phases = recorder_->phases();
    const auto labels = recorder_->event_labels();
    const bool disk = recorder_->watches_disk();
    out << "time_ms,device_bytes,host_stash_bytes,delta_bytes,phase,what,label" << (disk ? ",disk_bytes" : "") << "\n";
    char time[32];
    for (std::size_t i = 0; i < samples.size(); ++i) {
      const auto& s = samples[i];
      std::snprintf(time, sizeof time, "%.6f", static_cast<double>(s.time_ns) / 1e6);
      auto label = labels.find(i);
      out << time << ',' << s.device_bytes << ',' << s.host_stash_bytes << ',' << s.delta_bytes << ','
          << csv_field(phases[s.phase]) << ',' << s.what << ','
          << (label == labels.end() ? std::string() : csv_field(label->second));
      if (disk) out << ',' << s.disk_bytes;
      out << '\n';
    }
  }
  void write_csv(const std::string& path) const {
    std::ofstream out(path);
    ACTCKPT_CHECK(out, Error, "actckpt::MemoryTimeline: cannot write ", path);
    write_csv(out);
  }

  /// A Chrome/Perfetto trace (JSON object format) with one process per timeline, all starting at
  /// time 0 so they line up: counter tracks "memory / device MB" and "memory / host stash MB",
  /// a "phases" thread with one slice per phase, a "stash events" thread with instants, and a
  /// "copies" thread with one slice per stash copy (`add_copies`), named by direction and layer,
  /// and a "disk" thread with one slice per disk tier write or read (offload/disk_store.hpp).
  static void write_trace(std::ostream& out, const std::vector<const MemoryTimeline*>& timelines) {
    out << "{\"displayTimeUnit\":\"ms\",\"traceEvents\":[\n";
    bool first = true;
    auto next = [&]() -> std::ostream& {
      if (!first) out << ",\n";
      first = false;
      return out;
    };
    int pid = 0;
    for (const auto* t : timelines) {
      ++pid;
      const auto samples = t->samples();
      const auto labels = t->recorder_->event_labels();
      next() << "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":" << pid << ",\"tid\":0,\"args\":{\"name\":";
      detail::write_json_string(out, t->name());
      out << "}}";
      next() << "{\"ph\":\"M\",\"name\":\"process_sort_index\",\"pid\":" << pid
             << ",\"tid\":0,\"args\":{\"sort_index\":" << pid << "}}";
      next() << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << pid
             << ",\"tid\":1,\"args\":{\"name\":\"phases\"}}";
      next() << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << pid
             << ",\"tid\":2,\"args\":{\"name\":\"stash events\"}}";
      const auto copies = t->copies();
      const bool any_host = std::any_of(copies.begin(), copies.end(), [](const CopySpan& c) { return !c.disk; });
      const bool any_disk = std::any_of(copies.begin(), copies.end(), [](const CopySpan& c) { return c.disk; });
      if (any_host) {
        next() << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << pid
               << ",\"tid\":3,\"args\":{\"name\":\"copies (device <-> host)\"}}";
      }
      if (any_disk) {
        next() << "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":" << pid
               << ",\"tid\":4,\"args\":{\"name\":\"disk (device <-> disk store)\"}}";
      }
      const auto start = t->recorder_->start();
      for (const auto& c : copies) {
        const auto begin_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(c.begin - start).count();
        const auto dur_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(c.end - c.begin).count();
        next() << "{\"ph\":\"X\",\"name\":";
        const char* name = c.disk ? (c.direction == CopyDirection::device_to_host ? "disk write " : "disk read ")
                                  : (c.direction == CopyDirection::device_to_host ? "D2H " : "H2D ");
        detail::write_json_string(out, std::string(name) + c.label);
        out << ",\"cat\":\"" << (c.disk ? "disk" : "copy") << "\",\"pid\":" << pid << ",\"tid\":" << (c.disk ? 4 : 3)
            << ",\"ts\":";
        detail::write_micros(out, begin_ns);
        out << ",\"dur\":";
        detail::write_micros(out, std::max<std::int64_t>(dur_ns, 1));
        out << ",\"args\":{\"bytes\":" << c.bytes << "}}";
      }
      std::int64_t last_device = -1, last_host = -1, last_disk = -1;
      const bool disk = t->recorder_->watches_disk();
      for (std::size_t i = 0; i < samples.size(); ++i) {
        const auto& s = samples[i];
        if (s.device_bytes != last_device || s.host_stash_bytes != last_host || s.disk_bytes != last_disk ||
            i + 1 == samples.size()) {
          next() << "{\"ph\":\"C\",\"name\":\"memory\",\"pid\":" << pid << ",\"tid\":0,\"ts\":";
          detail::write_micros(out, s.time_ns);
          out << ",\"args\":{\"device MB\":";
          detail::write_megabytes(out, s.device_bytes);
          out << ",\"host stash MB\":";
          detail::write_megabytes(out, s.host_stash_bytes);
          if (disk) {
            out << ",\"disk MB\":";
            detail::write_megabytes(out, s.disk_bytes);
          }
          out << "}}";
          last_device = s.device_bytes;
          last_host = s.host_stash_bytes;
          last_disk = s.disk_bytes;
        }
        auto label = labels.find(i);
        const bool stash_event = s.what == "offload_begin" || s.what == "offload_end" || s.what == "prefetch_begin" ||
                                 s.what == "restore_end" || s.what == "stash_released" || s.what == "recompute_end";
        if (stash_event) {
          next() << "{\"ph\":\"i\",\"s\":\"t\",\"name\":";
          detail::write_json_string(out, std::string(s.what) + (label != labels.end() ? " " + label->second : ""));
          out << ",\"pid\":" << pid << ",\"tid\":2,\"ts\":";
          detail::write_micros(out, s.time_ns);
          out << "}";
        }
      }
      for (const auto& span : t->phase_spans()) {
        next() << "{\"ph\":\"X\",\"name\":";
        detail::write_json_string(out, span.phase);
        out << ",\"cat\":\"phase\",\"pid\":" << pid << ",\"tid\":1,\"ts\":";
        detail::write_micros(out, span.begin_ns);
        out << ",\"dur\":";
        detail::write_micros(out, std::max<std::int64_t>(span.end_ns - span.begin_ns, 1));
        out << "}";
      }
    }
    out << "\n]}\n";
  }
  static void write_trace(const std::string& path, const std::vector<const MemoryTimeline*>& timelines) {
    std::ofstream out(path);
    ACTCKPT_CHECK(out, Error, "actckpt::MemoryTimeline: cannot write ", path);
    write_trace(out, timelines);
  }
  /// This timeline alone.
  void write_trace(std::ostream& out) const { write_trace(out, {this}); }

 private:
  static std::string csv_field(const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string quoted = "\"";
    for (char c : s) quoted += (c == '"') ? std::string("\"\"") : std::string(1, c);
    return quoted + "\"";
  }

  MemoryMeter* meter_;
  std::string name_;
  mutable std::mutex copies_mutex_;
  std::vector<CopySpan> copies_;
  std::shared_ptr<detail::TimelineRecorder> recorder_;
  std::optional<ObserverScope> observing_;
};

}  // namespace actckpt
