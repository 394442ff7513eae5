#pragma once
/// \file copy_engine.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/copy_engine.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/copy_engine.hpp"
