#pragma once
/// \file disk_probe.hpp
/// The disk bandwidths the planner charges a disk offload with (`OffloadCosts::disk_write_bytes_per_s`,
/// `disk_read_bytes_per_s`), measured by a short probe of the store itself: a few MiB written
/// and read back through `DiskStore::write` / `read`, the path a stash takes (its file, its
/// `direct_io` choice, the page cache when buffered), in the store's own space (an extent taken
/// and given back). `plan_memory` runs it on `PlannerOptions::disk_store` (or the current
/// `OffloadContext`'s store) when the costs give no disk bandwidths.
/// \code
///   auto disk = actckpt::DiskStore::open(o);
///   actckpt::OffloadCosts costs;
///   actckpt::set_disk_bandwidth(costs, *disk);   // or costs.disk_write_bytes_per_s = 2e9, ...
/// \endcode
/// The figures are medians of `passes` timed passes after one untimed one (the extent's first
/// write). They are host-side figures: on CUDA the planner adds the device-to-host link's copy.

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/offload/disk_store.hpp"
#include "actckpt/planner/plan.hpp"

namespace actckpt {

/// A store's measured bandwidths, bytes per second.
struct DiskBandwidth {
  double write_bytes_per_s = 0;
  double read_bytes_per_s = 0;
  std::size_t probe_bytes = 0;  ///< the bytes each pass moved each way
};

/// Writes and reads `bytes` (at most the store's largest free range) through `store`, `passes`
/// times after an untimed pass, and returns the median bandwidths. Throws `UsageError` when the
/// store has no free space to probe with.
inline DiskBandwidth measure_disk_bandwidth(DiskStore& store, std::size_t bytes = std::size_t{8} << 20, int passes = 3) {
  ACTCKPT_CHECK(bytes > 0 && passes > 0, UsageError, "actckpt::measure_disk_bandwidth: bytes and passes must be positive");
  bytes = std::min(bytes, store.stats().largest_free_bytes);
  ACTCKPT_CHECK(bytes > 0, UsageError, "actckpt::measure_disk_bandwidth: the disk store has no free space to probe with");
  auto extent = store.try_acquire(bytes);
  ACTCKPT_CHECK(extent != nullptr, UsageError, "actckpt::measure_disk_bandwidth: the disk store has no free space to probe with");
  auto src = at::empty({static_cast<std::int64_t>(bytes)}, at::TensorOptions().dtype(at::kByte));
  src.fill_(7);
  auto dst = at::empty_like(src);
  std::vector<double> w, r;
  for (int pass = 0; pass <= passes; ++pass) {
    const auto t0 = std::chrono::steady_clock::now();
    store.write(*extent, src, nullptr);
    const auto t1 = std::chrono::steady_clock::now();
    store.read(*extent, dst, nullptr);
    const auto t2 = std::chrono::steady_clock::now();
    if (pass == 0) continue;  // the extent's first write
    w.push_back(std::max(1e-9, std::chrono::duration<double>(t1 - t0).count()));
    r.push_back(std::max(1e-9, std::chrono::duration<double>(t2 - t1).count()));
  }
  std::sort(w.begin(), w.end());
  std::sort(r.begin(), r.end());
  const double b = static_cast<double>(bytes);
  return DiskBandwidth{b / w[w.size() / 2], b / r[r.size() / 2], bytes};
}

/// Sets `costs`' disk bandwidths from a probe of `store` where `costs` gives none.
inline void set_disk_bandwidth(OffloadCosts& costs, DiskStore& store) {
  if (costs.disk_write_bytes_per_s && costs.disk_read_bytes_per_s) return;
  const auto measured = measure_disk_bandwidth(store);
  if (!costs.disk_write_bytes_per_s) costs.disk_write_bytes_per_s = measured.write_bytes_per_s;
  if (!costs.disk_read_bytes_per_s) costs.disk_read_bytes_per_s = measured.read_bytes_per_s;
}

}  // namespace actckpt
