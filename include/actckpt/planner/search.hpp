#pragma once
/// \file search.hpp
/// The search for the fastest plan that fits a budget (`plan_for_budget`) and the smallest
/// budget any plan fits (`smallest_feasible_budget`), on a profile alone: it needs no model and
/// no torch::nn (the standard library, c10's checks, and plan.hpp / cost_model.hpp), so plans
/// can be searched for from hand-made or stored profiles, and tested without a model. This is
/// the search over chains; a call-level profile goes to call_model.hpp's branch and bound.
///
/// ## Search (`plan_for_budget`)
/// Dynamic programming over the chain: layers are added bottom up; a partial plan's future
/// depends only on its held bytes S and its state: the stash of its highest async layer while
/// that layer's prefetch still needs an async layer above, whether more async layers may come,
/// the bytes still in flight, and the bytes an offload-saved layer below brings back during the
/// next layer's backward. Every constraint is checked exactly against the budget as its
/// layer is added, so a returned plan always fits (as `evaluate_plan` predicts it). A partial
/// plan is dropped when another one, in the same or a dominating state (no prefetch waiting, or
/// a smaller one), holds no more bytes and is no slower. With unlike layers nearly every sum of
/// held bytes is distinct and these fronts grow exponentially, so the search bounds them:
///  - Exact while every layer's front stays within `beam_width` (256) partial plans: small and
///    uniform chains get the optimum, at the cost they always had.
///  - The outlook: a backward pass over a grid of `outlook_cells` (4096) cells of held bytes,
///    async states left out (they only add bytes), gives per layer a lower bound of the time the
///    layers above still cost and whether they can fit at all. O(n x cells x choices).
///  - A quick pass keeps per layer the 256 partial plans whose time plus outlook is least (and
///    each state's least-holding one, so that a plan that fits is never lost): a plan to beat.
///  - The bounded pass rounds time as the knapsack FPTAS does. A partial plan X is absorbed by a
///    plan K in its own or a dominating state holding no more bytes when K's time exceeds the best
///    of those X stands for by at most (k + 1) x d after layer k, with d = tolerance x T / n,
///    T = a lower bound of any plan's step time (the kept step plus each layer's cheapest extra),
///    tolerance 0.5% (`plan_time_tolerance`). Every completion of X fits with K, so over n layers
///    the plan returned loses at most tolerance x T <= 0.5% of the optimum's predicted step time.
///    Plans kept in one state are then more than d apart in time: at most span / d + 1 of them,
///    span being the state's range of times, O(n / tolerance) per state and O(n) states (one per
///    distinct pending stash): polynomial, O(n^3 / tolerance) partial plans over the whole search
///    at worst. Partial plans whose time plus outlook exceeds the plan to beat are dropped (none
///    of them can lead to the optimum), which leaves a thin band of each front.
/// Memory: the fronts of one layer, a link (parent, choice) per kept partial plan, and the
/// outlook (n x 4096 doubles). The smallest feasible budget is a bisection on the budget, each
/// step asking "does any plan fit" (one partial plan per state, the one holding least): exact,
/// O(log(bytes) x n x states). A budget under it raises an error naming it.
///
/// ## Host budget (issue 29; tier_model.hpp)
/// With a host budget the state also holds the partial plan's host bytes (a knapsack's second
/// dimension, counted by `HostGrid`: exact up to `SearchLimits::host_sums` (128) distinct sums,
/// else rounded up, with the bound tier_model.hpp states), checked exactly as each layer is
/// added: a plan never puts more on the host. A partial plan absorbs another (as above) only
/// holding no more host bytes, in its own state or the free one (nothing in flight, nothing
/// brought back, no prefetch waiting). The time tolerance holds; the states multiply by the host
/// sums (docs/planner.md: planning times). Disk offload is async offload's state (stack, prefetch).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <c10/util/Exception.h>

#include "actckpt/base/errors.hpp"
#include "actckpt/planner/call_model.hpp"
#include "actckpt/planner/cost_model.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/planner/tier_model.hpp"

