#pragma once
/// \file sync_offload.hpp
/// Checkpointing with the inputs moved to host memory in forward (the device copy is released
/// before the next layer runs) and copied back in backward, both blocking.

#include "actckpt/policy/policy.hpp"

namespace actckpt {

/// `OnExhausted`: what happens when the host pool cannot take a stash.
template <PoolExhaustion OnExhausted = PoolExhaustion::keep_on_device>
struct BasicSyncOffload {
  static constexpr std::string_view name = "SyncOffload";
  static StashOptions options() { return StashOptions{StashMode::sync_host, 0, 0, OnExhausted}; }
};

using SyncOffload = BasicSyncOffload<>;

static_assert(OffloadPolicy<SyncOffload>);

}  // namespace actckpt
