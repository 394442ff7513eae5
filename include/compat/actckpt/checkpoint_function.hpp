#pragma once
/// \file checkpoint_function.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/reentrant.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/reentrant.hpp"
