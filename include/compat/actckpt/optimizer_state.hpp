#pragma once
/// \file optimizer_state.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/planner/optimizer_state.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/planner/optimizer_state.hpp"
