#pragma once
/// \file offload_saved.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/policy/offload_saved.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/policy/offload_saved.hpp"
