#pragma once
/// \file config.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/base/config.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/base/config.hpp"
