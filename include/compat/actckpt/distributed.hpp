#pragma once
/// \file distributed.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/distributed/distributed.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/distributed/distributed.hpp"
