#pragma once
/// \file checkpointed.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/wrap/checkpointed.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/wrap/checkpointed.hpp"
