#pragma once
/// \file memory_meter.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/measure/memory_meter.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/measure/memory_meter.hpp"
