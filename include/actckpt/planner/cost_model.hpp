#pragma once
/// \file cost_model.hpp
/// The cost model: from a `StepProfile`, each choice's bytes and extra time per layer
/// (`detail::planner::CostModel`, shared by the search so that both agree exactly) and a whole
/// plan's predicted peak and step time (`evaluate_plan`). This is the chain model; a call-level
/// profile (a step that is not a chain) is evaluated by call_model.hpp's.
///
/// ## Cost model (`evaluate_plan`)
/// Memory, for a plan c_0..c_{L-1}, with S_k = start_bytes + sum_{m<k} held(m, c_m):
///  - forward of k:  S_k + forward_peak(k, c_k) + in_flight_{k-1}
///  - backward of k: S_k + backward_peak(k, c_k) + prefetched_k
///  - loss/tail:     S_L + tail_peak + in_flight_{L-1};  and the peak before the first layer.
/// The predicted peak is the largest of these. A checkpointed layer's figures come from the
/// checkpointed run, a kept one's from the kept run. Offloaded layers use the sync run's figures
/// only where host memory is separate from the device's (CUDA, or injected): on CPU host and
/// device are the same memory, so an offloaded layer costs what a checkpointed one does and an
/// offloading plan never saves memory there. Async offload (keep-N 0: each stash starts moving as
/// its layer's forward ends) adds two transients: `in_flight_k` = the bytes its offload frees,
/// still on the device while the next layer runs forward; `prefetched_k` = the stash of the
/// highest async layer below k, brought back while k runs backward, when an async layer at or
/// above k triggers that prefetch (the stash stack prefetches the stash below the one restored).
/// Offload saved (only where host memory is separate, and only for a layer that saved something):
/// the layer runs as kept, so its forward and backward peaks are the kept run's (conservative:
/// nothing counted as gone before its forward ends); it holds `max(held(checkpointed),
/// held(kept) - saved_bytes)` (its output stays: the layer above uses it). What it frees,
/// `held(kept) - held(offload saved)`, is still in flight while the next layer runs forward
/// (`in_flight_k`), and comes back while the layer above runs backward (prefetched a layer
/// ahead: `saved_prefetched_k` on top of layer k+1's backward peak).
///
/// Time: the kept run's step time plus, per layer, the extra of its choice:
///  - checkpoint: its measured recompute (a direct measurement: differences of whole forward and
///    backward spans between two runs drown in a busy machine's noise and can come out negative);
///  - sync offload: checkpoint's extra + stash/bandwidth_d2h + stash/bandwidth_h2d;
///  - async offload: checkpoint's extra + the copy time that does not hide: the device-to-host
///    copy behind the next layer's forward (the loss for the last layer), the host-to-device
///    prefetch behind the backward of the layer above, if an async layer above triggers it (else
///    nothing hides it). The real window can be longer (several layers), never shorter.
///  - offload saved: no recompute; saved_bytes/bandwidth_d2h beyond the next layer's forward (the
///    loss for the last layer) and saved_bytes/bandwidth_h2d beyond the backward of the layer
///    above (the last layer: nothing hides its restore).
///  - disk offload: as async offload, with the copies through the disk store (tier_model.hpp):
///    its memory terms are async offload's, its host bytes none.
/// Host bytes (`PlanEstimate::host_bytes`): the sum of the host-tier layers' (tier_model.hpp).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/planner/call_model.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/planner/tier_model.hpp"

namespace actckpt {
namespace detail::planner {

/// Per-layer quantities of one choice, as the cost model sees them.
struct ChoiceCost {
  std::int64_t held, forward_peak, backward_peak;
  double extra_ms;
};

/// The cost model, shared by the search and `evaluate_plan` so that both agree exactly.
class CostModel {
 public:
  CostModel(const StepProfile& p, const OffloadCosts& costs) : p_(p) {
    separate_ = costs.host_memory_separate.value_or(p.host_memory_separate);
    d2h_ = costs.d2h_bytes_per_s.value_or(p.d2h_bytes_per_s);
    h2d_ = costs.h2d_bytes_per_s.value_or(p.h2d_bytes_per_s);
    ACTCKPT_CHECK(d2h_ >= 0 && h2d_ >= 0, UsageError, "actckpt: offload bandwidths must not be negative");
    disk_ = disk_rates(costs);
  }
  std::size_t size() const { return p_.layers.size(); }
  /// Disk offload may be chosen: disk bandwidths given, and the link's where host memory is separate.
  bool can_disk() const { return disk_.known() && (!separate_ || can_offload()); }
  bool can_offload() const { return d2h_ > 0 && h2d_ > 0; }
  /// Offload saved may be chosen for layer k: host memory is separate (on CPU it would save
  /// nothing and cost copies), copies can be timed, and the layer saved something.
  bool can_offload_saved(std::size_t k) const { return separate_ && can_offload() && p_.layers[k].saved_bytes > 0; }
  bool allows(std::size_t k, LayerChoice c) const {
    switch (c) {
      case LayerChoice::keep:
      case LayerChoice::checkpoint: return true;
      case LayerChoice::sync_offload:
      case LayerChoice::async_offload: return can_offload();
      case LayerChoice::offload_saved: return can_offload_saved(k);
      case LayerChoice::disk_offload: return can_disk();
    }
    return false;
  }
  /// Bytes layer k puts in host memory under `c` (tier_model.hpp).
  std::int64_t host_bytes(std::size_t k, LayerChoice c) const { return host_tier_bytes(p_.layers[k], c); }

