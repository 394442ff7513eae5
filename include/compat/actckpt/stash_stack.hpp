#pragma once
/// \file stash_stack.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/stash_stack.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/stash_stack.hpp"
