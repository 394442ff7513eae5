#pragma once
/// \file autocast_state.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/replay/autocast_state.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/replay/autocast_state.hpp"
