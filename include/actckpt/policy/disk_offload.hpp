#pragma once
/// \file disk_offload.hpp
/// Checkpointing with the inputs written to the offload context's disk store
/// (offload/disk_store.hpp) on the copy worker, as async offload moves them to host memory: the
/// newest `KeepOnDevice` stashes stay on the device, stashes under `MinOffloadBytes` never move,
/// and backward reads the next stash back while a layer recomputes. The host pool is not used.
/// \code
///   auto ctx = actckpt::OffloadContext::create(actckpt::HostBufferPool::create(8ull << 30), actckpt::DiskStore::open(o));
///   actckpt::OffloadContextScope scope(ctx);
///   actckpt::Checkpointed<Block, actckpt::DiskOffload> layer(block);
/// \endcode
/// A context without a disk store is a `UsageError` at the first stash; a full store an
/// `OffloadFailed` naming its directory (the stash does not stay on the device silently).

#include <cstddef>

#include "actckpt/policy/policy.hpp"

namespace actckpt {

template <std::size_t KeepOnDevice = 1, std::size_t MinOffloadBytes = 1024>
struct BasicDiskOffload {
  static constexpr std::string_view name = "DiskOffload";
  static StashOptions options() {
    StashOptions o{StashMode::async_host, KeepOnDevice, MinOffloadBytes, PoolExhaustion::spill_to_disk};
    o.tier = StashTier::disk;
    return o;
  }
};

using DiskOffload = BasicDiskOffload<>;

static_assert(OffloadPolicy<DiskOffload>);

}  // namespace actckpt
