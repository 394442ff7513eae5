#pragma once
/// \file planner.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/planner/planner.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/planner/planner.hpp"
