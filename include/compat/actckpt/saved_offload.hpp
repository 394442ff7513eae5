#pragma once
/// \file saved_offload.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/offload_saved.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/offload_saved.hpp"
// It used to include the non-reentrant form; code that relied on that keeps compiling.
#include "actckpt/core/non_reentrant.hpp"
