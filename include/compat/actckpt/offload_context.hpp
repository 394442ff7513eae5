#pragma once
/// \file offload_context.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/offload_context.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/offload_context.hpp"
