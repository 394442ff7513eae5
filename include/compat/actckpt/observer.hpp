#pragma once
/// \file observer.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/base/observer.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/base/observer.hpp"
