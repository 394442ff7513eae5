#pragma once
/// \file actckpt.hpp
/// Umbrella header of actckpt: activation checkpointing with CPU offload for LibTorch.
/// \code
///   #include <actckpt/actckpt.hpp>
///   actckpt::Checkpointed<Block, actckpt::AsyncOffload> layer(block);
/// \endcode

#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/policy/stash_options.hpp"
#include "actckpt/policy/policy.hpp"
#include "actckpt/policy/no_offload.hpp"
#include "actckpt/policy/sync_offload.hpp"
#include "actckpt/policy/async_offload.hpp"
#include "actckpt/policy/offload_saved.hpp"
#include "actckpt/policy/disk_offload.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/offload/host_buffer_pool.hpp"
#include "actckpt/offload/offload_telemetry.hpp"
#include "actckpt/offload/disk_store.hpp"
#include "actckpt/offload/copy_engine.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/layer/argument_storage.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/layer/checkpointed_layer.hpp"
#include "actckpt/layer/label_layers.hpp"
#include "actckpt/hooks/saved_tensor_hooks.hpp"
#include "actckpt/core/offload_saved.hpp"
#include "actckpt/wrap/checkpointed.hpp"
#include "actckpt/wrap/functional.hpp"
#include "actckpt/wrap/plain.hpp"
#include "actckpt/wrap/wrap_every.hpp"
#include "actckpt/measure/memory_meter.hpp"
#include "actckpt/measure/memory_timeline.hpp"
#include "actckpt/planner/optimizer_state.hpp"
#include "actckpt/planner/planner.hpp"
