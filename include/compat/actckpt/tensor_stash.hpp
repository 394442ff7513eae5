#pragma once
/// \file tensor_stash.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/tensor_stash.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/tensor_stash.hpp"
