#pragma once
/// \file call_model.hpp
/// The cost model and the search for steps that are not chains (a call-level `StepProfile`:
/// a layer that runs its forward several times, several backward calls, shared layers,
/// accumulated micro-batches). Chains keep the model of cost_model.hpp and the search of
/// search.hpp; `evaluate_plan`, `plan_for_budget` and `smallest_feasible_budget` send a
/// call-level profile here. Needs no torch::nn.
///
/// ## Memory model
/// The step is a sequence of segments (`StepPoint`), each measured in the three uniform runs.
/// A plan makes one choice per layer, applied to each of its calls. The predicted peak of
/// segment j is the kept run's peak there plus, per layer, what its choice changes there, added
/// over its calls i:
///  - while the call's activations would live (from its forward's end to its backward's start,
///    both segments included): minus its saving, `held(i, kept) - held(i, run of the choice)`
///    (checkpoint: the checkpointed run; sync and async offload: the sync run where host memory
///    is separate, else the checkpointed one; offload saved: `held(kept) - max(held(checkpointed),
///    held(kept) - saved)`);
///  - in its forward's and its backward's own segment: the difference between the choice's run
///    and the kept run of the peak above the segment's start level (the recompute's transient);
///  - async offload, where host memory is separate: the bytes its offload frees are still there
///    during the segment after its forward (in flight), and are back from the earliest backward
///    that may trigger its prefetch (that of a call whose forward came after it and whose
///    backward comes before its own) to its backward; offload saved likewise with what its
///    copies free. Both are upper bounds of when those bytes exist.
/// So a plan's peak is `max_j (kept peak_j + sum over layers f(layer, choice, j))`: additive
/// per layer, one constraint per segment (and the peak before the first layer).
/// Time: the kept step plus, per layer, its choice's extra summed over its calls, as in the chain
/// model (recompute; copies at the measured or given bandwidths; an async copy hidden behind the
/// segment after its forward, its prefetch behind the window above).
///
/// ## Search
/// Branch and bound over the layers (those whose choice moves memory most first), each layer's
/// choices fastest first: a partial plan is dropped when some segment cannot fit even with
/// every undecided layer at its least bytes there, or when its time plus every undecided layer's
/// cheapest extra cannot beat the best plan found. Exact when it finishes; it stops after
/// `call_search_work` (segment x node) steps, and then the plan's `time_gap_bound` is what the
/// dropped subtrees' lower bounds prove: the returned plan is at most that much slower than the
/// fastest plan that fits. The smallest feasible budget is the same search minimizing the peak.
///
/// ## Host budget and disk (tier_model.hpp)
/// A plan's host bytes are those of every offloading call at once (sync and async offload: the
/// call's stash; offload saved: its saved activations), an upper bound of its host peak; with a
/// host budget the branch and bound drops a partial plan whose host bytes exceed it (they only
/// grow). Disk offload is not modelled at call level: a call-level plan never chooses it.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/planner/tier_model.hpp"

