#pragma once
/// \file layer_traits.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/layer/layer_traits.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/layer/layer_traits.hpp"
