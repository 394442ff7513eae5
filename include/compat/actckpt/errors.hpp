#pragma once
/// \file errors.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/base/errors.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/base/errors.hpp"