namespace actckpt {
namespace detail::planner {

/// Where async prefetches stand below the next layer: none yet, the highest one waits for an
/// async layer above to trigger it, or the highest one has none above (nothing more may be async).
enum class Prefetch : std::uint8_t { none, pending, closed };

/// The state a partial plan hands to the next layer (see the file comment).
struct Key {
  std::int64_t in_flight = 0;       // bytes still on the device while the next layer runs forward
  std::int64_t saved_prefetch = 0;  // offload-saved layer below: bytes it brings back during the next layer's backward
  Prefetch prefetch = Prefetch::none;
  std::int64_t prefetch_bytes = 0;  // stash of the highest async layer below while its prefetch is pending, else 0
  std::int64_t host = 0;            // host budget: the partial plan's host bytes (HostGrid units), else 0
  bool operator==(const Key& o) const {
    return host == o.host && in_flight == o.in_flight && saved_prefetch == o.saved_prefetch && prefetch == o.prefetch &&
           prefetch_bytes == o.prefetch_bytes;
  }
  bool operator<(const Key& o) const {  // host first: the search's pruning walks each host sum's states in turn
    return std::tie(host, in_flight, saved_prefetch, prefetch, prefetch_bytes) <
           std::tie(o.host, o.in_flight, o.saved_prefetch, o.prefetch, o.prefetch_bytes);
  }
};

/// A partial plan on the search's front (layers 0..k-1 chosen).
struct Node {
  std::int64_t held;     // S_k - start_bytes
  double ms;             // this plan's predicted extra time so far
  double lower_ms;       // no partial plan this node stands for (itself and those it absorbed) is faster
  std::uint32_t parent;  // its prefix's index on the previous front
  LayerChoice choice;    // its choice for layer k-1
};

/// What the search keeps of each front to rebuild the plan (the fronts themselves live one layer).
struct Link {
  std::uint32_t parent;
  LayerChoice choice;
};

/// `plan_for_budget`'s tolerance: its plan's predicted step time is at most this much (relative)
/// over the fastest plan that fits.
inline constexpr double plan_time_tolerance = 0.005;
/// A layer whose candidate partial plans are at most this many is pruned exactly (small chains
/// get the exact optimum, as before the search was bounded).
inline constexpr std::size_t exact_up_to_nodes = 4096;
/// The quick pass's nodes per layer (its plan is the one the bounded pass must beat).
inline constexpr std::size_t beam_width = 256;
/// The outlook's grid of held bytes.
inline constexpr std::size_t outlook_cells = 4096;
/// `search`'s tolerance for "does any plan fit": time does not matter, only the least held bytes.
inline constexpr double feasibility_only = std::numeric_limits<double>::infinity();

/// A lower bound of any plan's predicted extra time (over the kept step): each layer's cheapest choice.
inline double extra_ms_lower_bound(const CostModel& model) {
  double ms = 0;
  for (std::size_t k = 0; k < model.size(); ++k) {
    double cheapest = model.cost(k, LayerChoice::keep, false).extra_ms;
    for (auto c : {LayerChoice::checkpoint, LayerChoice::sync_offload, LayerChoice::async_offload,
                   LayerChoice::offload_saved, LayerChoice::disk_offload}) {
      if (!model.allows(k, c)) continue;
      for (bool from_above : {false, true}) cheapest = std::min(cheapest, model.cost(k, c, from_above).extra_ms);
    }
    ms += cheapest;
  }
  return ms;
}

/// What one pass of the search found: the fastest plan on its last front.
struct Found {
  bool exact = true;  // nothing was dropped but by exact dominance or because it cannot fit
  std::vector<LayerChoice> choices;
  double ms = 0;  // its predicted extra time
};

/// A lower bound of the extra time the layers from k on still cost, as a function of the held
/// bytes below them, and whether they can fit at all: the same chain with the async states
/// left out (they only add bytes), on a grid of held bytes, each cell read at its smallest
/// value (fewer bytes below never cost more). Lets the search drop a partial plan that cannot
/// fit, or cannot beat a plan already found.
class Outlook {
 public:
  Outlook(const CostModel& model, std::int64_t limit, std::size_t cells) : n_(model.size()) {
    const auto& p = model.profile();
    // Every partial plan's held bytes lie between the lowest and highest prefix sums.
    std::int64_t low = 0, high = 0, lowest = 0, highest = 0;
    for (std::size_t k = 0; k < n_; ++k) {
      std::int64_t least = std::numeric_limits<std::int64_t>::max(), most = std::numeric_limits<std::int64_t>::min();
      for (auto c : choices(model)) {
        if (!model.allows(k, c)) continue;
        least = std::min(least, model.cost(k, c, false).held);
        most = std::max(most, model.cost(k, c, false).held);
      }
      low += least, high += most;
      lowest = std::min(lowest, low), highest = std::max(highest, high);
    }
    // Held bytes above limit - start_bytes seldom fit: the grid ends there when that is lower,
    // and a value beyond it reads the last cell (a lower bound: the outlook grows with held bytes).
    low_ = lowest;
    const std::int64_t top = std::max(lowest, std::min(highest, limit - p.start_bytes));
    cells_ = cells;
    cell_bytes_ = std::max<std::int64_t>(1, (top - lowest) / static_cast<std::int64_t>(cells) + 1);
    ms_.assign((n_ + 1) * cells_, 0.0);
    const double none = std::numeric_limits<double>::infinity();
    const auto last = static_cast<std::ptrdiff_t>(cells_) - 1;
    for (std::size_t k = n_; k-- > 0;) {
      double* here = &ms_[k * cells_];
      const double* above = &ms_[(k + 1) * cells_];
      std::fill(here, here + cells_, none);
      for (auto c : choices(model)) {
        if (!model.allows(k, c)) continue;
        for (bool from_above : {false, true}) {
          if (from_above && (!prefetched_choice(c) || k + 1 == n_)) continue;
          const auto cc = model.cost(k, c, from_above);
          // Cells whose smallest held value fits this choice: b <= fits.
          std::int64_t room = limit - p.start_bytes - std::max(cc.forward_peak, cc.backward_peak);
          if (k + 1 == n_) room = std::min(room, limit - p.start_bytes - cc.held - p.tail_peak_bytes);
          if (room < low_) continue;
          const auto fits = std::min<std::ptrdiff_t>(last, static_cast<std::ptrdiff_t>((room - low_) / cell_bytes_));
          // The cell above: low + b x cell + held is in cell b + floor(held / cell).
          const auto shift = static_cast<std::ptrdiff_t>(cc.held >= 0 ? cc.held / cell_bytes_
                                                                        : -((-cc.held + cell_bytes_ - 1) / cell_bytes_));
          for (std::ptrdiff_t b = 0; b <= fits; ++b)
            here[b] = std::min(here[b], cc.extra_ms + above[std::clamp<std::ptrdiff_t>(b + shift, 0, last)]);
        }
      }
    }
  }
  /// The least extra time of layers k..n-1 above `held` bytes (infinite: they cannot fit).
  double lower_ms(std::size_t k, std::int64_t held) const { return ms_[k * cells_ + cell(held)]; }

