#pragma once
/// \file chain_figures.hpp
/// What one profiled sample step reduces to when it is a chain (`StepFigures`, `reduce`): per
/// layer, in forward order, the bytes it holds until its backward, its forward and backward
/// peaks and times, its stash and copy times, and the releases of older blocks in each span;
/// a step that is not a chain keeps only its calls (call_profile.hpp). And the rule that keeps
/// a chain's figures from counting on releases that depend on the plan
/// (`retain_plan_dependent_releases`). profiler.hpp runs the steps and calls these.

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
#include "actckpt/planner/call_profile.hpp"
#include "actckpt/planner/plan.hpp"

namespace actckpt {
namespace detail::planner {
/// One measured step, reduced to per-layer figures (forward order).
struct StepFigures {
  std::vector<std::size_t> order;  // modules() indices in forward order
  std::vector<std::int64_t> held, forward_peak, backward_peak, stash, saved;
  std::vector<double> forward_ms, backward_ms, recompute_ms, offload_ms, restore_ms;
  std::int64_t start_bytes = 0, head_peak = 0, tail_peak = 0, step_peak = 0;
  double tail_ms = 0, step_ms = 0;
  /// Releases of blocks allocated in an earlier span than the one they are released in, by
  /// (allocating span, releasing span), bytes. Spans in forward order: -1 before the first
  /// layer, p the forward of layer p and the caller's code up to the next layer's forward, n the
  /// tail (loss) up to the first backward. Only where the meter tracks releases (CPU).
  std::map<std::pair<int, int>, std::int64_t> old_released;
  bool chain = true;  // the step is a chain: the figures above; otherwise only `calls` is filled
  CallFigures calls;  // every step, chain or not (the call sequence is compared across runs)
};

inline StepFigures reduce_chain(const std::vector<Mark>& marks, std::size_t n, std::int64_t end_peak, double end_ms,
                                const std::vector<std::string>& labels, StepFigures f) {
  // Boundaries in time order; per layer the first of each kind.
  std::vector<const Mark*> bounds;
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> fb(n, none), fe(n, none), bb(n, none);
  for (const auto& m : marks) {
    if (m.kind != EventKind::forward_begin && m.kind != EventKind::forward_end && m.kind != EventKind::backward_begin)
      continue;
    auto& slot = m.kind == EventKind::forward_begin ? fb[m.layer] : m.kind == EventKind::forward_end ? fe[m.layer] : bb[m.layer];
    ACTCKPT_CHECK(slot == none, UsageError, "actckpt::profile_step: layer '", labels[m.layer], "' ran ",
                m.kind == EventKind::backward_begin ? "its backward" : "its forward",
                " twice in one sample step; the planner models a chain in which every Checkpointed layer runs once");
    slot = bounds.size();
    bounds.push_back(&m);
  }
  for (std::size_t i = 0; i < n; ++i) {
    ACTCKPT_CHECK(fb[i] != none && fe[i] != none, UsageError, "actckpt::profile_step: layer '", labels[i],
                "' did not run its forward in the sample step; every Checkpointed layer of the model must run once "
                "per step (is the model in training mode, with grad mode on?)");
    ACTCKPT_CHECK(bb[i] != none, UsageError, "actckpt::profile_step: layer '", labels[i],
                "' did not run its backward in the sample step; the step must call backward on a loss that "
                "depends on every Checkpointed layer's output");
  }
  f.order.resize(n);
  for (std::size_t i = 0; i < n; ++i) f.order[i] = i;
  std::sort(f.order.begin(), f.order.end(), [&](std::size_t a, std::size_t b) { return fb[a] < fb[b]; });
  for (std::size_t p = 0; p < n; ++p) {
    const auto k = f.order[p];
    // A link of a chain: nothing else starts or ends between its forward's begin and end, and
    // the layer below starts its backward after it.
    ACTCKPT_CHECK(fb[k] + 1 == fe[k] && (p == 0 || bb[f.order[p - 1]] > bb[k]), UsageError,
                "actckpt::profile_step: layer '", labels[k], "' does not run as a link of a chain (its forward "
                "overlaps another layer's, or the backwards do not run in reverse forward order); the planner "
                "plans chains of layers");
  }
  auto peak_in = [&](std::size_t after, std::size_t upto) {  // max over boundaries (after, upto]
    std::int64_t p = bounds[after]->bytes_now;
    for (std::size_t i = after + 1; i <= upto && i < bounds.size(); ++i) p = std::max(p, bounds[i]->peak_before);
    return p;
  };
  const std::size_t last = f.order.back();
  f.start_bytes = bounds[fb[f.order.front()]]->bytes_now;
  f.head_peak = std::max(bounds[fb[f.order.front()]]->peak_before, f.start_bytes);
  f.tail_peak = peak_in(fe[last], bb[last]) - bounds[fe[last]]->bytes_now;
  f.tail_ms = bounds[bb[last]]->ms - bounds[fe[last]]->ms;
  f.step_ms = end_ms;
  f.step_peak = end_peak;
  for (const auto* b : bounds) f.step_peak = std::max(f.step_peak, b->peak_before);
  {  // which span each boundary closes (see `old_released`); backward: n + 1
    std::vector<int> span(bounds.size() + 1, static_cast<int>(n) + 1);
    for (std::size_t i = 0; i < span.size(); ++i) {
      int p = -1;
      while (p + 1 < static_cast<int>(n) && i > fb[f.order[static_cast<std::size_t>(p + 1)]]) ++p;
      if (p == static_cast<int>(n) - 1 && i > fe[last]) p = i <= bb[last] ? static_cast<int>(n) : static_cast<int>(n) + 1;
      span[i] = p;
    }
    for (std::size_t i = 0; i < bounds.size(); ++i)
      for (const auto& [epoch, bytes] : bounds[i]->released) {
        const int from = span[std::min<std::size_t>(static_cast<std::size_t>(epoch), bounds.size())], at = span[i];
        if (from < at && at <= static_cast<int>(n)) f.old_released[{from, at}] += bytes;
      }
  }
  for (std::size_t p = 0; p < n; ++p) {
    const auto k = f.order[p];
    const auto level = bounds[fb[k]]->bytes_now;
    const bool top = p + 1 == n;
    const std::size_t fwd_end = top ? fe[k] : fb[f.order[p + 1]];
    f.held.push_back(bounds[fwd_end]->bytes_now - level);
    f.forward_peak.push_back(peak_in(fb[k], fwd_end) - level);
    f.forward_ms.push_back(bounds[fe[k]]->ms - bounds[fb[k]]->ms);
    if (p == 0) {
      std::int64_t peak = peak_in(bb[k], bounds.size() - 1);
      peak = std::max(peak, end_peak);
      f.backward_peak.push_back(peak - level);
      f.backward_ms.push_back(end_ms - bounds[bb[k]]->ms);
    } else {
      const auto below = bb[f.order[p - 1]];
      f.backward_peak.push_back(peak_in(bb[k], below) - level);
      f.backward_ms.push_back(bounds[below]->ms - bounds[bb[k]]->ms);
    }
  }
  // Copies (sync run): offload_begin -> offload_end; backward_begin or the previous restore_end
  // -> restore_end.
  std::vector<std::int64_t> stash(n, 0);
  std::vector<double> offload(n, 0), restore(n, 0), recompute(n, 0), open_offload(n, -1), last_restore(n, -1),
      backward_start(n, -1);
  for (const auto& m : marks) {
    switch (m.kind) {
      case EventKind::offload_begin:
        stash[m.layer] += m.copy_bytes;
        open_offload[m.layer] = m.ms;
        break;
      case EventKind::offload_end:
        if (open_offload[m.layer] >= 0) offload[m.layer] += m.ms - open_offload[m.layer];
        open_offload[m.layer] = -1;
        break;
      case EventKind::backward_begin: last_restore[m.layer] = backward_start[m.layer] = m.ms; break;
      case EventKind::recompute_end:
        if (backward_start[m.layer] >= 0) recompute[m.layer] = m.ms - backward_start[m.layer];
        break;
      case EventKind::restore_end:
        if (last_restore[m.layer] >= 0) restore[m.layer] += m.ms - last_restore[m.layer];
        last_restore[m.layer] = m.ms;
        break;
      default: break;
    }
  }
  for (auto k : f.order) {
    f.stash.push_back(stash[k]);
    f.offload_ms.push_back(offload[k]);
    f.restore_ms.push_back(restore[k]);
    f.recompute_ms.push_back(recompute[k]);
  }
  return f;
}

inline StepFigures reduce(const std::vector<Mark>& marks, std::size_t n, std::int64_t end_peak, double end_ms,
                          const std::vector<std::string>& labels, const std::vector<std::int64_t>& saved_per_call) {
  StepFigures chain;
  chain.calls = reduce_calls(marks, n, end_peak, end_ms, labels, saved_per_call);
  // A chain: each layer one forward call and one backward, the forwards apart, the backwards in
  // reverse order. Anything else is planned at call level (call_model.hpp).
  {
    const auto& c = chain.calls;
    bool is_chain = c.layer.size() == n;
    std::vector<std::size_t> calls_of(n, 0);
    for (std::size_t i = 0; i < c.layer.size(); ++i) {
      is_chain = is_chain && ++calls_of[c.layer[i]] == 1 && c.backward_point[i] != no_point &&
                 c.end_point[i] == c.forward_point[i] + 1 &&
                 (i == 0 || (c.forward_point[i] > c.end_point[i - 1] && c.backward_point[i] < c.backward_point[i - 1]));
    }
    if (!is_chain) {
      chain.chain = false;
      return chain;
    }
  }
  return reduce_chain(marks, n, end_peak, end_ms, labels, std::move(chain));
}

/// The chain model adds up per-layer figures measured in uniform runs. A release in one layer's
/// span of a block allocated in an earlier span can depend on more than that layer's choice: the
/// output of a layer that the next one does not take as its input (it goes through the caller's
/// code, `cat({mid(e2), e2})`) is held by that layer's saves when it is kept and released when the
/// expression ends when it is checkpointed, so a plan that keeps it and checkpoints the next layer
/// keeps the block while the figures of the next layer's checkpointed run count it as gone.
/// No plan may count on such a release: every release the kept and the checkpointed runs do not
/// both make, with the same bytes in the same span, is taken back out of the figures of the run
/// that makes it (held and forward peak of the releasing span's layer, backward peaks of the
/// layers from the allocating span up to the releasing one, the tail's peak), as if the block
/// lived until its allocating layer's backward. A plan that does release it is then predicted a
/// little high, never low. The sync-offloaded run's figures are left as measured: its releases
/// include the stashes it moves, which are its point (and the meter of a device with separate
/// host memory, CUDA, does not see single blocks).
inline void retain_plan_dependent_releases(StepProfile& profile, const std::vector<std::vector<StepFigures>>& runs) {
  using Spans = std::pair<int, int>;
  const auto K = mode_index(ProfiledMode::keep), C = mode_index(ProfiledMode::checkpoint);
  const int n = static_cast<int>(profile.layers.size());
  auto fold = [&](std::size_t mode, bool most) {  // per spans, over the run's steps: the most, or the least
    std::map<Spans, std::int64_t> out;
    for (const auto& [spans, bytes] : runs[mode].front().old_released) out[spans] = bytes;
    for (std::size_t s = 1; s < runs[mode].size(); ++s) {
      const auto& step = runs[mode][s].old_released;
      if (most) {
        for (const auto& [spans, bytes] : step) out[spans] = std::max(out[spans], bytes);
      } else {
        for (auto& [spans, bytes] : out) {
          const auto found = step.find(spans);
          bytes = std::min(bytes, found == step.end() ? std::int64_t{0} : found->second);
        }
      }
    }
    return out;
  };
  const auto least_k = fold(K, false), least_c = fold(C, false);
  auto both = [&](const Spans& spans) {
    const auto k = least_k.find(spans), c = least_c.find(spans);
    return std::min(k == least_k.end() ? std::int64_t{0} : k->second, c == least_c.end() ? std::int64_t{0} : c->second);
  };
  for (const auto mode : {K, C}) {
    for (const auto& [spans, bytes] : fold(mode, true)) {
      const auto [from, at] = spans;
      const std::int64_t kept_alive = bytes - both(spans);
      if (kept_alive <= 0) continue;
      if (at < n) {
        auto& l = profile.layers[static_cast<std::size_t>(at)];
        l.held_bytes[mode] += kept_alive;
        l.forward_peak_bytes[mode] += kept_alive;
      } else if (mode == K) {
        profile.tail_peak_bytes += kept_alive;  // the tail's figures are the kept run's
      }
      for (int k = std::max(from + 1, 0); k <= std::min(at, n - 1); ++k)
        profile.layers[static_cast<std::size_t>(k)].backward_peak_bytes[mode] += kept_alive;
    }
  }
}

template <class T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace detail::planner
}  // namespace actckpt
