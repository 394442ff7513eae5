#pragma once
/// \file plain.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/wrap/plain.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/wrap/plain.hpp"
