#pragma once
// The results of every mode: the seed's table (plus the analytic floor), and the files the
// plots are drawn from (results.json, results.csv, results.md, timeline_<mode>.csv,
// memory_timeline.json). MB = 2^20 bytes throughout, as LibTorch reports memory.

#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>
#include <actckpt/planner/planner.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_options.hpp"
#include "train_session.hpp"

namespace bench {

inline double mib(int64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

inline double median_of(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct ModeResult {
  StackMode mode = StackMode::baseline;
  std::vector<double> step_ms;   // every measured step, in order (wall clock)
  std::vector<double> step_cpu_ms;  // the same steps' process CPU time (all threads)
  int64_t peak_bytes = 0;        // device peak over the measured steps (CUDA: active bytes)
  int64_t allocated_peak_bytes = 0;  // CUDA: the allocator's allocated-bytes peak (CPU: = peak_bytes)
  int64_t host_stash_peak_bytes = 0;
  // The host pool over the measured steps: the most bytes live stashes asked for, and the most
  // the pool held (reserved from the system) to place them; their ratio is what rounding costs.
  int64_t pool_peak_stashed_bytes = 0;
  int64_t pool_peak_reserved_bytes = 0;
  int64_t resident_bytes = 0;    // device bytes between steps
  int64_t disk_peak_bytes = 0;   // the disk tier's modes: the most the disk store held
  int64_t host_budget_bytes = 0; // the disk tier's modes: the host pool's limit
  std::string disk_io_path;      // the disk tier's modes: how the store moved the device's tensors (DiskStore::io_path)
  Floor floor;
  std::unique_ptr<actckpt::MemoryTimeline> timeline;

  std::vector<double> round_ms;  // --rounds: this mode's step in round 0, 1, ... (aligned across modes)
  std::vector<actckpt::OffloadTelemetry> telemetry;  // per measured step (spans dropped)

  /// How much more the host pool held than the stashes asked for, at the peak (null: nothing stashed).
  std::optional<double> pool_held_over_stashed_pct() const {
    if (pool_peak_stashed_bytes == 0) return std::nullopt;
    return 100.0 * (static_cast<double>(pool_peak_reserved_bytes) / static_cast<double>(pool_peak_stashed_bytes) - 1.0);
  }

  bool moved_anything() const {
    for (const auto& t : telemetry)
      if (t.copies() > 0) return true;
    return false;
  }
  /// Each telemetry figure's median over the measured steps (the table and results.json).
  struct TelemetryMedians {
    double d2h_bytes, h2d_bytes, d2h_copies, h2d_copies, copies, d2h_ms, h2d_ms, copy_ms, stall_ms, stalls,
        overlap, d2h_gbps, h2d_gbps;
    double disk_write_bytes, disk_read_bytes, disk_write_ms, disk_read_ms, disk_stall_ms, disk_overlap;
  };
  TelemetryMedians telemetry_medians() const {
    auto median = [&](auto figure) {
      std::vector<double> v;
      for (const auto& t : telemetry) v.push_back(static_cast<double>(figure(t)));
      return median_of(v);
    };
    using T = actckpt::OffloadTelemetry;
    return {median([](const T& t) { return t.d2h_bytes; }),  median([](const T& t) { return t.h2d_bytes; }),
            median([](const T& t) { return t.d2h_copies; }), median([](const T& t) { return t.h2d_copies; }),
            median([](const T& t) { return t.copies(); }),   median([](const T& t) { return t.d2h_ms; }),
            median([](const T& t) { return t.h2d_ms; }),     median([](const T& t) { return t.copy_ms(); }),
            median([](const T& t) { return t.stall_ms; }),   median([](const T& t) { return t.stalls; }),
            median([](const T& t) { return t.overlap(); }),  median([](const T& t) { return t.d2h_gbps(); }),
            median([](const T& t) { return t.h2d_gbps(); }),
            median([](const T& t) { return t.disk_write_bytes; }), median([](const T& t) { return t.disk_read_bytes; }),
            median([](const T& t) { return t.disk_write_ms; }),    median([](const T& t) { return t.disk_read_ms; }),
            median([](const T& t) { return t.disk_stall_ms; }),    median([](const T& t) { return t.disk_overlap(); })};
  }

  double median_ms() const { return median_of(step_ms); }
  double median_cpu_ms() const { return median_of(step_cpu_ms); }
  /// The time the table reports: the round median when rounds ran, else the median step.
  double table_ms() const { return round_ms.empty() ? median_ms() : median_of(round_ms); }
  double min_ms() const { return step_ms.empty() ? 0 : *std::min_element(step_ms.begin(), step_ms.end()); }
  double mean_ms() const {
    return step_ms.empty() ? 0 : std::accumulate(step_ms.begin(), step_ms.end(), 0.0) / static_cast<double>(step_ms.size());
  }
  /// Measured peak over the floor, in percent (0 when the floor is unknown).
  double over_floor_pct() const {
    const auto f = floor.total();
    return f > 0 ? 100.0 * static_cast<double>(peak_bytes - f) / static_cast<double>(f) : 0.0;
  }
};

/// Percent change of `value` against `reference`.
inline std::optional<double> delta_pct(double value, double reference) {
  if (reference <= 0) return std::nullopt;
  return 100.0 * (value - reference) / reference;
}

inline std::string fmt(const char* format, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}
inline std::string fmt_delta(std::optional<double> d) { return d ? fmt("%+.2f%%", *d) : std::string("—"); }

/// `s` as a JSON string (quotes, backslashes and control characters escaped).
inline std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (const char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

/// `s` padded to `width` columns (UTF-8 aware: "—" is one column), right-aligned by default.
inline std::string pad(const std::string& s, std::size_t width, bool right = true) {
  std::size_t columns = 0;
  for (unsigned char c : s) columns += (c & 0xC0) != 0x80;
  const std::string fill(columns < width ? width - columns : 0, ' ');
  return right ? fill + s : s + fill;
}

/// The plan of mode ckpt_planned and what it was made from (bench_planner.hpp).
struct PlanSummary {
  std::string budget_text;
  actckpt::MemoryPlan plan;
  actckpt::StepProfile profile;
  std::int64_t floor_bytes = 0;  // smallest feasible budget, by the cost model
};

struct RunInfo {
  BenchOptions options;
  int intra_op_threads = 0;
  int inter_op_threads = 0;
  std::string omp_num_threads;  // as set in the environment, or "(unset)"
  std::string torch_version;
  int64_t parameters = 0;
  std::string allocator;  // how host memory is allocated (the warm-allocator setting)
};

class Report {
 public:
  ModeResult& at(StackMode mode) {
    auto& r = results_[mode];
    r.mode = mode;
    return r;
  }
  const ModeResult* find(StackMode mode) const {
    auto it = results_.find(mode);
    return it == results_.end() || it->second.step_ms.empty() ? nullptr : &it->second;
  }
  bool empty() const {
    for (const auto& [m, r] : results_)
      if (!r.step_ms.empty()) return false;
    return true;
  }

  /// Time of `mode` against `reference`, in percent. With rounds: the median of the per-round
  /// ratios (each pair of steps ran seconds apart, so a drift of the machine's speed cancels);
  /// without: the ratio of the median steps.
  std::optional<double> time_vs(StackMode mode, StackMode reference) const {
    auto* r = find(mode);
    auto* ref = find(reference);
    if (!r || !ref || r == ref) return std::nullopt;
    if (!r->round_ms.empty() && r->round_ms.size() == ref->round_ms.size()) {
      std::vector<double> ratios;
      for (std::size_t i = 0; i < r->round_ms.size(); ++i)
        if (ref->round_ms[i] > 0) ratios.push_back(r->round_ms[i] / ref->round_ms[i]);
      if (!ratios.empty()) return 100.0 * (median_of(ratios) - 1.0);
    }
    return delta_pct(r->median_ms(), ref->median_ms());
  }
  /// Rounds run per mode (0: the times are Google Benchmark's steps).
  std::size_t rounds() const {
    for (const auto& [m, r] : results_)
      if (!r.round_ms.empty()) return r.round_ms.size();
    return 0;
  }
  /// How the table's times were taken, for its caption and results.json.
  std::string time_method() const {
    if (const auto n = rounds())
      return "median of " + std::to_string(n) +
             " round-robin rounds (one step of every mode per round); time deltas: median of per-round ratios";
    return "median of " + std::to_string(steps_measured()) + " steps per mode; time deltas: ratio of medians";
  }
  std::optional<double> peak_vs(StackMode mode, StackMode reference) const {
    auto* r = find(mode);
    auto* ref = find(reference);
    if (!r || !ref || r == ref) return std::nullopt;
    return delta_pct(static_cast<double>(r->peak_bytes), static_cast<double>(ref->peak_bytes));
  }

  /// The seed's table plus host stash and the analytic floor, as a Markdown table.
  void write_table(std::ostream& out, const RunInfo& info) const {
    const auto& m = info.options.model;
    out << "Benchmark (LibTorch " << info.torch_version << ", " << m.device << ", " << m.dtype << ", " << m.total_tokens << " tokens, " << m.num_layers
        << " layers, hidden=" << m.hidden_dim << ", heads=" << m.num_heads() << ", ff=" << m.ff_dim
        << ", batch=" << m.batch_size << ", seq=" << m.seq_len() << "; " << info.intra_op_threads
        << " intra-op threads)\nTime: " << time_method() << ".\nAllocator: " << info.allocator << ".\n\n";
    out << "| Mode               | Time (ms/iter) | Δ vs Baseline | Peak (MB) | Δ vs Baseline | Δ vs Ckpt Classic "
           "| Host stash (MB) | Floor (MB) | Peak over floor |\n";
    out << "|--------------------|---------------:|--------------:|----------:|--------------:|------------------:"
           "|----------------:|-----------:|----------------:|\n";
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r) continue;
      const auto same = actckpt::models::default_form_of(mode);
      const bool offload = same == StackMode::ckpt_sync_offload || same == StackMode::ckpt_async_offload ||
                           same == StackMode::offload_saved || actckpt::models::uses_disk(same);
      out << "| " << pad(std::string(actckpt::models::to_string(mode)), 18, false) << " | "
          << pad(fmt("%.2f", r->table_ms()), 14) << " | " << pad(fmt_delta(time_vs(mode, StackMode::baseline)), 13)
          << " | " << pad(fmt("%.2f", mib(r->peak_bytes)), 9) << " | "
          << pad(fmt_delta(peak_vs(mode, StackMode::baseline)), 13) << " | "
          << pad(offload || mode == StackMode::ckpt_planned ? fmt_delta(peak_vs(mode, StackMode::ckpt_classic)) : "—", 17)
          << " | "
          << pad(fmt("%.2f", mib(r->host_stash_peak_bytes)), 15) << " | " << pad(fmt("%.2f", mib(r->floor.total())), 10)
          << " | " << pad(fmt("%+.2f%%", r->over_floor_pct()), 15) << " |\n";
    }
    // The time targets compare checkpointed modes with each other (async vs sync, async vs
    // classic); the seed's columns only compare with baseline.
    std::string pairs;
    auto add_pair = [&](StackMode a, StackMode b, const char* name) {
      if (auto d = time_vs(a, b)) pairs += std::string(pairs.empty() ? "" : ", ") + name + " " + fmt("%+.2f%%", *d);
    };
    add_pair(StackMode::ckpt_async_offload, StackMode::ckpt_sync_offload, "async vs sync");
    add_pair(StackMode::ckpt_async_offload, StackMode::ckpt_classic, "async vs classic");
    add_pair(StackMode::ckpt_sync_offload, StackMode::ckpt_classic, "sync vs classic");
    add_pair(StackMode::offload_saved, StackMode::ckpt_classic, "offload_saved vs classic");
    add_pair(StackMode::offload_saved, StackMode::ckpt_async_offload, "offload_saved vs async");
    add_pair(StackMode::ckpt_disk_offload, StackMode::ckpt_async_offload, "disk vs async");
    add_pair(StackMode::ckpt_disk_offload, StackMode::ckpt_classic, "disk vs classic");
    add_pair(StackMode::ckpt_disk_spill, StackMode::ckpt_async_offload, "spill vs async");
    if (!pairs.empty())
      out << "\nTime between checkpointed modes (" << (rounds() ? "median of per-round ratios" : "ratio of medians")
          << "): " << pairs << ".\n";
    write_form_lines(out);
    write_telemetry_table(out);
    write_disk_table(out);
    write_pool_lines(out);
    write_plan_lines(out);
    out << "\nMB = 2^20 bytes. Peak: " << (m.torch_device().is_cuda()
                                             ? "CUDA caching allocator's active bytes (what the device holds, "
                                               "including sources of copies still in flight; results.json also has "
                                               "the allocated-bytes peak)"
                                             : "bytes LibTorch's CPU allocator handed out")
        << " during the measured steps. Host stash: peak bytes of offloaded stashes in the host buffer pool"
        << (m.torch_device().is_cpu() ? " (on CPU these are also RAM: offload saves no memory there)" : "")
        << ". Floor: weights + grads + optimizer state + data + what the mode must keep + one block's measured"
           " working set (see results.json).\n";
  }

  /// Each checkpointed mode in the default form against the same mode in the reentrant form
  /// (time: median of per-round ratios when rounds ran), for the table and results.json.
  struct FormComparison {
    StackMode mode, reentrant;
    std::optional<double> time_pct, peak_pct;
  };
  std::vector<FormComparison> form_comparisons() const {
    std::vector<FormComparison> out;
    for (auto r : {StackMode::ckpt_classic_reentrant, StackMode::ckpt_sync_offload_reentrant,
                   StackMode::ckpt_async_offload_reentrant}) {
      const auto m = actckpt::models::default_form_of(r);
      if (!find(m) || !find(r)) continue;
      out.push_back({m, r, time_vs(m, r), peak_vs(m, r)});
    }
    return out;
  }

  void write_form_lines(std::ostream& out) const {
    const auto comparisons = form_comparisons();
    if (comparisons.empty()) return;
    out << "\nThe two checkpoint forms (modes without a suffix run the "
        << actckpt::to_string(actckpt::resolve(actckpt::CheckpointForm::process_default))
        << " form; *_reentrant the reentrant one): " << actckpt::to_string(actckpt::resolve(actckpt::CheckpointForm::process_default))
        << " vs reentrant";
    for (const auto& c : comparisons)
      out << (&c == &comparisons.front() ? ": " : "; ") << actckpt::models::to_string(c.mode) << " time "
          << fmt_delta(c.time_pct) << ", peak " << fmt_delta(c.peak_pct);
    out << ".\n";
  }

  /// Set when mode ckpt_planned ran (--memory_budget).
  std::optional<PlanSummary> plan;

  void write_files(const std::string& dir, const RunInfo& info) const {
    std::filesystem::create_directories(dir);
    {
      std::ofstream md(dir + "/results.md");
      write_table(md, info);
    }
    write_csv(dir + "/results.csv");
    write_json(dir + "/results.json", info);
    std::vector<const actckpt::MemoryTimeline*> timelines;
    for (auto mode : actckpt::models::all_stack_modes) {
      auto it = results_.find(mode);
      if (it == results_.end() || !it->second.timeline) continue;
      it->second.timeline->write_csv(dir + "/timeline_" + std::string(actckpt::models::to_string(mode)) + ".csv");
      timelines.push_back(it->second.timeline.get());
    }
    if (!timelines.empty()) actckpt::MemoryTimeline::write_trace(dir + "/memory_timeline.json", timelines);
  }

 private:
  /// The plan of ckpt_planned, predicted against measured (peak and time, also relative to classic).
  void write_plan_lines(std::ostream& out) const {
    const auto* r = find(StackMode::ckpt_planned);
    if (!plan || !r) return;
    const auto& p = *plan;
    const double predicted_vs_classic = 100.0 * (p.plan.predicted_step_ms / p.profile.step_ms[1] - 1.0);
    out << "\nMemory plan of ckpt_planned, budget " << p.budget_text << " = " << fmt("%.2f", mib(p.plan.budget_bytes))
        << " MB (the planner's profile measured classic " << fmt("%.2f", mib(p.profile.step_peak_bytes[1]))
        << " MB, baseline " << fmt("%.2f", mib(p.profile.step_peak_bytes[0])) << " MB; smallest feasible budget "
        << fmt("%.2f", mib(p.floor_bytes)) << " MB): " << p.plan.describe() << ".\nPredicted peak "
        << fmt("%.2f", mib(p.plan.predicted_peak_bytes)) << " MB, measured " << fmt("%.2f", mib(r->peak_bytes))
        << " MB (" << fmt_delta(delta_pct(static_cast<double>(p.plan.predicted_peak_bytes), static_cast<double>(r->peak_bytes)))
        << "); predicted time " << fmt("%.2f", p.plan.predicted_step_ms) << " ms, measured " << fmt("%.2f", r->table_ms())
        << " ms (" << fmt_delta(delta_pct(p.plan.predicted_step_ms, r->table_ms())) << "); vs classic: predicted "
        << fmt("%+.2f%%", predicted_vs_classic) << ", measured " << fmt_delta(time_vs(StackMode::ckpt_planned, StackMode::ckpt_classic))
        << ". Fits the budget: " << (r->peak_bytes <= p.plan.budget_bytes ? "yes" : "NO") << ".\n";
  }

  /// Host pool bytes held vs bytes stashed at the peak, per mode that stashed anything.
  void write_pool_lines(std::ostream& out) const {
    std::string lines;
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r || r->pool_peak_stashed_bytes == 0) continue;
      lines += std::string(lines.empty() ? "" : "; ") + std::string(actckpt::models::to_string(mode)) + " held " +
               fmt("%.2f", mib(r->pool_peak_reserved_bytes)) + " MB for " + fmt("%.2f", mib(r->pool_peak_stashed_bytes)) +
               " MB stashed (" + fmt_delta(r->pool_held_over_stashed_pct()) + ")";
    }
    if (lines.empty()) return;
    out << "\nHost pool at the peak (bytes the pool held from the system vs bytes the stashes asked for): " << lines
        << ".\n";
  }

