#pragma once
/// \file sync_offload.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/policy/sync_offload.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/policy/sync_offload.hpp"
