#pragma once
/// \file no_offload.hpp
/// Classic checkpointing: each layer keeps only its inputs, on the device, and recomputes.

#include "actckpt/policy/policy.hpp"

namespace actckpt {

struct NoOffload {
  static constexpr std::string_view name = "NoOffload";
  static StashOptions options() { return StashOptions{StashMode::device, 0, 0, PoolExhaustion::keep_on_device}; }
};

static_assert(OffloadPolicy<NoOffload>);

}  // namespace actckpt
