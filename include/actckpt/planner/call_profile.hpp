#pragma once
/// \file call_profile.hpp
/// What one profiled sample step recorded (`Mark`: an event of a planner layer, with the meter
/// read at layer boundaries), and its reduction to calls and segments (`reduce_calls`): every
/// forward call of every Checkpointed layer in the order they ran, every backward matched to a
/// call, and every segment between two boundaries with its start level, its peak and its
/// duration. profiler.hpp uses it for every step; a step that is a chain keeps the chain
/// figures (profiler.hpp's `reduce`), any other becomes a call-level `StepProfile`.
///
/// Backwards are matched to calls per layer, last in first out: a layer's backward belongs to
/// its newest forward call whose backward has not started (a layer applied twice, `f(f(x))`,
/// runs the outer call's backward first; micro-batches and a GAN's separate losses run each
/// backward before the next forward). A recompute's end and a stash's copies belong to the call
/// whose backward, or forward, is the layer's newest.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/planner/plan.hpp"

namespace actckpt {
namespace detail::planner {

/// One event of a profiled step. Boundaries (forward_begin/end, backward_begin) carry the meter
/// readings; copies carry bytes.
struct Mark {
  EventKind kind{};
  std::size_t layer = 0;  // index in modules() order
  double ms = 0;      // since the step started
  std::int64_t bytes_now = 0;
  std::int64_t peak_before = 0;  // the peak since the previous boundary
  std::int64_t copy_bytes = 0;
  /// Boundaries, where the meter tracks releases (CPU): the bytes released since the previous
  /// boundary, per allocation epoch (epoch e: allocated between boundaries e - 1 and e; the
  /// step's start counts as boundary -1).
  std::map<int, std::int64_t> released;
};

inline bool is_boundary(EventKind k) {
  return k == EventKind::forward_begin || k == EventKind::forward_end || k == EventKind::backward_begin;
}

inline constexpr std::size_t no_point = std::numeric_limits<std::size_t>::max();

/// One measured step at call level.
struct CallFigures {
  std::vector<std::pair<EventKind, std::size_t>> signature;  // the boundaries: kind, layer (modules() order)
  std::vector<std::int64_t> level, peak;                     // per segment
  std::vector<double> ms;
  std::vector<std::size_t> layer, forward_point, end_point, backward_point;  // per call (no_point: no backward)
  std::vector<std::int64_t> held, stash, saved;
  std::vector<double> recompute_ms;
  std::int64_t head_peak = 0, start_bytes = 0, step_peak = 0, copied = 0;
  double step_ms = 0, offload_ms = 0, restore_ms = 0;
};

/// The first boundary where two steps' call sequences differ, as "the 3rd boundary: forward
/// of 'd.layer1' where the profile had backward of 'd.layer2'" (empty: the same).
inline std::string first_difference(const std::vector<std::pair<EventKind, std::size_t>>& a,
                                    const std::vector<std::pair<EventKind, std::size_t>>& b,
                                    const std::vector<std::string>& labels) {
  auto name = [&](const std::vector<std::pair<EventKind, std::size_t>>& s, std::size_t i) {
    if (i >= s.size()) return std::string("the step's end");
    return std::string(to_string(s[i].first)) + " of '" + labels[s[i].second] + "'";
  };
  for (std::size_t i = 0; i < std::max(a.size(), b.size()); ++i)
    if (i >= a.size() || i >= b.size() || a[i] != b[i])
      return "boundary " + std::to_string(i + 1) + ": " + name(b, i) + " where the first had " + name(a, i);
  return {};
}

/// Reduces one step's marks to calls and segments (see the file comment). `saved`: per forward
/// call in order, the bytes autograd saved (kept run; empty otherwise).
inline CallFigures reduce_calls(const std::vector<Mark>& marks, std::size_t n, std::int64_t end_peak, double end_ms,
                                const std::vector<std::string>& labels, const std::vector<std::int64_t>& saved) {
  CallFigures f;
  std::vector<const Mark*> bounds;
  for (const auto& m : marks)
    if (is_boundary(m.kind)) bounds.push_back(&m);
  ACTCKPT_CHECK(!bounds.empty(), UsageError, "actckpt::profile_step: no Checkpointed layer ran its forward in the sample "
                "step (is the model in training mode, with grad mode on?)");
  const std::size_t m = bounds.size();
  for (std::size_t j = 0; j < m; ++j) {
    f.signature.emplace_back(bounds[j]->kind, bounds[j]->layer);
    const bool last = j + 1 == m;
    f.level.push_back(bounds[j]->bytes_now);
    f.peak.push_back(std::max({bounds[j]->bytes_now, last ? end_peak : bounds[j + 1]->peak_before,
                               last ? bounds[j]->bytes_now : bounds[j + 1]->bytes_now}));
    f.ms.push_back((last ? end_ms : bounds[j + 1]->ms) - bounds[j]->ms);
  }
  f.start_bytes = bounds[0]->bytes_now;
  f.head_peak = std::max(bounds[0]->peak_before, f.start_bytes);
  f.step_ms = end_ms;
  f.step_peak = std::max(end_peak, f.head_peak);
  for (auto p : f.peak) f.step_peak = std::max(f.step_peak, p);
  std::vector<std::vector<std::size_t>> waiting(n);  // per layer: calls whose backward has not started
  std::vector<std::size_t> seen(n, 0);
  std::size_t open = no_point;  // the call whose forward runs
  for (std::size_t j = 0; j < m; ++j) {
    const auto L = bounds[j]->layer;
    switch (bounds[j]->kind) {
      case EventKind::forward_begin:
        ACTCKPT_CHECK(open == no_point, UsageError, "actckpt::profile_step: layer '", labels[L],
                      "' ran its forward inside the forward of layer '", labels[f.layer[open]],
                      "'; the planner chooses for each Checkpointed layer and cannot plan one inside another: wrap "
                      "the inner layers or the outer one in Checkpointed, not both");
        open = f.layer.size();
        ++seen[L];
        f.layer.push_back(L);
        f.forward_point.push_back(j);
        f.end_point.push_back(no_point);
        f.backward_point.push_back(no_point);
        f.stash.push_back(0);
        f.recompute_ms.push_back(0);
        f.saved.push_back(open < saved.size() ? saved[open] : 0);
        break;
      case EventKind::forward_end:
        ACTCKPT_CHECK(open != no_point && f.layer[open] == L, UsageError, "actckpt::profile_step: layer '", labels[L],
                      "' ended a forward it did not begin");
        f.end_point[open] = j;
        waiting[L].push_back(open);
        open = no_point;
        break;
      default:  // backward_begin
        ACTCKPT_CHECK(!waiting[L].empty(), UsageError, "actckpt::profile_step: layer '", labels[L],
                      "' began more backwards than it ran forwards in the sample step (a backward through the same "
                      "graph twice, retain_graph?); the planner needs each forward call's backward at most once");
        f.backward_point[waiting[L].back()] = j;
        waiting[L].pop_back();
        break;
    }
  }
  ACTCKPT_CHECK(open == no_point, UsageError, "actckpt::profile_step: layer '", labels[f.layer[open]],
                "' did not end its forward within the sample step");
  for (std::size_t L = 0; L < n; ++L)
    ACTCKPT_CHECK(seen[L] > 0, UsageError, "actckpt::profile_step: layer '", labels[L],
                  "' did not run its forward in the sample step; every Checkpointed layer of the model must run in "
                  "the step (is the model in training mode, with grad mode on?)");
  // A layer none of whose calls runs backward is a step without its loss's backward, or a layer
  // the loss does not depend on: nothing to plan (a call without backward among others is fine).
  std::vector<bool> has_backward(n, false);
  for (std::size_t i = 0; i < f.layer.size(); ++i) has_backward[f.layer[i]] = has_backward[f.layer[i]] || f.backward_point[i] != no_point;
  for (std::size_t L = 0; L < n; ++L)
    ACTCKPT_CHECK(has_backward[L], UsageError, "actckpt::profile_step: layer '", labels[L],
                  "' did not run its backward in the sample step; the step must call backward on a loss that "
                  "depends on every Checkpointed layer's output");
  // Copies and recomputes, to the calls they belong to.
  std::vector<std::size_t> forward_now(n, no_point), backward_now(n, no_point);
  std::vector<double> open_offload(n, -1), last_restore(n, -1);
  std::size_t call = 0;
  for (const auto& mk : marks) {
    const auto L = mk.layer;
    switch (mk.kind) {
      case EventKind::forward_begin: forward_now[L] = call++; break;
      case EventKind::backward_begin:
        last_restore[L] = mk.ms;
        for (std::size_t i = 0; i < f.layer.size(); ++i)
          if (f.backward_point[i] != no_point && bounds[f.backward_point[i]] == &mk) backward_now[L] = i;
        break;
      case EventKind::offload_begin:
        if (forward_now[L] != no_point) f.stash[forward_now[L]] += mk.copy_bytes;
        f.copied += mk.copy_bytes;
        open_offload[L] = mk.ms;
        break;
      case EventKind::offload_end:
        if (open_offload[L] >= 0) f.offload_ms += mk.ms - open_offload[L];
        open_offload[L] = -1;
        break;
      case EventKind::restore_end:
        if (last_restore[L] >= 0) f.restore_ms += mk.ms - last_restore[L];
        last_restore[L] = mk.ms;
        break;
      case EventKind::recompute_end:
        if (backward_now[L] != no_point)
          f.recompute_ms[backward_now[L]] = mk.ms - bounds[f.backward_point[backward_now[L]]]->ms;
        break;
      default: break;
    }
  }
  for (std::size_t i = 0; i < f.layer.size(); ++i) f.held.push_back(f.level[f.end_point[i]] - f.level[f.forward_point[i]]);
  return f;
}

/// A call-level `StepProfile` from the measured steps of each uniform run (the same calls in
/// each): per-quantity medians over a run's steps. `shift`: added to the absolute levels
/// (`reserve_bytes`, less the profiler's copies of the buffers).
inline void fill_call_profile(StepProfile& profile, const std::vector<std::vector<CallFigures>>& runs,
                              const std::vector<std::string>& labels, std::int64_t shift) {
  auto median_of = [](auto values) {
    std::sort(values.begin(), values.end());
    return values[values.size() / 2];
  };
  auto med = [&](std::size_t mode, auto get) {
    std::vector<std::decay_t<decltype(get(runs[mode][0]))>> v;
    for (const auto& r : runs[mode]) v.push_back(get(r));
    return median_of(v);
  };
  const std::size_t K = mode_index(ProfiledMode::keep), C = mode_index(ProfiledMode::checkpoint),
                    S = mode_index(ProfiledMode::sync_offload);
  const CallFigures& first = runs[K][0];
  // Distinct layers in the order of their first forward; module index -> position.
  std::vector<std::size_t> position(labels.size(), no_point);
  profile.layers.clear();
  for (auto L : first.layer) {
    if (position[L] != no_point) continue;
    position[L] = profile.layers.size();
    LayerProfile lp;
    lp.label = labels[L];
    lp.module_index = L;
    profile.layers.push_back(lp);
  }
  const std::size_t m = first.level.size();
  profile.points.assign(m, StepPoint{});
  for (std::size_t j = 0; j < m; ++j) {
    for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
      profile.points[j].level[mode] = med(mode, [&](const CallFigures& r) { return r.level[j]; }) + shift;
      profile.points[j].peak[mode] = med(mode, [&](const CallFigures& r) { return r.peak[j]; }) + shift;
    }
    profile.points[j].ms = med(K, [&](const CallFigures& r) { return r.ms[j]; });
  }
  profile.calls.clear();
  for (std::size_t i = 0; i < first.layer.size(); ++i) {
    CallProfile c;
    c.layer = position[first.layer[i]];
    c.forward_point = first.forward_point[i];
    c.end_point = first.end_point[i];
    if (first.backward_point[i] != no_point) c.backward_point = first.backward_point[i];
    for (std::size_t mode = 0; mode < profiled_modes; ++mode)
      c.held_bytes[mode] = med(mode, [&](const CallFigures& r) { return r.held[i]; });
    c.stash_bytes = med(S, [&](const CallFigures& r) { return r.stash[i]; });
    c.saved_bytes = med(K, [&](const CallFigures& r) { return r.saved[i]; });
    c.recompute_ms = med(C, [&](const CallFigures& r) { return r.recompute_ms[i]; });
    auto& l = profile.layers[c.layer];  // the layer's sums, for reading
    for (std::size_t mode = 0; mode < profiled_modes; ++mode) l.held_bytes[mode] += c.held_bytes[mode];
    l.stash_bytes += c.stash_bytes;
    l.saved_bytes += c.saved_bytes;
    l.recompute_ms += c.recompute_ms;
    profile.calls.push_back(c);
  }
  profile.start_bytes = med(K, [](const CallFigures& r) { return r.start_bytes; }) + shift;
  profile.head_peak_bytes = med(K, [](const CallFigures& r) { return r.head_peak; }) + shift;
  profile.tail_peak_bytes = 0;
  profile.tail_ms = 0;
  for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
    profile.step_ms[mode] = med(mode, [](const CallFigures& r) { return r.step_ms; });
    profile.step_peak_bytes[mode] = med(mode, [](const CallFigures& r) { return r.step_peak; }) + shift;
  }
  const double copied = static_cast<double>(med(S, [](const CallFigures& r) { return r.copied; }));
  const double out_ms = med(S, [](const CallFigures& r) { return r.offload_ms; });
  const double in_ms = med(S, [](const CallFigures& r) { return r.restore_ms; });
  if (copied > 0 && out_ms > 0) profile.d2h_bytes_per_s = copied / (out_ms / 1e3);
  if (copied > 0 && in_ms > 0) profile.h2d_bytes_per_s = copied / (in_ms / 1e3);
}

}  // namespace detail::planner
}  // namespace actckpt
