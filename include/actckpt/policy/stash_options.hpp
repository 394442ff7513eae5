#pragma once
/// \file stash_options.hpp
/// How a checkpointed layer keeps its inputs until backward. Policies produce these; a layer
/// holds its own copy, so code (a memory planner, say) can change it per layer at run time.

#include <cstddef>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>

#include "actckpt/base/errors.hpp"

namespace actckpt {

/// Where stashed inputs wait for backward.
enum class StashMode {
  device,      ///< stay where they are (classic checkpointing)
  sync_host,   ///< copied to host memory at once, copied back when needed, blocking
  async_host,  ///< copied on a side stream / worker, prefetched in backward
};

/// How a checkpointed layer recomputes (docs/forms.md "The two forms"; docs/pitfalls.md#forms).
enum class CheckpointForm {
  /// The process default: non_reentrant, or what ACTCKPT_CHECKPOINT_FORM says ("reentrant" or
  /// "non_reentrant", read once per process; the test suite runs once per form this way).
  process_default,
  /// PyTorch's `use_reentrant=False`: the forward records its graph under the caller's grad mode,
  /// saved activations are replaced by handles (saved-tensor hooks) and recomputed at their first
  /// use in backward. Gradients are those of the unwrapped layer for any use of autograd.
  non_reentrant,
  /// A custom autograd function: forward without grad, backward recomputes and differentiates
  /// with respect to the tensor arguments and the layer's registered parameters only.
  reentrant,
};

/// What happens when the host buffer pool cannot take a stash.
enum class PoolExhaustion {
  keep_on_device,  ///< documented fallback: the stash stays on the device (counted in the pool's `exhaustions`)
  throw_error,     ///< raise an error naming the layer, the size and the limit
  /// the stash goes to the context's disk store instead (offload/disk_store.hpp); a context
  /// without one is a `UsageError`, a full store an `OffloadFailed` naming its directory
  spill_to_disk,
};

/// Where an offloaded stash (sync_host or async_host) goes first.
enum class StashTier {
  host,  ///< the host buffer pool; `on_exhausted` says what happens when it is full
  disk,  ///< the context's disk store, straight (`DiskOffload`); the pool is not used
};

struct StashOptions {
  StashMode mode = StashMode::device;
  /// async_host: the newest N stashes stay on the device (backward needs them first).
  std::size_t keep_on_device = 1;
  /// sync_host and async_host: stashes smaller than this stay on the device (moving them frees
  /// next to nothing). Empty stashes always stay.
  std::size_t min_offload_bytes = 1024;
  PoolExhaustion on_exhausted = PoolExhaustion::keep_on_device;
  /// sync_host and async_host: host memory first, or the disk tier (`DiskOffload`).
  StashTier tier = StashTier::host;
  /// false: the layer is not checkpointed at all; it runs directly and autograd keeps its
  /// activations (a memory planner's "keep"). The fields above then do not matter.
  bool checkpoint = true;
  /// true: no recompute; every activation autograd saves is offloaded instead (torchtune's and
  /// Megatron-Core's fine-grained activation offload). The layer runs once, as with
  /// `checkpoint = false`, and each tensor autograd saves in its forward, parameters and buffers
  /// aside, is moved to the host pool as `mode` says (sync_host or async_host; device: nothing
  /// moves), with `min_offload_bytes` and `keep_on_device` applying per saved tensor; backward
  /// brings them back (async: prefetched a layer ahead). `checkpoint` is not read when this is set.
  /// Policies: `OffloadSaved` (async) and `SyncOffloadSaved`.
  bool offload_saved = false;
  /// Debug: checksum every offloaded stash when it leaves the device and verify it when it is
  /// back, failing the backward with a message naming the layer if they differ (a race that
  /// corrupted the stash). Costs two reductions and a device sync per stash each way; off by
  /// default. ACTCKPT_VERIFY_STASHES=1 in the environment turns it on for every stash.
  bool verify_checksums = false;
  /// Non-reentrant (saved-tensor hooks) or reentrant (custom autograd function) recompute.
  CheckpointForm form = CheckpointForm::process_default;
};

/// The form `process_default` stands for when ACTCKPT_CHECKPOINT_FORM is not set.
inline constexpr CheckpointForm built_in_default_form = CheckpointForm::non_reentrant;

/// `form`, with process_default replaced by the process's default (ACTCKPT_CHECKPOINT_FORM,
/// read once; any other value than "reentrant" or "non_reentrant" is an error).
inline CheckpointForm resolve(CheckpointForm form) {
  if (form != CheckpointForm::process_default) return form;
  static const CheckpointForm by_default = [] {
    const char* v = std::getenv("ACTCKPT_CHECKPOINT_FORM");
    if (v == nullptr || *v == '\0') return built_in_default_form;
    const std::string_view value(v);
    if (value == "reentrant") return CheckpointForm::reentrant;
    if (value == "non_reentrant") return CheckpointForm::non_reentrant;
    throw UsageError("actckpt: ACTCKPT_CHECKPOINT_FORM is '" + std::string(value) +
                     "'; it must be 'reentrant' or 'non_reentrant' (or unset)");
  }();
  return by_default;
}

constexpr std::string_view to_string(CheckpointForm f) noexcept {
  switch (f) {
    case CheckpointForm::process_default: return "process_default";
    case CheckpointForm::non_reentrant: return "non_reentrant";
    case CheckpointForm::reentrant: return "reentrant";
  }
  return "unknown";
}

constexpr std::string_view to_string(StashMode m) noexcept {
  switch (m) {
    case StashMode::device: return "device";
    case StashMode::sync_host: return "sync_host";
    case StashMode::async_host: return "async_host";
  }
  return "unknown";
}

}  // namespace actckpt
