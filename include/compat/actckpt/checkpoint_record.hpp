#pragma once
/// \file checkpoint_record.hpp
/// Deprecated path, kept for one release: this header moved to <actckpt/core/checkpoint_record.hpp>.
/// Include that path (or <actckpt/actckpt.hpp>); this forwarding header will be removed.
#include "actckpt/core/checkpoint_record.hpp"