namespace actckpt {
namespace detail::planner {

inline constexpr LayerChoice all_choices[] = {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload,
                                              LayerChoice::async_offload, LayerChoice::offload_saved};
inline constexpr std::size_t choice_count = 5;
/// The call-level search's work limit (segments x nodes visited) before it stops and bounds its gap.
inline constexpr std::uint64_t call_search_work = 200'000'000;

/// Per layer and choice, its bytes at every segment (relative to the kept run) and its extra time.
class CallModel {
 public:
  CallModel(const StepProfile& p, const OffloadCosts& costs) : p_(p) {
    ACTCKPT_CHECK(!p.calls.empty(), UsageError, "actckpt: a call-level cost model needs a call-level profile");
    separate_ = costs.host_memory_separate.value_or(p.host_memory_separate);
    d2h_ = costs.d2h_bytes_per_s.value_or(p.d2h_bytes_per_s);
    h2d_ = costs.h2d_bytes_per_s.value_or(p.h2d_bytes_per_s);
    ACTCKPT_CHECK(d2h_ >= 0 && h2d_ >= 0, UsageError, "actckpt: offload bandwidths must not be negative");
    n_ = p.layers.size();
    m_ = p.points.size();
    bytes_.assign(n_ * choice_count * m_, 0);
    ms_.assign(n_ * choice_count, 0.0);
    saved_.assign(n_, 0);
    host_.assign(n_ * choice_count, 0);
    for (const auto& call : p.calls) {
      ACTCKPT_CHECK(call.layer < n_ && call.forward_point < m_ && call.end_point < m_ &&
                        (!call.backward_point || *call.backward_point < m_),
                    UsageError, "actckpt: a call of the profile points outside its layers or segments");
      saved_[call.layer] += call.saved_bytes;
      for (std::size_t c = 0; c < choice_count; ++c) {
        LayerProfile as_layer;  // the call's bytes, as tier_model.hpp reads a layer's
        as_layer.stash_bytes = call.stash_bytes;
        as_layer.saved_bytes = call.saved_bytes;
        host_[call.layer * choice_count + c] += host_tier_bytes(as_layer, all_choices[c]);
      }
    }
    for (std::size_t ci = 0; ci < p.calls.size(); ++ci)
      for (std::size_t c = 0; c < choice_count; ++c)
        if (allows(p.calls[ci].layer, all_choices[c])) add_call(ci, all_choices[c]);
  }
  std::size_t layers() const { return n_; }
  std::size_t points() const { return m_; }
  bool can_offload() const { return d2h_ > 0 && h2d_ > 0; }
  bool allows(std::size_t layer, LayerChoice c) const {
    switch (c) {
      case LayerChoice::keep:
      case LayerChoice::checkpoint: return true;
      case LayerChoice::sync_offload:
      case LayerChoice::async_offload: return can_offload();
      case LayerChoice::offload_saved: return separate_ && can_offload() && saved_[layer] > 0;
      case LayerChoice::disk_offload: return false;  // not modelled at call level (file comment)
    }
    return false;
  }
  /// What `layer` choosing `c` adds to each segment's kept peak.
  const std::int64_t* bytes(std::size_t layer, LayerChoice c) const {
    return &bytes_[(layer * choice_count + static_cast<std::size_t>(c)) * m_];
  }
  double extra_ms(std::size_t layer, LayerChoice c) const { return ms_[layer * choice_count + static_cast<std::size_t>(c)]; }
  /// Host bytes of `layer`'s calls under `c`, all counted at once (file comment).
  std::int64_t host_bytes(std::size_t layer, LayerChoice c) const {
    return c == LayerChoice::disk_offload ? 0 : host_[layer * choice_count + static_cast<std::size_t>(c)];
  }
  /// The kept run's peak in segment j: every plan's bytes there are this plus the layers' terms.
  std::int64_t base(std::size_t j) const { return p_.points[j].peak[0]; }
  const StepProfile& profile() const { return p_; }

 private:
  static double copy_ms(std::int64_t bytes, double per_s) { return per_s > 0 ? 1e3 * static_cast<double>(bytes) / per_s : 0.0; }
  std::int64_t* at(std::size_t layer, LayerChoice c) { return &bytes_[(layer * choice_count + static_cast<std::size_t>(c)) * m_]; }
  /// The peak above the start level of segment j in run r.
  std::int64_t rise(std::size_t j, std::size_t r) const { return p_.points[j].peak[r] - p_.points[j].level[r]; }

  void add_call(std::size_t ci, LayerChoice c) {
    const auto& call = p_.calls[ci];
    const std::size_t K = mode_index(ProfiledMode::keep), C = mode_index(ProfiledMode::checkpoint),
                      S = mode_index(ProfiledMode::sync_offload);
    const bool runs_once = c == LayerChoice::keep || c == LayerChoice::offload_saved;
    const bool offloads = c == LayerChoice::sync_offload || c == LayerChoice::async_offload;
    const std::size_t run = runs_once ? K : (offloads && separate_) ? S : C;
    std::int64_t* f = at(call.layer, c);
    double& ms = ms_[call.layer * choice_count + static_cast<std::size_t>(c)];
    if (c == LayerChoice::keep) return;
    // Its saving while its activations would live.
    std::int64_t saving = call.held_bytes[K] - call.held_bytes[run];
    std::int64_t moved = 0;  // bytes its copies free: in flight after its forward, back before its backward
    if (c == LayerChoice::offload_saved) {
      const std::int64_t held = std::max(call.held_bytes[C], call.held_bytes[K] - call.saved_bytes);
      saving = call.held_bytes[K] - held;
      moved = std::max<std::int64_t>(0, saving);
    }
    if (c == LayerChoice::async_offload && separate_) moved = std::max<std::int64_t>(0, call.held_bytes[C] - call.held_bytes[S]);
    const std::size_t last_alive = call.backward_point.value_or(call.end_point);
    if (call.backward_point)  // no backward: nothing is assumed freed
      for (std::size_t j = call.end_point; j <= last_alive; ++j) f[j] -= saving;
    // The recompute's (or the copies') transient in its own forward and backward.
    if (run != K) {
      f[call.forward_point] += rise(call.forward_point, run) - rise(call.forward_point, K);
      if (call.backward_point) f[*call.backward_point] += rise(*call.backward_point, run) - rise(*call.backward_point, K);
    }
    // Time.
    const double after_forward_ms = p_.points[call.end_point].ms;
    double window_ms = 0;
    std::optional<std::size_t> trigger;
    if (call.backward_point) {
      for (const auto& other : p_.calls)
        if (other.forward_point > call.forward_point && other.backward_point && *other.backward_point < *call.backward_point)
          trigger = std::min(trigger.value_or(*other.backward_point), *other.backward_point);
      if (trigger)
        for (std::size_t j = *trigger; j < *call.backward_point; ++j) window_ms += p_.points[j].ms;
    }
    if (c != LayerChoice::offload_saved) ms += call.recompute_ms;
    const std::int64_t copied = c == LayerChoice::offload_saved ? call.saved_bytes : call.stash_bytes;
    if (c == LayerChoice::sync_offload) ms += copy_ms(copied, d2h_) + copy_ms(copied, h2d_);
    if (c == LayerChoice::async_offload || c == LayerChoice::offload_saved)
      ms += std::max(0.0, copy_ms(copied, d2h_) - after_forward_ms) + std::max(0.0, copy_ms(copied, h2d_) - window_ms);
    // Async transients (upper bounds): in flight after the forward, back from the earliest trigger.
    if (moved > 0) {
      f[call.end_point] += moved;
      if (trigger) {
        const std::size_t until = c == LayerChoice::offload_saved ? *call.backward_point : *call.backward_point - 1;
        for (std::size_t j = *trigger; j <= until && j < m_; ++j) f[j] += moved;
      }
    }
  }

