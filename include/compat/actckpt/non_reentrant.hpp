#pragma once
/// \file non_reentrant.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/non_reentrant.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/non_reentrant.hpp"
