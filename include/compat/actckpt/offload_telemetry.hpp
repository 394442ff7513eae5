#pragma once
/// \file offload_telemetry.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/offload/offload_telemetry.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/offload/offload_telemetry.hpp"
