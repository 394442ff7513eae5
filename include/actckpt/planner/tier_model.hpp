#pragma once
/// \file tier_model.hpp
/// Where a plan's offloaded bytes live (issue 29): the host tier (the host buffer pool) or the
/// disk tier (the context's `DiskStore`, `LayerChoice::disk_offload`). The chain cost model
/// (cost_model.hpp) and the search (search.hpp) take from here what each choice puts on the
/// host, what a disk offload's copies cost, and how the search keeps count of host bytes against
/// `PlannerOptions::host_budget_bytes`. Like plan.hpp it needs no model and no ATen.
///
/// ## Host bytes
/// In a chain every offloaded stash is on the host from its layer's forward until its backward,
/// and all of them at once at the end of the forward pass, so a plan's host peak is the sum over
/// its host-tier layers: sync and async offload hold the layer's stash (`stash_bytes`), offload
/// saved its saved activations (`saved_bytes`); keep, checkpoint and disk offload hold nothing
/// there (a disk offload's bytes pass through the disk store's staging buffers only, which the
/// store owns whatever the plan). A call-level step counts every offloading call's bytes as on
/// the host at once (conservative: an upper bound of its host peak). The host pool rounds each
/// stash up to its alignment: the budget is about the bytes the stashes hold.
///
/// ## Disk offload's time
/// A disk offload is an async offload whose copies go through the disk store: out, the
/// device-to-host copy (only where host memory is separate) then the write; back, the read then
/// the host-to-device copy. The two steps of each way are charged one after the other (the
/// store moves a CUDA stash through one pinned staging buffer, piece by piece), and what does not
/// hide behind the same windows as async offload's (the next layer's forward; the backward of the
/// layer above when an async or disk layer above triggers the prefetch) is added to the step.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <set>
#include <vector>

#include "actckpt/planner/plan.hpp"

