#pragma once
/// \file actckpt.hpp
/// Umbrella header of actckpt: activation checkpointing with CPU offload for LibTorch.
/// \code
///   #include <actckpt/actckpt.hpp>
///   actckpt::Checkpointed<Block, actckpt::AsyncOffload> layer(block);
/// \endcode

#include "actckpt/config.hpp"
#include "actckpt/errors.hpp"
#include "actckpt/stash_options.hpp"
#include "actckpt/policy.hpp"
#include "actckpt/no_offload.hpp"
#include "actckpt/sync_offload.hpp"
#include "actckpt/async_offload.hpp"
#include "actckpt/offload_saved.hpp"
#include "actckpt/observer.hpp"
#include "actckpt/host_buffer_pool.hpp"
#include "actckpt/offload_telemetry.hpp"
#include "actckpt/copy_engine.hpp"
#include "actckpt/offload_context.hpp"
#include "actckpt/argument_storage.hpp"
#include "actckpt/layer_traits.hpp"
#include "actckpt/checkpointed_layer.hpp"
#include "actckpt/label_layers.hpp"
#include "actckpt/saved_tensor_hooks.hpp"
#include "actckpt/saved_offload.hpp"
#include "actckpt/checkpointed.hpp"
#include "actckpt/functional.hpp"
#include "actckpt/plain.hpp"
#include "actckpt/wrap_every.hpp"
#include "actckpt/memory_meter.hpp"
#include "actckpt/memory_timeline.hpp"
#include "actckpt/optimizer_state.hpp"
#include "actckpt/planner.hpp"
