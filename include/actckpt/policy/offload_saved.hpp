#pragma once
/// \file offload_saved.hpp
/// Policies for offloading every saved activation instead of recomputing
/// (`StashOptions::offload_saved`; the mechanism is core/offload_saved.hpp): the layer runs once, and each tensor
/// autograd saves in its forward, parameters and buffers aside, waits for backward in the host
/// pool. Worth it on a GPU whose host link is fast enough to hide the copies behind compute; on
/// CPU host and "device" memory are the same RAM, so it saves nothing there.
/// \code
///   actckpt::Checkpointed<Block, actckpt::OffloadSaved> layer(block);
///   auto y = actckpt::checkpoint<actckpt::OffloadSaved>(fn, x);
/// \endcode

#include <cstddef>

#include "actckpt/policy/policy.hpp"

namespace actckpt {

/// Asynchronous: saved tensors move to the host on the copy engine's side stream (a worker
/// thread on CPU) once `KeepOnDevice` newer saved tensors exist, and come back prefetched a layer
/// ahead in backward. Saved tensors addressing fewer than `MinOffloadBytes` stay on the device.
template <std::size_t KeepOnDevice = 0, std::size_t MinOffloadBytes = 1024,
          PoolExhaustion OnExhausted = PoolExhaustion::keep_on_device>
struct BasicOffloadSaved {
  static constexpr std::string_view name = "OffloadSaved";
  static StashOptions options() {
    StashOptions o{StashMode::async_host, KeepOnDevice, MinOffloadBytes, OnExhausted};
    o.offload_saved = true;
    return o;
  }
};

/// Synchronous: saved tensors are on the host when the layer's forward returns, and are copied
/// back, blocking, when its backward first needs one.
template <std::size_t MinOffloadBytes = 1024, PoolExhaustion OnExhausted = PoolExhaustion::keep_on_device>
struct BasicSyncOffloadSaved {
  static constexpr std::string_view name = "SyncOffloadSaved";
  static StashOptions options() {
    StashOptions o{StashMode::sync_host, 0, MinOffloadBytes, OnExhausted};
    o.offload_saved = true;
    return o;
  }
};

using OffloadSaved = BasicOffloadSaved<>;
using SyncOffloadSaved = BasicSyncOffloadSaved<>;

static_assert(OffloadPolicy<OffloadSaved>);
static_assert(OffloadPolicy<SyncOffloadSaved>);

}  // namespace actckpt
