#pragma once
/// \file rng_state.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/replay/rng_state.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/replay/rng_state.hpp"
