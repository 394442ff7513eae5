#pragma once
/// \file functional.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/wrap/functional.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/wrap/functional.hpp"
