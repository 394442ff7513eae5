#pragma once
/// \file async_offload.hpp
/// Checkpointing with the inputs moved to pinned host memory on a side stream (a worker thread
/// on CPU), the newest `KeepOnDevice` stashes left on the device, stashes under
/// `MinOffloadBytes` never moved, and the next stash prefetched while a layer recomputes.

#include <cstddef>

#include "actckpt/policy/policy.hpp"

namespace actckpt {

template <std::size_t KeepOnDevice = 1, std::size_t MinOffloadBytes = 1024,
          PoolExhaustion OnExhausted = PoolExhaustion::keep_on_device>
struct BasicAsyncOffload {
  static constexpr std::string_view name = "AsyncOffload";
  static StashOptions options() {
    return StashOptions{StashMode::async_host, KeepOnDevice, MinOffloadBytes, OnExhausted};
  }
};

using AsyncOffload = BasicAsyncOffload<>;

static_assert(OffloadPolicy<AsyncOffload>);

}  // namespace actckpt