namespace actckpt {
namespace detail::planner {

/// Choices whose stash goes on the stash stack and is prefetched a layer ahead (async offload
/// and disk offload share the stack and its prefetch).
constexpr bool prefetched_choice(LayerChoice c) noexcept {
  return c == LayerChoice::async_offload || c == LayerChoice::disk_offload;
}

/// Bytes layer `l` puts in host memory under choice `c` (see the file comment).
inline std::int64_t host_tier_bytes(const LayerProfile& l, LayerChoice c) {
  switch (c) {
    case LayerChoice::sync_offload:
    case LayerChoice::async_offload: return std::max<std::int64_t>(0, l.stash_bytes);
    case LayerChoice::offload_saved: return std::max<std::int64_t>(0, l.saved_bytes);
    case LayerChoice::keep:
    case LayerChoice::checkpoint:
    case LayerChoice::disk_offload: return 0;
  }
  return 0;
}

/// The disk bandwidths a model uses: given (`OffloadCosts`) or none (then no disk choice).
struct DiskRates {
  double write_bytes_per_s = 0, read_bytes_per_s = 0;
  bool known() const { return write_bytes_per_s > 0 && read_bytes_per_s > 0; }
};

inline DiskRates disk_rates(const OffloadCosts& costs) {
  DiskRates r{costs.disk_write_bytes_per_s.value_or(0.0), costs.disk_read_bytes_per_s.value_or(0.0)};
  ACTCKPT_CHECK(r.write_bytes_per_s >= 0 && r.read_bytes_per_s >= 0, UsageError,
                "actckpt: disk bandwidths must not be negative");
  return r;
}

inline double transfer_ms(std::int64_t bytes, double per_s) {
  return per_s > 0 ? 1e3 * static_cast<double>(bytes) / per_s : 0.0;
}

/// A disk offload's two ways, in ms: {out (device to disk), back (disk to device)}. The link's
/// bandwidths count only where host memory is separate (`link_d2h`/`link_h2d` 0 otherwise).
struct DiskCopyMs {
  double out_ms, back_ms;
};
inline DiskCopyMs disk_copy_ms(std::int64_t bytes, const DiskRates& disk, double link_d2h, double link_h2d) {
  return {transfer_ms(bytes, link_d2h) + transfer_ms(bytes, disk.write_bytes_per_s),
          transfer_ms(bytes, disk.read_bytes_per_s) + transfer_ms(bytes, link_h2d)};
}

/// How the chain search counts host bytes against a host budget. Exact (a unit of 1 byte) while
/// the distinct sums of host bytes that fit the budget stay within `max_sums`; beyond, every
/// layer's host bytes are rounded up to a unit of budget / max_sums bytes (a plan's rounded sum
/// is never below its true one, so a plan found always fits the budget), and the search is
/// exact among the plans whose rounded host bytes fit: at least every plan whose true host bytes
/// fit `budget - n x unit`. Without a host budget nothing is counted (the search as before).
class HostGrid {
 public:
  HostGrid() = default;
  /// `host[k][c]`: layer k's host bytes under choice c (index by `static_cast<std::size_t>(c)`),
  /// for the choices the model allows (others ignored: `allowed[k][c]` false).
  HostGrid(std::optional<std::int64_t> budget, const std::vector<std::vector<std::int64_t>>& host,
           const std::vector<std::vector<bool>>& allowed, std::size_t max_sums) {
    if (!budget) return;
    ACTCKPT_CHECK(*budget >= 0, UsageError, "actckpt: the host budget must not be negative, got ", *budget, " bytes");
    active_ = true;
    budget_ = *budget;
    host_ = host;
    // The distinct sums that fit, layer by layer, until there are too many.
    std::set<std::int64_t> sums{0};
    bool few = true;
    for (std::size_t k = 0; k < host.size() && few; ++k) {
      std::set<std::int64_t> next;
      for (auto s : sums)
        for (std::size_t c = 0; c < host[k].size(); ++c)
          if (allowed[k][c] && s + host[k][c] <= budget_) next.insert(s + host[k][c]);
      sums.swap(next);
      few = sums.size() <= max_sums;
    }
    if (few || max_sums == 0) return;
    unit_ = std::max<std::int64_t>(1, (budget_ + static_cast<std::int64_t>(max_sums) - 1) / static_cast<std::int64_t>(max_sums));
  }
  bool active() const { return active_; }
  /// Bytes per unit of the count (1: exact).
  std::int64_t unit() const { return unit_; }
  /// Layer k's host bytes under `c`, in units (rounded up); 0 without a host budget.
  std::int64_t units(std::size_t k, LayerChoice c) const {
    if (!active_) return 0;
    const std::int64_t b = host_[k][static_cast<std::size_t>(c)];
    return (b + unit_ - 1) / unit_;
  }
  /// The most units a plan may hold.
  std::int64_t limit() const { return active_ ? budget_ / unit_ : std::numeric_limits<std::int64_t>::max() / 4; }

 private:
  bool active_ = false;
  std::int64_t budget_ = 0, unit_ = 1;
  std::vector<std::vector<std::int64_t>> host_;
};

/// A chain's `HostGrid` for `host_budget` (none: inactive): `Model` is the chain's CostModel
/// (cost_model.hpp), which includes this header.
template <class Model>
HostGrid host_grid(const Model& model, std::optional<std::int64_t> host_budget, std::size_t max_sums) {
  if (!host_budget) return HostGrid();
  const std::size_t n = model.size(), choices = static_cast<std::size_t>(LayerChoice::disk_offload) + 1;
  std::vector<std::vector<std::int64_t>> bytes(n, std::vector<std::int64_t>(choices, 0));
  std::vector<std::vector<bool>> allowed(n, std::vector<bool>(choices, false));
  for (std::size_t k = 0; k < n; ++k)
    for (std::size_t c = 0; c < choices; ++c) {
      allowed[k][c] = model.allows(k, static_cast<LayerChoice>(c));
      bytes[k][c] = model.host_bytes(k, static_cast<LayerChoice>(c));
    }
  return HostGrid(host_budget, bytes, allowed, max_sums);
}

}  // namespace detail::planner
}  // namespace actckpt
