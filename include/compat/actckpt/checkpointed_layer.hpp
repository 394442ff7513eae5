#pragma once
/// \file checkpointed_layer.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/layer/checkpointed_layer.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/layer/checkpointed_layer.hpp"