  /// `prefetched_from_above`: (async) an async layer above triggers this layer's prefetch.
  ChoiceCost cost(std::size_t k, LayerChoice c, bool prefetched_from_above) const {
    const auto& l = p_.layers[k];
    const auto K = idx(ProfiledMode::keep), C = idx(ProfiledMode::checkpoint), S = idx(ProfiledMode::sync_offload);
    const double ckpt_extra = l.recompute_ms;
    const bool runs_once = c == LayerChoice::keep || c == LayerChoice::offload_saved;
    const std::size_t mem = runs_once ? K : (c == LayerChoice::checkpoint || !separate_) ? C : S;
    ChoiceCost r{l.held_bytes[mem], l.forward_peak_bytes[mem], l.backward_peak_bytes[mem], 0.0};
    double out_ms = copy_ms(l.stash_bytes, d2h_), in_ms = copy_ms(l.stash_bytes, h2d_);
    if (c == LayerChoice::disk_offload) {
      const auto disk = disk_copy_ms(l.stash_bytes, disk_, separate_ ? d2h_ : 0.0, separate_ ? h2d_ : 0.0);
      out_ms = disk.out_ms, in_ms = disk.back_ms;
    }
    switch (c) {
      case LayerChoice::keep: break;
      case LayerChoice::offload_saved: {
        r.held = saved_held(k);
        const bool top = k + 1 == size();
        const double forward_window = top ? p_.tail_ms : p_.layers[k + 1].forward_ms[K];
        const double backward_window = top ? 0.0 : p_.layers[k + 1].backward_ms[K];
        r.extra_ms = std::max(0.0, copy_ms(l.saved_bytes, d2h_) - forward_window) +
                     std::max(0.0, copy_ms(l.saved_bytes, h2d_) - backward_window);
        break;
      }
      case LayerChoice::checkpoint: r.extra_ms = ckpt_extra; break;
      case LayerChoice::sync_offload: r.extra_ms = ckpt_extra + out_ms + in_ms; break;
      case LayerChoice::async_offload:
      case LayerChoice::disk_offload: {
        const bool top = k + 1 == size();
        const double forward_window = top ? p_.tail_ms : p_.layers[k + 1].forward_ms[K];
        const double backward_window = prefetched_from_above && !top ? p_.layers[k + 1].backward_ms[K] : 0.0;
        r.extra_ms = ckpt_extra + std::max(0.0, out_ms - forward_window) + std::max(0.0, in_ms - backward_window);
        break;
      }
    }
    return r;
  }
  /// Bytes an async offload of layer k frees once its copy is done (still there while in flight).
  std::int64_t freed(std::size_t k) const {
    if (!separate_) return 0;
    const auto& l = p_.layers[k];
    return std::max<std::int64_t>(0, l.held_bytes[idx(ProfiledMode::checkpoint)] - l.held_bytes[idx(ProfiledMode::sync_offload)]);
  }
  /// Offload saved: what layer k holds until its backward (its output at least).
  std::int64_t saved_held(std::size_t k) const {
    const auto& l = p_.layers[k];
    if (!separate_) return l.held_bytes[idx(ProfiledMode::keep)];
    return std::max(l.held_bytes[idx(ProfiledMode::checkpoint)], l.held_bytes[idx(ProfiledMode::keep)] - l.saved_bytes);
  }
  /// Offload saved: the bytes layer k's copies free, in flight during the next layer's forward
  /// and prefetched back during the backward of the layer above.
  std::int64_t saved_freed(std::size_t k) const {
    return std::max<std::int64_t>(0, p_.layers[k].held_bytes[idx(ProfiledMode::keep)] - saved_held(k));
  }
  /// Bytes a prefetch of layer k's stash allocates ahead of its backward.
  std::int64_t prefetch_bytes(std::size_t k) const { return separate_ ? p_.layers[k].stash_bytes : 0; }
  const StepProfile& profile() const { return p_; }

