#pragma once
/// \file wrap_every.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/wrap/wrap_every.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/wrap/wrap_every.hpp"
