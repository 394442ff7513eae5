#pragma once
/// \file policy.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/policy/policy.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/policy/policy.hpp"
