#pragma once
/// \file autocast_state.hpp
/// The autocast state of the forward, replayed around the recompute (docs/pitfalls.md#p2).
/// Autocast is thread-local and backward runs under the caller's state, not the forward's, so the
/// state is captured in forward and set explicitly (on or off) for the recompute, mirroring
/// Python's `torch.autocast` enter/exit (nesting counter and cast cache).

#include <ATen/autocast_mode.h>
#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>
#include <c10/core/ScalarType.h>

#include <optional>

#include "actckpt/base/config.hpp"

namespace actckpt {

/// Enabled flag and low-precision dtype of autocast for CPU and CUDA, plus the cache flag.
struct AutocastState {
  bool cpu_enabled = false;
  bool cuda_enabled = false;
  c10::ScalarType cpu_dtype = c10::kBFloat16;
  c10::ScalarType cuda_dtype = c10::kHalf;
  bool cache_enabled = true;

  /// The calling thread's current state.
  static AutocastState current() {
    AutocastState s;
#if ACTCKPT_TORCH_AT_LEAST(2, 4)
    s.cpu_enabled = at::autocast::is_autocast_enabled(c10::DeviceType::CPU);
    s.cuda_enabled = at::autocast::is_autocast_enabled(c10::DeviceType::CUDA);
    s.cpu_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CPU);
    s.cuda_dtype = at::autocast::get_autocast_dtype(c10::DeviceType::CUDA);
#else
    s.cpu_enabled = at::autocast::is_cpu_enabled();
    s.cuda_enabled = at::autocast::is_enabled();
    s.cpu_dtype = at::autocast::get_autocast_cpu_dtype();
    s.cuda_dtype = at::autocast::get_autocast_gpu_dtype();
#endif
    s.cache_enabled = at::autocast::is_autocast_cache_enabled();
    return s;
  }

  bool any_enabled() const { return cpu_enabled || cuda_enabled; }

  /// Makes this the calling thread's state (flags, dtypes and cache flag).
  void apply() const {
#if ACTCKPT_TORCH_AT_LEAST(2, 4)
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, cpu_enabled);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, cuda_enabled);
    at::autocast::set_autocast_dtype(c10::DeviceType::CPU, cpu_dtype);
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, cuda_dtype);
#else
    at::autocast::set_cpu_enabled(cpu_enabled);
    at::autocast::set_enabled(cuda_enabled);
    at::autocast::set_autocast_cpu_dtype(cpu_dtype);
    at::autocast::set_autocast_gpu_dtype(cuda_dtype);
#endif
    at::autocast::set_autocast_cache_enabled(cache_enabled);
  }
};

/// For its lifetime the thread runs under `state`; on exit the caller's state comes back and,
/// like Python's autocast exit, the cast cache is cleared when the outermost region closes.
class AutocastReplayGuard {
 public:
  explicit AutocastReplayGuard(const AutocastState& state) : callers_(AutocastState::current()) {
    state.apply();
    nested_ = state.any_enabled();
    if (nested_) at::autocast::increment_nesting();
  }
  ~AutocastReplayGuard() {
    if (nested_ && at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    callers_.apply();
  }
  AutocastReplayGuard(const AutocastReplayGuard&) = delete;
  AutocastReplayGuard& operator=(const AutocastReplayGuard&) = delete;

 private:
  AutocastState callers_;
  bool nested_ = false;
};

/// For its lifetime autocast neither reads nor fills its cast cache. A checkpointed layer runs
/// its forward with grad mode off, so a cached cast of a parameter made there has no autograd
/// history; any later use of that parameter in the same autocast region (a tied weight used
/// again outside the checkpoint, or the recompute itself when backward runs inside the region)
/// would take the cached cast and the parameter would silently lose that gradient. Casting
/// afresh gives bitwise the same values.
class AutocastCacheOff {
 public:
  AutocastCacheOff() : before_(at::autocast::is_autocast_cache_enabled()) {
    at::autocast::set_autocast_cache_enabled(false);
  }
  ~AutocastCacheOff() { at::autocast::set_autocast_cache_enabled(before_); }
  AutocastCacheOff(const AutocastCacheOff&) = delete;
  AutocastCacheOff& operator=(const AutocastCacheOff&) = delete;

 private:
  bool before_;
};

/// Runs its scope under autocast to `dtype` on `device`'s type (nullopt: no autocast, the scope
/// changes nothing), as Python's `torch.autocast(device_type, dtype)` does; like it, the cast
/// cache is dropped when the scope ends.
/// \code
///   { actckpt::AutocastScope autocast(device, c10::kBFloat16); loss = model(x).float().pow(2).mean(); }
/// \endcode
class AutocastScope {
 public:
  AutocastScope(c10::Device device, std::optional<c10::ScalarType> dtype) {
    if (!dtype) return;
    AutocastState state = AutocastState::current();
    if (device.is_cuda()) {
      state.cuda_enabled = true;
      state.cuda_dtype = *dtype;
    } else {
      state.cpu_enabled = true;
      state.cpu_dtype = *dtype;
    }
    guard_.emplace(state);
  }

 private:
  std::optional<AutocastReplayGuard> guard_;
};

}  // namespace actckpt