  static std::size_t idx(ProfiledMode m) { return mode_index(m); }

 private:
  static double copy_ms(std::int64_t bytes, double per_s) { return per_s > 0 ? 1e3 * static_cast<double>(bytes) / per_s : 0.0; }
  const StepProfile& p_;
  bool separate_ = false;
  double d2h_ = 0, h2d_ = 0;
  DiskRates disk_;
};

}  // namespace detail::planner

/// The cost model's prediction for `choices` (see the file comment).
inline PlanEstimate evaluate_plan(const StepProfile& profile, const std::vector<LayerChoice>& choices,
                                  const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  ACTCKPT_CHECK(choices.size() == profile.layers.size(), UsageError, "actckpt::evaluate_plan: ", choices.size(),
              " choices for a profile of ", profile.layers.size(), " layers");
  if (!profile.is_chain()) {  // several calls per layer, several backwards: call_model.hpp
    const CallModel calls(profile, costs);
    for (std::size_t k = 0; k < choices.size(); ++k)
      ACTCKPT_CHECK(calls.allows(k, choices[k]), UsageError, "actckpt::evaluate_plan: layer ", k, " is '",
                    to_string(choices[k]), "', which this profile cannot do (offloading needs measured or given "
                    "bandwidths; offload saved also host memory separate from the device's and saved activations)");
    return evaluate_calls(calls, choices);
  }
  const CostModel model(profile, costs);
  const std::size_t n = choices.size();
  PlanEstimate e;
  e.peak_bytes = profile.head_peak_bytes;
  e.step_ms = profile.step_ms[CostModel::idx(ProfiledMode::keep)];
  std::int64_t held = 0, in_flight = 0, prefetch_bytes = 0, saved_prefetch = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const auto c = choices[k];
    ACTCKPT_CHECK(model.can_offload() || (c != LayerChoice::sync_offload && c != LayerChoice::async_offload &&
                                          c != LayerChoice::offload_saved), UsageError,
                "actckpt::evaluate_plan: layer ", k, " offloads, but no offload bandwidth was measured or given");
    ACTCKPT_CHECK(c != LayerChoice::disk_offload || model.allows(k, c), UsageError, "actckpt::evaluate_plan: layer ", k,
                " is 'disk offload', which needs the disk's bandwidths (OffloadCosts::disk_write_bytes_per_s and "
                "disk_read_bytes_per_s, or measure_disk_bandwidth) and, where host memory is separate, the link's");
    ACTCKPT_CHECK(c != LayerChoice::offload_saved || model.allows(k, c), UsageError, "actckpt::evaluate_plan: layer ", k,
                " is 'offload saved', which needs host memory separate from the device's (here it is the same "
                "memory, so it would save nothing) and a profile that measured the layer's saved activations");
    bool async_above = false;
    for (std::size_t j = k + 1; j < n; ++j) async_above = async_above || prefetched_choice(choices[j]);
    // Prefetch pending: the highest async layer below k has an async layer at or above k.
    const bool pending = prefetch_bytes > 0 && (async_above || prefetched_choice(c));
    const auto cc = model.cost(k, c, async_above);
    const std::int64_t level = profile.start_bytes + held;
    e.peak_bytes = std::max({e.peak_bytes, level + cc.forward_peak + in_flight,
                             level + cc.backward_peak + (pending ? prefetch_bytes : 0) + saved_prefetch});
    e.step_ms += cc.extra_ms;
    e.host_bytes += model.host_bytes(k, c);
    held += cc.held;
    in_flight = prefetched_choice(c) ? model.freed(k)
              : c == LayerChoice::offload_saved ? model.saved_freed(k)
                                                : 0;
    saved_prefetch = c == LayerChoice::offload_saved ? model.saved_freed(k) : 0;
    if (prefetched_choice(c)) prefetch_bytes = model.prefetch_bytes(k);
  }
  e.peak_bytes = std::max(e.peak_bytes, profile.start_bytes + held + profile.tail_peak_bytes + in_flight);
  return e;
}

}  // namespace actckpt
