#pragma once
/// \file stash_options.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/policy/stash_options.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/policy/stash_options.hpp"
