#pragma once
/// \file checkpoint_record.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/checkpoint_record.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/checkpoint_record.hpp"
// It was split by job: the typed record (argument binding) and buffer replay came with it.
#include "actckpt/core/argument_binding.hpp"
#include "actckpt/replay/buffer_replay.hpp"
