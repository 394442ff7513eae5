#pragma once
/// \file plan.hpp
/// The planner's vocabulary, and nothing that runs a model: what a plan can do with a layer
/// (`LayerChoice`), what a profile measured (`LayerProfile`, `StepProfile`), what-if costs
/// (`OffloadCosts`), a plan and its prediction (`MemoryPlan`, `PlanEstimate`), and the
/// `StashOptions` that carry out a choice. It needs no torch::nn, so the cost model and the
/// search (cost_model.hpp, search.hpp) compile from hand-made profiles without a model.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "actckpt/policy/stash_options.hpp"

// Only named by MemoryPlan::apply, defined in planner.hpp: declared here so that a profile and a
// plan need no torch::nn.
namespace torch::nn {
class Module;
}  // namespace torch::nn

namespace actckpt {

/// What the plan does with one layer.
enum class LayerChoice {
  keep,           ///< not checkpointed: runs directly, autograd keeps its activations
  checkpoint,     ///< checkpointed, inputs kept on the device
  sync_offload,   ///< checkpointed, inputs copied to host memory and back, blocking
  async_offload,  ///< checkpointed, inputs copied on the side stream / worker, prefetched
  /// not checkpointed, no recompute: every activation autograd saves (parameters and buffers
  /// aside) is copied to the host pool asynchronously and prefetched a layer ahead in backward
  /// (`StashOptions::offload_saved`). Only where host memory is separate from the device's.
  offload_saved,
  /// checkpointed, inputs written to the offload context's disk store asynchronously (through
  /// host staging) and read back a layer ahead in backward (`StashTier::disk`, as `DiskOffload`):
  /// nothing stays in the host pool. Only where disk bandwidths are given or probed
  /// (`OffloadCosts::disk_write_bytes_per_s`, `measure_disk_bandwidth`).
  disk_offload,
};

constexpr std::string_view to_string(LayerChoice c) noexcept {
  switch (c) {
    case LayerChoice::keep: return "keep";
    case LayerChoice::checkpoint: return "checkpoint";
    case LayerChoice::sync_offload: return "sync offload";
    case LayerChoice::async_offload: return "async offload";
    case LayerChoice::offload_saved: return "offload saved";
    case LayerChoice::disk_offload: return "disk offload";
  }
  return "unknown";
}

/// The three configurations the profile measures (async offload is derived from them).
enum class ProfiledMode { keep = 0, checkpoint = 1, sync_offload = 2 };
inline constexpr std::size_t profiled_modes = 3;

/// One layer's measurements, per `ProfiledMode` (index with `static_cast<std::size_t>(mode)`).
struct LayerProfile {
  std::string label;          ///< the layer's own label
  std::size_t module_index;   ///< its position among the model's Checkpointed layers in `modules()` order
  std::int64_t stash_bytes = 0;  ///< its inputs: what checkpointing keeps and offloading moves
  std::int64_t held_bytes[profiled_modes] = {};
  std::int64_t forward_peak_bytes[profiled_modes] = {};
  std::int64_t backward_peak_bytes[profiled_modes] = {};
  double forward_ms[profiled_modes] = {};
  double backward_ms[profiled_modes] = {};
  double recompute_ms = 0;  ///< checkpointed: from its backward's start to the recompute's end
  double offload_ms = 0;  ///< the sync device-to-host copy of its stash
  double restore_ms = 0;  ///< the sync host-to-device copy back
  /// Kept run: bytes of the activations autograd saves in its forward, parameters and buffers
  /// aside, each storage once (what offload-saved moves each way).
  std::int64_t saved_bytes = 0;
};

/// One segment of a step that is not a chain: from one layer boundary (a forward's begin or
/// end, a backward's begin) to the next, measured in each uniform run (`ProfiledMode` index).
/// Levels and peaks are absolute, as the meter reads them (with `reserve_bytes`).
struct StepPoint {
  std::int64_t level[profiled_modes] = {};  ///< bytes at the segment's start
  std::int64_t peak[profiled_modes] = {};   ///< highest bytes until the next boundary (the step's end for the last)
  double ms = 0;                            ///< its duration in the kept run
};

/// One forward call of a Checkpointed layer in a step that is not a chain (a layer that runs
/// three times has three calls), in the order the forwards ran. Points index `StepProfile::points`.
struct CallProfile {
  std::size_t layer = 0;          ///< index into `StepProfile::layers`
  std::size_t forward_point = 0;  ///< the segment its forward runs in
  std::size_t end_point = 0;      ///< the segment that starts as its forward ends
  /// The segment its backward starts (a layer's backward calls are matched to its forward calls
  /// last-in first-out: the newest call whose backward has not started); none: no backward.
  std::optional<std::size_t> backward_point;
  std::int64_t held_bytes[profiled_modes] = {};  ///< bytes added from its forward's begin to its end
  std::int64_t stash_bytes = 0;   ///< its inputs (sync run): what checkpointing keeps and offloading moves
  std::int64_t saved_bytes = 0;   ///< kept run: the activations autograd saved in its forward
  double recompute_ms = 0;        ///< checkpointed run: its backward's start to its recompute's end
};

/// What `profile_step` measured. Bytes are as the meter reads them (see PlannerOptions::meter).
struct StepProfile {
  std::vector<LayerProfile> layers;  ///< in forward order
  std::int64_t start_bytes = 0;      ///< device bytes when the first layer's forward starts (kept run)
  std::int64_t head_peak_bytes = 0;  ///< peak before the first layer's forward
  std::int64_t tail_peak_bytes = 0;  ///< above the last forward's end level, until the last backward
  double tail_ms = 0;                ///< from the last forward's end to the last backward's start
  double step_ms[profiled_modes] = {};             ///< the whole step, per configuration
  std::int64_t step_peak_bytes[profiled_modes] = {};  ///< its measured peak, per configuration
  double d2h_bytes_per_s = 0;  ///< measured (sync copies); 0: nothing was copied
  double h2d_bytes_per_s = 0;
  bool host_memory_separate = false;  ///< the device is not the CPU
  /// Call level: empty for a chain (each layer's forward once, backwards in reverse order, the
  /// model of cost_model.hpp); otherwise every forward call and every segment of the step, the
  /// model of call_model.hpp. In a call-level profile `layers` holds one entry per distinct
  /// layer (first forward first) with its label and module index; its per-mode figures are sums
  /// over the layer's calls, for reading only.
  std::vector<CallProfile> calls;
  std::vector<StepPoint> points;
  bool is_chain() const { return calls.empty(); }
};

/// Costs the solver uses instead of the measured ones: tests and what-if questions (for example
/// a GPU's bandwidth and separate host memory, on a CPU).
struct OffloadCosts {
  std::optional<double> d2h_bytes_per_s;
  std::optional<double> h2d_bytes_per_s;
  std::optional<bool> host_memory_separate;
  /// The disk store's bandwidths (bytes/s), for `LayerChoice::disk_offload`: given, or measured
  /// with `measure_disk_bandwidth(store)` (planner/disk_probe.hpp; `plan_memory` probes
  /// `PlannerOptions::disk_store`). Without both, no layer goes to disk.
  std::optional<double> disk_write_bytes_per_s;
  std::optional<double> disk_read_bytes_per_s;
};


/// A plan's predicted peak (bytes, as the meter reads them) and step time.
struct PlanEstimate {
  std::int64_t peak_bytes = 0;
  double step_ms = 0;
  /// Bytes the plan holds in host memory at its host peak (planner/tier_model.hpp): the host-tier
  /// stashes of a chain's offloading layers, all there at the end of the forward pass.
  std::int64_t host_bytes = 0;
};

/// The planner's answer.
struct MemoryPlan {
  std::vector<LayerChoice> choices;       ///< per layer, forward order
  std::vector<std::string> labels;        ///< the layers' labels, forward order
  std::vector<std::size_t> module_index;  ///< where each layer is among the model's Checkpointed layers
  std::int64_t budget_bytes = 0;
  std::int64_t predicted_peak_bytes = 0;
  double predicted_step_ms = 0;
  /// The host budget the plan was made for (`PlannerOptions::host_budget_bytes`; none: unlimited)
  /// and the bytes it puts in host memory at its host peak, which never exceed it.
  std::optional<std::int64_t> host_budget_bytes;
  std::int64_t predicted_host_bytes = 0;
  /// Call-level plans: the forward calls of one step in order (positions in `choices`); a step
  /// that calls them otherwise is reported by `PlanMonitor` (planner.hpp). Empty for chains.
  std::vector<std::size_t> call_sequence;
  /// The search's proven bound on how much slower (relative) this plan's predicted step time is
  /// than the fastest plan that fits: 0 when the search was exact.
  double time_gap_bound = 0;