  const StepProfile& p_;
  bool separate_ = false;
  double d2h_ = 0, h2d_ = 0;
  std::size_t n_ = 0, m_ = 0;
  std::vector<std::int64_t> bytes_;  // [layer][choice][segment]
  std::vector<double> ms_;           // [layer][choice]
  std::vector<std::int64_t> saved_;  // per layer, over its calls
  std::vector<std::int64_t> host_;   // [layer][choice]: host bytes over its calls
};

/// A call-level plan's predicted peak and step time.
inline PlanEstimate evaluate_calls(const CallModel& model, const std::vector<LayerChoice>& choices) {
  const auto& p = model.profile();
  PlanEstimate e;
  e.peak_bytes = p.head_peak_bytes;
  e.step_ms = p.step_ms[mode_index(ProfiledMode::keep)];
  std::vector<std::int64_t> at(model.points(), 0);
  for (std::size_t j = 0; j < model.points(); ++j) at[j] = model.base(j);
  for (std::size_t l = 0; l < choices.size(); ++l) {
    const auto* f = model.bytes(l, choices[l]);
    for (std::size_t j = 0; j < model.points(); ++j) at[j] += f[j];
    e.step_ms += model.extra_ms(l, choices[l]);
    e.host_bytes += model.host_bytes(l, choices[l]);
  }
  for (auto b : at) e.peak_bytes = std::max(e.peak_bytes, b);
  return e;
}

/// What the call-level search found.
struct CallSearchResult {
  std::optional<std::vector<LayerChoice>> choices;
  double ms = 0;             // the plan's extra time (or its peak, minimizing the peak)
  double lower_bound = 0;    // no plan that fits is faster (lower) than this
  bool exact = true;
};

/// The branch and bound of the file comment. `minimize_peak`: ignore time and find the plan with
/// the least peak (its `ms` is then that peak, in bytes). `work`: the search's limit.
/// `host_budget`: the most host bytes a plan may hold (none: unlimited).
inline CallSearchResult search_calls(const CallModel& model, std::optional<std::int64_t> budget, bool minimize_peak,
                                     std::uint64_t work = call_search_work,
                                     std::optional<std::int64_t> host_budget = std::nullopt) {
  const std::size_t n = model.layers(), m = model.points();
  const auto& p = model.profile();
  CallSearchResult result;
  const std::int64_t limit = budget.value_or(std::numeric_limits<std::int64_t>::max() / 4);
  if (p.head_peak_bytes > limit) return result;
  // Layers ordered by how much their choice moves memory (the most first: they prune most).
  std::vector<std::size_t> order(n);
  std::vector<std::int64_t> spread(n, 0);
  for (std::size_t l = 0; l < n; ++l) {
    order[l] = l;
    for (std::size_t j = 0; j < m; ++j) {
      std::int64_t lo = std::numeric_limits<std::int64_t>::max(), hi = std::numeric_limits<std::int64_t>::min();
      for (auto c : all_choices)
        if (model.allows(l, c)) lo = std::min(lo, model.bytes(l, c)[j]), hi = std::max(hi, model.bytes(l, c)[j]);
      spread[l] = std::max(spread[l], hi - lo);
    }
  }
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return spread[a] > spread[b]; });
  // From depth d on: each segment's least bytes and the least extra time the undecided layers add.
  std::vector<std::int64_t> least((n + 1) * m, 0);
  std::vector<double> least_ms(n + 1, 0.0);
  std::vector<std::vector<LayerChoice>> by_time(n);
  for (std::size_t d = n; d-- > 0;) {
    const std::size_t l = order[d];
    double cheapest = std::numeric_limits<double>::infinity();
    for (auto c : all_choices) {
      if (!model.allows(l, c)) continue;
      by_time[d].push_back(c);
      cheapest = std::min(cheapest, model.extra_ms(l, c));
    }
    // Fastest first (peak search: least bytes in total first).
    std::stable_sort(by_time[d].begin(), by_time[d].end(), [&](LayerChoice a, LayerChoice b) {
      if (minimize_peak) {
        std::int64_t sa = 0, sb = 0;
        for (std::size_t j = 0; j < m; ++j) sa += model.bytes(l, a)[j], sb += model.bytes(l, b)[j];
        return sa < sb;
      }
      return model.extra_ms(l, a) < model.extra_ms(l, b);
    });
    least_ms[d] = least_ms[d + 1] + cheapest;
    for (std::size_t j = 0; j < m; ++j) {
      std::int64_t lo = std::numeric_limits<std::int64_t>::max();
      for (auto c : by_time[d]) lo = std::min(lo, model.bytes(l, c)[j]);
      least[d * m + j] = least[(d + 1) * m + j] + lo;
    }
  }
  std::vector<std::int64_t> sum((n + 1) * m, 0);  // sum[d]: base plus the decided layers' bytes
  for (std::size_t j = 0; j < m; ++j) sum[j] = model.base(j);
  std::vector<LayerChoice> current(n, LayerChoice::keep);
  double best = std::numeric_limits<double>::infinity();
  double open_bound = std::numeric_limits<double>::infinity();  // least bound of the subtrees left unexplored
  std::uint64_t spent = 0;
  const double slack = 1e-9;
  // Depth-first, explicit stack of (depth, next choice index, time so far).
  struct Frame {
    std::size_t next;
    double ms;
    std::int64_t host;  // the decided layers' host bytes
  };
  const std::int64_t host_limit = host_budget.value_or(std::numeric_limits<std::int64_t>::max() / 4);
  std::vector<Frame> stack{{0, 0.0, 0}};
  while (!stack.empty()) {
    const std::size_t d = stack.size() - 1;
    Frame& fr = stack.back();
    if (d == n) {  // a complete plan
      std::int64_t peak = p.head_peak_bytes;
      for (std::size_t j = 0; j < m; ++j) peak = std::max(peak, sum[n * m + j]);
      const double value = minimize_peak ? static_cast<double>(peak) : fr.ms;
      if (peak <= limit && value < best) {
        best = value;
        result.choices = current;
      }
      stack.pop_back();
      continue;
    }
    if (fr.next >= by_time[d].size()) {
      stack.pop_back();
      continue;
    }
    const LayerChoice c = by_time[d][fr.next++];
    const std::size_t l = order[d];
    const double ms = fr.ms + model.extra_ms(l, c);
    const std::int64_t host = fr.host + model.host_bytes(l, c);
    spent += m + 1;
    if (spent > work) {  // out of work: bound what is left unexplored, and stop
      for (const auto& f : stack) open_bound = std::min(open_bound, f.ms + least_ms[&f - stack.data()]);
      result.exact = false;
      break;
    }
    const std::int64_t* f = model.bytes(l, c);
    const std::int64_t* below = &sum[d * m];
    const std::int64_t* rest = &least[(d + 1) * m];
    std::int64_t bound_peak = p.head_peak_bytes;
    bool fits = true;
    for (std::size_t j = 0; j < m; ++j) {
      const std::int64_t v = below[j] + f[j] + rest[j];
      bound_peak = std::max(bound_peak, v);
      if (v > limit) {
        fits = false;
        break;
      }
    }
    if (!fits || host > host_limit) continue;
    const double bound = minimize_peak ? static_cast<double>(bound_peak) : ms + least_ms[d + 1];
    if (best != std::numeric_limits<double>::infinity() && !(bound < best - slack * std::max(1.0, std::abs(best)))) continue;
    std::int64_t* next = &sum[(d + 1) * m];
    for (std::size_t j = 0; j < m; ++j) next[j] = below[j] + f[j];
    current[l] = c;
    stack.push_back(Frame{0, ms, host});
  }
  result.ms = best;
  result.lower_bound = std::min(best, open_bound);
  return result;
}

}  // namespace detail::planner
}  // namespace actckpt
