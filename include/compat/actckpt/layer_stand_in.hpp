#pragma once
/// \file layer_stand_in.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/layer/layer_stand_in.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/layer/layer_stand_in.hpp"