  /// "layers 0-5 checkpoint, 6-7 keep" (forward order, 0-based); a plan made for a host budget
  /// adds its host bytes and that budget: "...; host 12.00 MiB of 16.00 MiB".
  std::string describe() const;
  /// Sets each layer's StashOptions (the pool exhaustion behaviour it had is kept). The model
  /// must have the Checkpointed layers it was profiled with. Defined in planner.hpp: it needs
  /// torch::nn, which this header and the search do without.
  inline void apply(torch::nn::Module& model) const;
};

/// The `ProfiledMode`'s index into a `LayerProfile`'s and `StepProfile`'s arrays.
constexpr std::size_t mode_index(ProfiledMode m) noexcept { return static_cast<std::size_t>(m); }

namespace detail::planner {

/// Bytes as the planner's errors show them: MiB to read, the exact count to compare.
inline std::string mib(std::int64_t bytes) {
  std::ostringstream s;
  s.precision(2);
  s << std::fixed << static_cast<double>(bytes) / 1048576.0 << " MiB (" << bytes << " bytes)";
  return s.str();
}

/// The StashOptions that carry out `choice`; `base` gives what the plan does not decide.
inline StashOptions options_for(LayerChoice choice, StashOptions base) {
  // Offload saved runs the layer once (as keep); `checkpoint` is not read then, false says so.
  base.checkpoint = choice != LayerChoice::keep && choice != LayerChoice::offload_saved;
  base.offload_saved = choice == LayerChoice::offload_saved;
  base.keep_on_device = 0;     // async: every stash starts moving when its layer's forward ends
  base.min_offload_bytes = 1;  // the model moves every non-empty stash
  // The tier is the plan's: a layer whose policy was DiskOffload goes to the host pool when the
  // plan says so, and only a disk offload goes to disk.
  base.tier = choice == LayerChoice::disk_offload ? StashTier::disk : StashTier::host;
  switch (choice) {
    case LayerChoice::keep:
    case LayerChoice::checkpoint: base.mode = StashMode::device; break;
    case LayerChoice::sync_offload: base.mode = StashMode::sync_host; break;
    case LayerChoice::async_offload:
    case LayerChoice::offload_saved:
    case LayerChoice::disk_offload: base.mode = StashMode::async_host; break;
  }
  return base;
}

}  // namespace detail::planner

inline std::string MemoryPlan::describe() const {
  std::ostringstream s;
  for (std::size_t i = 0; i < choices.size();) {
    std::size_t j = i;
    while (j + 1 < choices.size() && choices[j + 1] == choices[i]) ++j;
    if (i > 0) s << ", ";
    s << (i == j ? "layer " : "layers ") << i;
    if (j > i) s << "-" << j;
    s << " " << to_string(choices[i]);
    i = j + 1;
  }
  if (host_budget_bytes) {
    s.precision(2);
    s << std::fixed << "; host " << static_cast<double>(predicted_host_bytes) / 1048576.0 << " MiB of "
      << static_cast<double>(*host_budget_bytes) / 1048576.0 << " MiB";
  }
  return s.str();
}

}  // namespace actckpt
