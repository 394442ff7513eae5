#pragma once
/// \file host_buffer_pool.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/host_buffer_pool.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/host_buffer_pool.hpp"
