#pragma once
/// \file argument_storage.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/layer/argument_storage.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/layer/argument_storage.hpp"