  std::size_t steps_measured() const {
    std::size_t n = 0;
    for (const auto& [m, r] : results_) n = std::max(n, r.step_ms.size());
    return n;
  }

  /// The offload pipeline of the modes that moved stashes: per step, the median of the measured
  /// steps (copy time from CUDA events, or the CPU copy worker's clock).
  void write_telemetry_table(std::ostream& out) const {
    bool any = false;
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r || !r->moved_anything()) continue;
      if (!any) {
        out << "\nOffload pipeline, per step (median of the measured steps): what moved, how long the copies "
               "took, how long the compute waited for them (stall) and the share of copy time hidden behind "
               "compute (overlap = 1 - stall / copy).\n\n"
               "| Mode               | D2H (MB) | H2D (MB) | Copies | Copy (ms) | Stall (ms) | Overlap | D2H GB/s "
               "| H2D GB/s |\n"
               "|--------------------|---------:|---------:|-------:|----------:|-----------:|--------:|---------:"
               "|---------:|\n";
        any = true;
      }
      const auto t = r->telemetry_medians();
      out << "| " << pad(std::string(actckpt::models::to_string(mode)), 18, false) << " | "
          << pad(fmt("%.2f", mib(static_cast<int64_t>(t.d2h_bytes))), 8) << " | "
          << pad(fmt("%.2f", mib(static_cast<int64_t>(t.h2d_bytes))), 8) << " | " << pad(fmt("%.0f", t.copies), 6)
          << " | " << pad(fmt("%.2f", t.copy_ms), 9) << " | " << pad(fmt("%.2f", t.stall_ms), 10) << " | "
          << pad(fmt("%.1f%%", 100.0 * t.overlap), 7) << " | " << pad(fmt("%.2f", t.d2h_gbps), 8) << " | "
          << pad(fmt("%.2f", t.h2d_gbps), 8) << " |\n";
    }
  }

  /// The disk tier's modes: what went to disk each way, how long the I/O took, how long the compute
  /// waited for it and the share hidden (disk overlap = 1 - disk stall / disk time), the disk and
  /// host peaks against the host budget.
  void write_disk_table(std::ostream& out) const {
    bool any = false;
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r || !actckpt::models::uses_disk(mode)) continue;
      if (!any) {
        out << "\nDisk tier, per step (median of the measured steps):\n\n"
               "| Mode               | Disk W (MB) | Disk R (MB) | Write (ms) | Read (ms) | Disk stall (ms) "
               "| Disk overlap | W GB/s | R GB/s | Disk peak (MB) | Host pool peak (MB) | Host budget (MB) |\n"
               "|--------------------|------------:|------------:|-----------:|----------:|----------------:"
               "|-------------:|-------:|-------:|---------------:|--------------------:|-----------------:|\n";
        any = true;
      }
      const auto t = r->telemetry_medians();
      auto gbps = [](double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e6) : 0.0; };
      out << "| " << pad(std::string(actckpt::models::to_string(mode)), 18, false) << " | "
          << pad(fmt("%.2f", mib(static_cast<int64_t>(t.disk_write_bytes))), 11) << " | "
          << pad(fmt("%.2f", mib(static_cast<int64_t>(t.disk_read_bytes))), 11) << " | "
          << pad(fmt("%.2f", t.disk_write_ms), 10) << " | " << pad(fmt("%.2f", t.disk_read_ms), 9) << " | "
          << pad(fmt("%.2f", t.disk_stall_ms), 15) << " | " << pad(fmt("%.1f%%", 100.0 * t.disk_overlap), 12) << " | "
          << pad(fmt("%.2f", gbps(t.disk_write_bytes, t.disk_write_ms)), 6) << " | "
          << pad(fmt("%.2f", gbps(t.disk_read_bytes, t.disk_read_ms)), 6) << " | "
          << pad(fmt("%.2f", mib(r->disk_peak_bytes)), 14) << " | " << pad(fmt("%.2f", mib(r->pool_peak_reserved_bytes)), 19)
          << " | " << pad(fmt("%.2f", mib(r->host_budget_bytes)), 16) << " |\n";
    }
    for (auto mode : actckpt::models::all_stack_modes) {  // which I/O path moved the stashes (cuFile on CUDA, or why not)
      const auto* r = find(mode);
      if (r && actckpt::models::uses_disk(mode) && !r->disk_io_path.empty())
        out << "\n" << actckpt::models::to_string(mode)
            << " I/O path: " << r->disk_io_path << "\n";
    }
  }

  void write_csv(const std::string& path) const {
    std::ofstream out(path);
    out << "mode,ms_per_iter,ms_min,ms_mean,cpu_ms_per_iter,steps,peak_MB,host_stash_MB,floor_MB,over_floor_pct,"
           "time_vs_baseline_pct,peak_vs_baseline_pct,peak_vs_classic_pct\n";
    auto opt = [](std::optional<double> d) { return d ? fmt("%.4f", *d) : std::string(); };
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r) continue;
      out << actckpt::models::to_string(mode) << ',' << fmt("%.4f", r->table_ms()) << ',' << fmt("%.4f", r->min_ms())
          << ',' << fmt("%.4f", r->mean_ms()) << ',' << fmt("%.4f", r->median_cpu_ms()) << ',' << r->step_ms.size() << ',' << fmt("%.4f", mib(r->peak_bytes))
          << ',' << fmt("%.4f", mib(r->host_stash_peak_bytes)) << ',' << fmt("%.4f", mib(r->floor.total())) << ','
          << fmt("%.4f", r->over_floor_pct()) << ',' << opt(time_vs(mode, StackMode::baseline)) << ','
          << opt(peak_vs(mode, StackMode::baseline)) << ',' << opt(peak_vs(mode, StackMode::ckpt_classic)) << '\n';
    }
  }

  void write_json(const std::string& path, const RunInfo& info) const {
    std::ofstream out(path);
    const auto& m = info.options.model;
    auto num = [](std::optional<double> d) { return d ? fmt("%.4f", *d) : std::string("null"); };
    out << "{\n  \"config\": {\"device\": \"" << m.device << "\", \"dtype\": \"" << m.dtype
        << "\", \"total_tokens\": " << m.total_tokens << ", \"num_layers\": " << m.num_layers
        << ", \"hidden_dim\": " << m.hidden_dim << ", \"head_dim\": " << m.head_dim << ", \"ff_dim\": " << m.ff_dim
        << ", \"batch_size\": " << m.batch_size << ", \"seq_len\": " << m.seq_len() << ", \"steps\": " << m.steps
        << ", \"warmup\": " << info.options.warmup << ", \"dropout\": " << m.dropout
        << ", \"parameters\": " << info.parameters << "},\n";
    out << "  \"environment\": {\"intra_op_threads\": " << info.intra_op_threads
        << ", \"inter_op_threads\": " << info.inter_op_threads << ", \"OMP_NUM_THREADS\": \"" << info.omp_num_threads
        << "\", \"torch_version\": \"" << info.torch_version << "\", \"allocator\": \"" << info.allocator
        << "\"},\n";
    out << "  \"units\": {\"time\": \"ms per training step, wall clock (cpu_ms: process CPU time)\", "
           "\"memory\": \"MB = 2^20 bytes\"},\n";
    out << "  \"time_method\": \"" << time_method() << "\",\n";
    out << "  \"modes\": [";
    bool first = true;
    for (auto mode : actckpt::models::all_stack_modes) {
      const auto* r = find(mode);
      if (!r) continue;
      out << (first ? "\n" : ",\n");
      first = false;
      const auto& f = r->floor;
      out << "    {\"mode\": \"" << actckpt::models::to_string(mode) << "\", \"form\": \""
          << actckpt::models::form_name(mode) << "\", \"ms_per_iter\": " << fmt("%.4f", r->table_ms())
          << ", \"steps_median_ms\": " << fmt("%.4f", r->median_ms())
          << ", \"ms_min\": " << fmt("%.4f", r->min_ms()) << ", \"ms_mean\": " << fmt("%.4f", r->mean_ms())
          << ", \"cpu_ms_per_iter\": " << fmt("%.4f", r->median_cpu_ms()) << ",\n     \"step_ms\": [";
      for (std::size_t i = 0; i < r->step_ms.size(); ++i) out << (i ? ", " : "") << fmt("%.2f", r->step_ms[i]);
      out << "], \"round_ms\": [";
      for (std::size_t i = 0; i < r->round_ms.size(); ++i) out << (i ? ", " : "") << fmt("%.2f", r->round_ms[i]);
      out << "], \"step_cpu_ms\": [";
      for (std::size_t i = 0; i < r->step_cpu_ms.size(); ++i) out << (i ? ", " : "") << fmt("%.2f", r->step_cpu_ms[i]);
      out << "],\n     \"peak_MB\": " << fmt("%.4f", mib(r->peak_bytes)) << ", \"peak_bytes\": " << r->peak_bytes
          << ", \"allocated_peak_MB\": " << fmt("%.4f", mib(r->allocated_peak_bytes))
          << ", \"host_stash_MB\": " << fmt("%.4f", mib(r->host_stash_peak_bytes))
          << ", \"pool_peak_stashed_MB\": " << fmt("%.4f", mib(r->pool_peak_stashed_bytes))
          << ", \"pool_peak_held_MB\": " << fmt("%.4f", mib(r->pool_peak_reserved_bytes))
          << ", \"pool_held_over_stashed_pct\": " << num(r->pool_held_over_stashed_pct())
          << ", \"resident_MB\": " << fmt("%.4f", mib(r->resident_bytes)) << ",\n     \"time_vs_baseline_pct\": "
          << num(time_vs(mode, StackMode::baseline)) << ", \"peak_vs_baseline_pct\": "
          << num(peak_vs(mode, StackMode::baseline)) << ", \"time_vs_classic_pct\": "
          << num(time_vs(mode, StackMode::ckpt_classic)) << ", \"peak_vs_classic_pct\": "
          << num(peak_vs(mode, StackMode::ckpt_classic)) << ", \"time_vs_sync_offload_pct\": "
          << num(time_vs(mode, StackMode::ckpt_sync_offload)) << ",\n     \"floor\": {\"total_MB\": "
          << fmt("%.4f", mib(f.total())) << ", \"weights_MB\": " << fmt("%.4f", mib(f.weights))
          << ", \"grads_MB\": " << fmt("%.4f", mib(f.grads)) << ", \"optimizer_state_MB\": "
          << fmt("%.4f", mib(f.optimizer_state)) << ", \"data_and_other_MB\": " << fmt("%.4f", mib(f.other_resident))
          << ", \"keep_MB\": " << fmt("%.4f", mib(f.keep)) << ", \"keep\": \"" << f.keep_formula
          << "\", \"block_working_set_MB\": " << fmt("%.4f", mib(f.working_set)) << "}, \"peak_over_floor_pct\": "
          << fmt("%.4f", r->over_floor_pct());
      if (r->moved_anything()) {
        const auto t = r->telemetry_medians();
        out << ",\n     \"telemetry\": {\"per\": \"step, median of the measured steps\", \"d2h_bytes\": "
            << fmt("%.0f", t.d2h_bytes) << ", \"h2d_bytes\": " << fmt("%.0f", t.h2d_bytes) << ", \"d2h_copies\": "
            << fmt("%.0f", t.d2h_copies) << ", \"h2d_copies\": " << fmt("%.0f", t.h2d_copies) << ", \"d2h_ms\": "
            << fmt("%.4f", t.d2h_ms) << ", \"h2d_ms\": " << fmt("%.4f", t.h2d_ms) << ", \"copy_ms\": "
            << fmt("%.4f", t.copy_ms) << ", \"stall_ms\": " << fmt("%.4f", t.stall_ms) << ", \"stalls\": "
            << fmt("%.0f", t.stalls) << ", \"overlap\": " << fmt("%.4f", t.overlap) << ", \"d2h_GBps\": "
            << fmt("%.4f", t.d2h_gbps) << ", \"h2d_GBps\": " << fmt("%.4f", t.h2d_gbps)
            << ", \"disk_write_bytes\": " << fmt("%.0f", t.disk_write_bytes) << ", \"disk_read_bytes\": "
            << fmt("%.0f", t.disk_read_bytes) << ", \"disk_write_ms\": " << fmt("%.4f", t.disk_write_ms)
            << ", \"disk_read_ms\": " << fmt("%.4f", t.disk_read_ms) << ", \"disk_stall_ms\": "
            << fmt("%.4f", t.disk_stall_ms) << ", \"disk_overlap\": " << fmt("%.4f", t.disk_overlap) << ", \"steps\": "
            << r->telemetry.size() << "}";
      }
      if (actckpt::models::uses_disk(mode)) {
        out << ",\n     \"disk\": {\"disk_peak_MB\": " << fmt("%.4f", mib(r->disk_peak_bytes)) << ", \"host_budget_MB\": "
            << fmt("%.4f", mib(r->host_budget_bytes)) << ", \"host_pool_peak_held_MB\": "
            << fmt("%.4f", mib(r->pool_peak_reserved_bytes)) << ", \"host_within_budget\": "
            << (r->pool_peak_reserved_bytes <= r->host_budget_bytes ? "true" : "false")
            << ", \"time_vs_async_offload_pct\": " << num(time_vs(mode, StackMode::ckpt_async_offload))
            << ", \"io_path\": " << json_string(r->disk_io_path) << "}";
      }
      out << "}";
    }
    out << "\n  ]";
    if (const auto comparisons = form_comparisons(); !comparisons.empty()) {
      out << ",\n  \"form_comparison\": {\"form\": \""
          << actckpt::to_string(actckpt::resolve(actckpt::CheckpointForm::process_default))
          << "\", \"versus\": \"reentrant\", \"modes\": [";
      for (const auto& c : comparisons)
        out << (&c == &comparisons.front() ? "" : ", ") << "{\"mode\": \"" << actckpt::models::to_string(c.mode)
            << "\", \"reentrant_mode\": \"" << actckpt::models::to_string(c.reentrant)
            << "\", \"time_pct\": " << num(c.time_pct) << ", \"peak_pct\": " << num(c.peak_pct) << "}";
      out << "]}";
    }
    if (const auto* r = find(StackMode::ckpt_planned); plan && r) {
      const auto& p = *plan;
      out << ",\n  \"memory_plan\": {\"budget\": \"" << p.budget_text << "\", \"budget_MB\": "
          << fmt("%.4f", mib(p.plan.budget_bytes)) << ", \"plan\": \"" << p.plan.describe() << "\", \"choices\": [";
      for (std::size_t i = 0; i < p.plan.choices.size(); ++i)
        out << (i ? ", " : "") << "\"" << actckpt::to_string(p.plan.choices[i]) << "\"";
      out << "],\n    \"predicted_peak_MB\": " << fmt("%.4f", mib(p.plan.predicted_peak_bytes))
          << ", \"measured_peak_MB\": " << fmt("%.4f", mib(r->peak_bytes)) << ", \"fits\": "
          << (r->peak_bytes <= p.plan.budget_bytes ? "true" : "false") << ", \"predicted_ms\": "
          << fmt("%.4f", p.plan.predicted_step_ms) << ", \"measured_ms\": " << fmt("%.4f", r->table_ms())
          << ",\n    \"profile_classic_peak_MB\": " << fmt("%.4f", mib(p.profile.step_peak_bytes[1]))
          << ", \"profile_baseline_peak_MB\": " << fmt("%.4f", mib(p.profile.step_peak_bytes[0]))
          << ", \"smallest_feasible_MB\": " << fmt("%.4f", mib(p.floor_bytes)) << ", \"profile_classic_ms\": "
          << fmt("%.4f", p.profile.step_ms[1]) << ", \"profile_baseline_ms\": " << fmt("%.4f", p.profile.step_ms[0])
          << "}";
    }
    out << "\n}\n";
  }

  std::map<StackMode, ModeResult> results_;
};

}  // namespace bench
