#pragma once
/// \file saved_offload.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/offload_saved.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/offload_saved.hpp"
