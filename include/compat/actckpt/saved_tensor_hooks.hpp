#pragma once
/// \file saved_tensor_hooks.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/hooks/saved_tensor_hooks.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/hooks/saved_tensor_hooks.hpp"
