#pragma once
/// \file stash_options.hpp
/// How a checkpointed layer keeps its inputs until backward. Policies produce these; a layer
/// holds its own copy, so code (a memory planner, say) can change it per layer at run time.

#include <cstddef>
#include <string_view>

namespace actckpt {

/// Where stashed inputs wait for backward.
enum class StashMode {
  device,      ///< stay where they are (classic checkpointing)
  sync_host,   ///< copied to host memory at once, copied back when needed, blocking
  async_host,  ///< copied on a side stream / worker, prefetched in backward
};

/// What happens when the host buffer pool cannot take a stash.
enum class PoolExhaustion {
  keep_on_device,  ///< documented fallback: the stash stays on the device (counted in the pool's `exhaustions`)
  throw_error,     ///< raise an error naming the layer, the size and the limit
};

struct StashOptions {
  StashMode mode = StashMode::device;
  /// async_host: the newest N stashes stay on the device (backward needs them first).
  std::size_t keep_on_device = 1;
  /// sync_host and async_host: stashes smaller than this stay on the device (moving them frees
  /// next to nothing). Empty stashes always stay.
  std::size_t min_offload_bytes = 1024;
  PoolExhaustion on_exhausted = PoolExhaustion::keep_on_device;
  /// false: the layer is not checkpointed at all; it runs directly and autograd keeps its
  /// activations (a memory planner's "keep"). The fields above then do not matter.
  bool checkpoint = true;
  /// Debug: checksum every offloaded stash when it leaves the device and verify it when it is
  /// back, failing the backward with a message naming the layer if they differ (a race that
  /// corrupted the stash). Costs two reductions and a device sync per stash each way; off by
  /// default. ACTCKPT_VERIFY_STASHES=1 in the environment turns it on for every stash.
  bool verify_checksums = false;
};

constexpr std::string_view to_string(StashMode m) noexcept {
  switch (m) {
    case StashMode::device: return "device";
    case StashMode::sync_host: return "sync_host";
    case StashMode::async_host: return "async_host";
  }
  return "unknown";
}

}  // namespace actckpt