 private:
  static std::vector<LayerChoice> choices(const CostModel& model) {
    std::vector<LayerChoice> out{LayerChoice::keep, LayerChoice::checkpoint};
    if (model.can_offload())
      out.insert(out.end(), {LayerChoice::sync_offload, LayerChoice::async_offload, LayerChoice::offload_saved});
    if (model.can_disk()) out.push_back(LayerChoice::disk_offload);
    return out;
  }
  std::size_t cell(std::int64_t held) const {
    if (held <= low_) return 0;
    return std::min<std::size_t>(cells_ - 1, static_cast<std::size_t>((held - low_) / cell_bytes_));
  }
  std::size_t n_, cells_ = 1;
  std::int64_t low_ = 0, cell_bytes_ = 1;
  std::vector<double> ms_;
};

/// One pass of the search (see the file comment). `per_layer`: what a node's time may grow over
/// the best it stands for, per layer (0: exact; infinite: one node per state), on layers with
/// more than `exact_up_to` candidates. `outlook`: drops the partial plans that cannot fit or
/// cannot beat `beat_ms`. `beam`: keep at most that many per layer (the quick pass), or with
/// `give_up_at_beam` return a Found without choices when a front grows past it. `host`: how host
/// bytes count against the host budget (inactive: no host budget).
inline std::optional<Found> search_pass(const CostModel& model, const HostGrid& host, std::int64_t limit, double per_layer,
                                        std::size_t exact_up_to, const Outlook* outlook = nullptr,
                                        double beat_ms = std::numeric_limits<double>::infinity(),
                                        std::size_t beam = 0, bool give_up_at_beam = false) {
  const auto& p = model.profile();
  const std::size_t n = model.size();
  const std::int64_t base = p.start_bytes;
  if (p.head_peak_bytes > limit || n == 0) return std::nullopt;
  struct Group {
    Key key;
    std::vector<Node> nodes;  // by held bytes, then time
  };
  std::vector<std::vector<Link>> links(n);  // links[k][i]: node i of the front after layer k
  std::vector<Group> front{Group{Key{}, {Node{0, 0.0, 0.0, 0, LayerChoice::keep}}}}, next;
  struct Stair {
    std::int64_t held;
    double ms;
    Node* node;
  };
  std::vector<Stair> stairs, stairs_of_none, stairs_of_free, merged;
  // Host budget: per state but its host bytes, the stairs of its nodes of fewer host bytes.
  std::map<Key, std::vector<Stair>> of_state;
  // `into` merged with the first `count` of `nodes` (each kept one faster than all holding less).
  auto merge = [&merged](std::vector<Stair>& into, std::vector<Node>& nodes, std::size_t count) {
    merged.clear();
    std::size_t a = 0, b = 0;
    while (a < into.size() || b < count) {
      const bool from_stairs = b == count || (a < into.size() && into[a].held <= nodes[b].held);
      const Stair s = from_stairs ? into[a++] : Stair{nodes[b].held, nodes[b].ms, &nodes[b]};
      if (!from_stairs) ++b;
      if (merged.empty() || s.ms < merged.back().ms) merged.push_back(s);
    }
    into.swap(merged);
  };
  struct Score {
    double value;
    std::size_t group, index;
  };
  std::vector<Score> scores;
  bool exact = true;
  const LayerChoice all[] = {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload,
                             LayerChoice::async_offload, LayerChoice::offload_saved, LayerChoice::disk_offload};
  std::map<Key, std::size_t> group_of;
  for (std::size_t k = 0; k < n; ++k) {
    next.clear();
    group_of.clear();
    std::size_t candidates = 0;
    std::uint32_t first_index = 0;  // the index on the front of a group's first node
    for (const auto& group : front) {
      const Key& key = group.key;
      for (auto c : all) {
        if (!model.allows(k, c)) continue;
        // Async comes in two variants: prefetched by an async layer above (which must then
        // come) or the highest async layer (none may follow).
        // Disk offload is the same stash stack, with no host bytes.
        const bool stacked = prefetched_choice(c);
        const std::int64_t host_units = host.units(k, c);
        if (key.host + host_units > host.limit()) continue;  // over the host budget
        for (int variant = 0; variant < (stacked ? 2 : 1); ++variant) {
          const bool from_above = stacked && variant == 0;
          if (stacked && key.prefetch == Prefetch::closed) continue;
          if (from_above && k + 1 == n) continue;
          Key nk = key;
          nk.in_flight = 0;
          nk.saved_prefetch = 0;
          nk.host = key.host + host_units;
          if (stacked) {
            nk.prefetch = from_above ? Prefetch::pending : Prefetch::closed;
            nk.prefetch_bytes = from_above ? model.prefetch_bytes(k) : 0;  // closed: no prefetch waits
            nk.in_flight = model.freed(k);
          }
          if (c == LayerChoice::offload_saved) {  // does not touch the stash stack's prefetch state
            nk.in_flight = model.saved_freed(k);
            nk.saved_prefetch = k + 1 < n ? model.saved_freed(k) : 0;
          }
          if (k + 1 == n && nk.prefetch == Prefetch::pending) continue;  // promised an async layer above
          // Everything but the held bytes is the group's: the peak grows with them, so the
          // nodes that fit are a prefix of the group.
          const auto cc = model.cost(k, c, from_above);
          std::int64_t headroom = limit - base -
              std::max(cc.forward_peak + key.in_flight,
                       cc.backward_peak + (key.prefetch == Prefetch::pending ? key.prefetch_bytes : 0) +
                           key.saved_prefetch);
          if (k + 1 == n) headroom = std::min(headroom, limit - base - cc.held - p.tail_peak_bytes - nk.in_flight);
          auto [slot, added] = group_of.try_emplace(nk, next.size());
          if (added) next.push_back(Group{nk, {}});
          auto to = next.begin() + static_cast<std::ptrdiff_t>(slot->second);
          for (std::size_t i = 0; i < group.nodes.size() && group.nodes[i].held <= headroom; ++i) {
            const Node& parent = group.nodes[i];
            if (outlook != nullptr && !(parent.lower_ms + cc.extra_ms +
                                            outlook->lower_ms(k + 1, parent.held + cc.held) <= beat_ms))
              continue;  // cannot fit, or everything it stands for is slower than the plan to beat
            to->nodes.push_back(Node{parent.held + cc.held, parent.ms + cc.extra_ms, parent.lower_ms + cc.extra_ms,
                                     static_cast<std::uint32_t>(first_index + i), c});
            ++candidates;
          }
        }
      }
      first_index += static_cast<std::uint32_t>(group.nodes.size());
    }
    // Pruning. State A dominates state B (same bytes in flight) when A has no prefetch waiting
    // and B any, or both wait for one and A's is no larger: every completion of B is one of A,
    // with no higher peak and the same time. So a node X is absorbed by a node K in a state that
    // dominates X's (its own included), holding no more bytes, when K is no slower (exact), or,
    // with an allowance, when K is slower than the best X stands for by at most the allowance.
    // K takes X's lower bound, so a node's time never exceeds the best of the partial plans it
    // stands for by more than the allowance, which grows by per_layer a layer. States are taken
    // in an order where every dominating state comes first (none, then pending by size; closed
    // after none alone); `stairs` holds the kept nodes of the states before that may absorb, by
    // held bytes, each faster than all that hold less.
    std::sort(next.begin(), next.end(), [](const Group& a, const Group& b) { return a.key < b.key; });
    const double allowance = candidates <= exact_up_to ? 0.0 : per_layer * static_cast<double>(k + 1);
    exact = exact && allowance == 0;
    std::size_t kept_total = 0;
    stairs_of_free.clear();
    of_state.clear();
    for (std::size_t gi = 0; gi < next.size(); ++gi) {
      auto& group = next[gi];
      std::vector<Stair>* fewer_host = nullptr;
      if (host.active()) {
        Key state = group.key;
        state.host = 0;
        fewer_host = &of_state[state];
      }
      // Within a block: the same host bytes, bytes in flight and brought back (the free state
      // dominates all; `stairs_of_free` keeps its stairs across host sums, fewer first).
      const bool new_block = gi == 0 || next[gi - 1].key.in_flight != group.key.in_flight ||
                             next[gi - 1].key.saved_prefetch != group.key.saved_prefetch ||
                             next[gi - 1].key.host != group.key.host;
      if (new_block) {
        // Nothing in flight, nothing brought back and no prefetch waiting dominates every state:
        // that group's stairs start every later block.
        stairs = stairs_of_free;
        stairs_of_none = stairs_of_free;
      }
      if (group.key.prefetch == Prefetch::closed) stairs.swap(stairs_of_none);  // only "none" dominates "closed"
      auto& nodes = group.nodes;
      std::sort(nodes.begin(), nodes.end(),
                [](const Node& a, const Node& b) { return std::tie(a.held, a.ms) < std::tie(b.held, b.ms); });
      std::size_t kept = 0;
      std::size_t stair = 0;  // stairs[stair - 1]: the last one holding no more than the node
      std::size_t fewer = 0;  // likewise in *fewer_host
      for (std::size_t r = 0; r < nodes.size(); ++r) {
        const Node x = nodes[r];
        while (stair < stairs.size() && stairs[stair].held <= x.held) ++stair;
        Node* absorber = kept > 0 ? &nodes[kept - 1] : nullptr;
        if (stair > 0 && (absorber == nullptr || stairs[stair - 1].ms < absorber->ms)) absorber = stairs[stair - 1].node;
        if (fewer_host != nullptr) {
          while (fewer < fewer_host->size() && (*fewer_host)[fewer].held <= x.held) ++fewer;
          if (fewer > 0 && (absorber == nullptr || (*fewer_host)[fewer - 1].ms < absorber->ms))
            absorber = (*fewer_host)[fewer - 1].node;
        }
        if (absorber != nullptr && (absorber->ms <= x.ms || absorber->ms <= x.lower_ms + allowance)) {
          absorber->lower_ms = std::min(absorber->lower_ms, x.lower_ms);
          continue;
        }
        nodes[kept++] = x;
      }
      nodes.resize(kept);
      kept_total += kept;
      // The stairs for the states after this one: this state's nodes with those before.
      merge(stairs, nodes, kept);
      if (fewer_host != nullptr) merge(*fewer_host, nodes, kept);
      const bool none_ends = group.key.prefetch == Prefetch::none;
      if (none_ends) stairs_of_none = stairs;
      if (none_ends && group.key.in_flight == 0 && group.key.saved_prefetch == 0) stairs_of_free = stairs;
    }
    if (kept_total == 0) return std::nullopt;  // (with a plan to beat: none beats it)
    if (beam > 0 && kept_total > beam && give_up_at_beam) {
      Found gave_up;
      gave_up.exact = false;
      return gave_up;  // no choices: the caller goes on with the outlook
    }
    if (beam > 0 && kept_total > beam) {
      // A quick plan to beat, no bound: the `beam` nodes whose time plus the outlook's bound
      // above them is least, and each state's node holding least (so that a plan that fits is
      // still found).
      scores.clear();
      for (std::size_t gi = 0; gi < next.size(); ++gi)
        for (std::size_t r = 1; r < next[gi].nodes.size(); ++r) {
          const Node& x = next[gi].nodes[r];
          scores.push_back(Score{x.ms + (outlook ? outlook->lower_ms(k + 1, x.held) : 0.0), gi, r});
        }
      if (scores.size() > beam) {
        std::nth_element(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(beam), scores.end(),
                         [](const Score& a, const Score& b) { return a.value < b.value; });
        scores.resize(beam);
      }
      std::sort(scores.begin(), scores.end(),
                [](const Score& a, const Score& b) { return std::tie(a.group, a.index) < std::tie(b.group, b.index); });
      kept_total = 0;
      std::size_t at = 0;
      for (std::size_t gi = 0; gi < next.size(); ++gi) {
        auto& nodes = next[gi].nodes;
        std::size_t w = nodes.empty() ? 0 : 1;
        for (; at < scores.size() && scores[at].group == gi; ++at) nodes[w++] = nodes[scores[at].index];
        nodes.resize(w);
        kept_total += w;
      }
      exact = false;
    }
    next.erase(std::remove_if(next.begin(), next.end(), [](const Group& g) { return g.nodes.empty(); }), next.end());
    TORCH_CHECK(kept_total < std::numeric_limits<std::uint32_t>::max(), "actckpt: the planner's search front overflowed");
    links[k].reserve(kept_total);
    for (const auto& group : next)
      for (const auto& x : group.nodes) links[k].push_back(Link{x.parent, x.choice});
    front.swap(next);
  }
  Found found;
  found.exact = exact;
  found.ms = std::numeric_limits<double>::infinity();
  std::size_t best = 0, index = 0;
  for (const auto& group : front) {
    for (const auto& x : group.nodes) {
      if (x.ms < found.ms) found.ms = x.ms, best = index;
      ++index;
    }
  }
  found.choices.resize(n);
  std::size_t at = best;
  for (std::size_t k = n; k-- > 0;) {
    found.choices[k] = links[k][at].choice;
    at = links[k][at].parent;
  }
  return found;
}

/// How far the search may go before it approximates (tests set them low to exercise that).
struct SearchLimits {
  std::size_t exact_up_to = exact_up_to_nodes;  // layers with at most this many candidates are pruned exactly
  std::size_t beam = beam_width;                // the quick pass's nodes per layer
  std::size_t host_sums = 128;                  // host budget: exact while at most this many host sums fit
};

/// The search. `budget`: absolute bytes (or none). `tolerance`: the returned plan's predicted
/// step time is at most 1 + tolerance times the fastest fitting plan's (0: exact;
/// `feasibility_only`: any plan that fits). Returns the choices, or nullopt if no plan fits (that
/// answer is exact whatever the tolerance).
/// `host_budget`: the most bytes a plan may put in host memory (none: unlimited).
inline std::optional<std::vector<LayerChoice>> search(const CostModel& model, std::optional<std::int64_t> budget,
                                                      double tolerance, const SearchLimits& limits = {},
                                                      std::optional<std::int64_t> host_budget = std::nullopt) {
  const HostGrid host = host_grid(model, host_budget, limits.host_sums);
  // No budget: one far above any real one, with room for the sums against it not to overflow.
  const std::int64_t limit = budget.value_or(std::numeric_limits<std::int64_t>::max() / 4);
  const double n = static_cast<double>(std::max<std::size_t>(model.size(), 1));
  const double floor_ms = model.profile().step_ms[CostModel::idx(ProfiledMode::keep)] + extra_ms_lower_bound(model);
  constexpr auto unlimited = std::numeric_limits<std::size_t>::max();
  constexpr auto no_plan_to_beat = std::numeric_limits<double>::infinity();
  // Without a positive lower bound of the step time (a hand-made profile) there is no relative
  // tolerance to spend: exact. (Without a budget there is nothing to approximate for.)
  if (tolerance == feasibility_only || !(tolerance > 0) || !(floor_ms > 0) || !budget) {
    const bool any = tolerance == feasibility_only;
    auto found = search_pass(model, host, limit, any ? feasibility_only : 0.0, any ? 0 : unlimited);
    if (!found) return std::nullopt;
    return std::move(found->choices);
  }
  // Exact first, as long as the fronts stay within the beam: small or uniform chains get the
  // optimum at the cost they always had.
  auto quick = search_pass(model, host, limit, 0.0, unlimited, nullptr, no_plan_to_beat, limits.beam, true);
  if (!quick) return std::nullopt;
  if (quick->exact) return std::move(quick->choices);
  // Then a quick pass with the outlook: exact pruning, and the `beam` most promising nodes by
  // the outlook. Its plan is one to beat: the bounded pass keeps only the partial plans that the
  // outlook says may beat it, a thin band of the front.
  const Outlook outlook(model, limit, outlook_cells);  // host bytes left out: still a lower bound
  quick = search_pass(model, host, limit, 0.0, unlimited, &outlook, no_plan_to_beat, limits.beam);
  if (!quick) return std::nullopt;
  if (quick->exact) return std::move(quick->choices);
  // With per_layer = tolerance x floor_ms / n the n layers lose at most tolerance x floor_ms,
  // within the tolerance of the optimum. The quick plan's own partial plans stay (a rounding
  // margin: the outlook sums its bounds in another order).
  const double beat = quick->ms + 1e-9 * (std::abs(quick->ms) + floor_ms);
  auto fine = search_pass(model, host, limit, tolerance * floor_ms / n, limits.exact_up_to, &outlook, beat);
  if (fine && fine->ms < quick->ms) return std::move(fine->choices);
  return std::move(quick->choices);
}

}  // namespace detail::planner

/// The smallest budget any plan fits, by the cost model (exact), among the plans that put at
/// most `host_budget_bytes` in host memory (none: unlimited).
inline std::int64_t smallest_feasible_budget(const StepProfile& profile, const OffloadCosts& costs = {},
                                             std::optional<std::int64_t> host_budget_bytes = std::nullopt) {
  using namespace detail::planner;
  ACTCKPT_CHECK(!host_budget_bytes || *host_budget_bytes >= 0, UsageError,
                "actckpt: the host budget must not be negative, got ", *host_budget_bytes, " bytes");
  if (!profile.is_chain()) {
    const CallModel calls(profile, costs);
    auto least = search_calls(calls, std::nullopt, /*minimize_peak=*/true, call_search_work, host_budget_bytes);
    ACTCKPT_CHECK(least.choices.has_value(), UsageError, "actckpt: the profile has no plan at all");
    return evaluate_calls(calls, *least.choices).peak_bytes;
  }
  const CostModel model(profile, costs);
  auto any = search(model, std::nullopt, feasibility_only, {}, host_budget_bytes);
  ACTCKPT_CHECK(any.has_value(), UsageError, "actckpt: the profile has no plan at all (empty?)");
  // Bisection on "does any plan fit", which keeps one node per state and so stays small however
  // unlike the layers are (minimizing the peak directly keeps every (held, peak) pair that no
  // other dominates, as many as there are subsets of layers). Below the peak before the first
  // layer nothing fits; each fitting plan found lowers the upper end to its own peak.
  std::int64_t fits = evaluate_plan(profile, *any, costs).peak_bytes;
  std::int64_t too_small = profile.head_peak_bytes - 1;
  while (fits - too_small > 1) {
    const std::int64_t mid = too_small + (fits - too_small) / 2;
    if (auto plan = search(model, mid, feasibility_only, {}, host_budget_bytes)) fits = evaluate_plan(profile, *plan, costs).peak_bytes;
    else too_small = mid;
  }
  return fits;
}

/// The fastest plan whose predicted peak fits `budget_bytes` (absolute, as the profile's meter
/// reads bytes) and puts at most `host_budget_bytes` in host memory (none: unlimited; 0: nothing
/// on the host, the disk tier still allowed). Raises an error naming the smallest feasible budget
/// if none fits.
inline MemoryPlan plan_for_budget(const StepProfile& profile, std::int64_t budget_bytes, const OffloadCosts& costs = {},
                                  std::optional<std::int64_t> host_budget_bytes = std::nullopt) {
  using namespace detail::planner;
  ACTCKPT_CHECK(!host_budget_bytes || *host_budget_bytes >= 0, UsageError,
                "actckpt::plan_for_budget: the host budget must not be negative, got ", *host_budget_bytes, " bytes");
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_for_budget: the memory budget must be positive, got ", budget_bytes,
              " bytes");
  ACTCKPT_CHECK(!profile.layers.empty(), UsageError, "actckpt::plan_for_budget: the profile has no layers");
  std::optional<std::vector<LayerChoice>> choices;
  double gap = plan_time_tolerance;  // the chain search's bound (search.hpp's file comment)
  if (profile.is_chain()) {
    choices = search(CostModel(profile, costs), budget_bytes, plan_time_tolerance, {}, host_budget_bytes);
  } else {
    const CallModel calls(profile, costs);
    auto found = search_calls(calls, budget_bytes, /*minimize_peak=*/false, call_search_work, host_budget_bytes);
    choices = std::move(found.choices);
    const double kept_ms = profile.step_ms[mode_index(ProfiledMode::keep)];
    double extra_ms = found.ms;
    if (!choices && !found.exact) {  // out of work before any plan: the least-peak plan, if it fits
      auto least = search_calls(calls, std::nullopt, /*minimize_peak=*/true, call_search_work, host_budget_bytes);
      if (least.choices && evaluate_calls(calls, *least.choices).peak_bytes <= budget_bytes) {
        choices = std::move(least.choices);
        extra_ms = evaluate_calls(calls, *choices).step_ms - kept_ms;
      }
    }
    gap = found.exact || !choices ? 0.0 : std::max(0.0, (kept_ms + extra_ms) / std::max(1e-12, kept_ms + found.lower_bound) - 1.0);
  }
  if (!choices) {
    const auto floor = smallest_feasible_budget(profile, costs, host_budget_bytes);
    std::string host;  // both budgets named, and what the host budget costs
    if (const auto no_host = host_budget_bytes ? smallest_feasible_budget(profile, costs) : floor; host_budget_bytes)
      host = " with that host budget" + (no_host < floor ? " (" + mib(no_host) + " with none)" : std::string());
    throw InfeasibleBudget(c10::str("actckpt::plan_for_budget: no plan fits a budget of ", mib(budget_bytes),
                                    host_budget_bytes ? " and a host budget of " + mib(*host_budget_bytes) : std::string(),
                                    "; the smallest feasible budget for this model and step is ", mib(floor), host,
                                    (costs.host_memory_separate.value_or(profile.host_memory_separate)
                                         ? ""
                                         : " (host and device memory are the same here, so offloading saves nothing)"),
                                    ". Raise the budget, or make the step smaller (batch, sequence length)."),
                           budget_bytes, floor);
  }
  MemoryPlan plan;
  plan.choices = *choices;
  for (const auto& l : profile.layers) {
    plan.labels.push_back(l.label);
    plan.module_index.push_back(l.module_index);
  }
  plan.budget_bytes = budget_bytes;
  const auto e = evaluate_plan(profile, plan.choices, costs);
  plan.predicted_peak_bytes = e.peak_bytes;
  plan.predicted_step_ms = e.step_ms;
  plan.host_budget_bytes = host_budget_bytes;
  plan.predicted_host_bytes = e.host_bytes;
  plan.time_gap_bound = gap;
  for (const auto& call : profile.calls) plan.call_sequence.push_back(call.layer);
  if (profile.is_chain())  // a chain: each layer once, in forward order
    for (std::size_t k = 0; k < profile.layers.size(); ++k) plan.call_sequence.push_back(k);
  return plan;
}

}  // namespace actckpt
