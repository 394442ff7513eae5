#pragma once
/// \file label_layers.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/layer/label_layers.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/layer/label_layers.hpp"
