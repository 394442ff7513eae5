#pragma once
/// \file optimizer_state.hpp
/// `actckpt::optimizer_state_bytes(optimizer, device)`: the device bytes an optimizer's state
/// will take once its first `step()` has created it, minus what already exists. LibTorch's
/// optimizers create most of their state lazily (SGD's momentum buffers, Adam's averages), so a
/// memory plan made before the first step does not see it; the planner adds this figure
/// (`PlannerOptions::reserve_bytes`, or `plan_memory(model, step, budget, optimizer)`).
///
/// Per parameter that requires grad and has no state yet, in the parameter's size and dtype:
///  - SGD: one buffer when `momentum != 0`, none otherwise;
///  - Adam, AdamW: two (`exp_avg`, `exp_avg_sq`), three with `amsgrad`;
///  - RMSprop: one (`square_avg`), plus one with `momentum > 0`, plus one when `centered`;
///  - Adagrad: none (its state is made by its constructor, so it already exists).
/// Any other optimizer (LBFGS, a user's own) raises a UsageError: give
/// `PlannerOptions::reserve_bytes` yourself. On CUDA each tensor is rounded up to the caching
/// allocator's 512-byte blocks, as the meter counts it.

#include <torch/optim/adagrad.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/rmsprop.h>
#include <torch/optim/sgd.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>

#include "actckpt/base/errors.hpp"

namespace actckpt {

namespace detail {
/// Whether `state` (Optimizer::state(): keyed by the TensorImpl's address, as a string in
/// LibTorch 1.13 and as a pointer in 2.x) has an entry for `p`.
template <class StateMap>
bool has_optimizer_state(const StateMap& state, const at::Tensor& p) {
  using Key = typename StateMap::key_type;
  if constexpr (std::is_same_v<Key, std::string>) {
    std::ostringstream key;  // c10::guts::to_string's spelling of the pointer
    key << p.unsafeGetTensorImpl();
    return state.find(key.str()) != state.end();
  } else {
    return state.find(static_cast<Key>(p.unsafeGetTensorImpl())) != state.end();
  }
}

/// How many parameter-sized state tensors `options` makes per parameter at its first step.
inline int state_tensors_per_parameter(const torch::optim::OptimizerOptions& options) {
  if (const auto* sgd = dynamic_cast<const torch::optim::SGDOptions*>(&options)) return sgd->momentum() != 0 ? 1 : 0;
  if (const auto* adam = dynamic_cast<const torch::optim::AdamOptions*>(&options)) return adam->amsgrad() ? 3 : 2;
  if (const auto* adamw = dynamic_cast<const torch::optim::AdamWOptions*>(&options)) return adamw->amsgrad() ? 3 : 2;
  if (const auto* rms = dynamic_cast<const torch::optim::RMSpropOptions*>(&options))
    return 1 + (rms->momentum() > 0 ? 1 : 0) + (rms->centered() ? 1 : 0);
  if (dynamic_cast<const torch::optim::AdagradOptions*>(&options) != nullptr) return 0;
  throw UsageError(
      "actckpt::optimizer_state_bytes: this optimizer is not one whose state actckpt knows how to estimate "
      "(SGD, Adam, AdamW, RMSprop, Adagrad); give the bytes its state will take as "
      "PlannerOptions::reserve_bytes instead");
}
}  // namespace detail

/// The bytes on `device` that `optimizer`'s state will add at its first step (see the file
/// comment); 0 once every parameter has its state.
inline std::int64_t optimizer_state_bytes(const torch::optim::Optimizer& optimizer, c10::Device device) {
  std::int64_t total = 0;
  for (const auto& group : optimizer.param_groups()) {
    const int per_parameter = detail::state_tensors_per_parameter(group.options());
    if (per_parameter == 0) continue;
    for (const auto& p : group.params()) {
      if (!p.requires_grad() || p.device() != device || detail::has_optimizer_state(optimizer.state(), p)) continue;
      auto bytes = static_cast<std::int64_t>(p.numel()) * static_cast<std::int64_t>(p.element_size());
      if (device.is_cuda()) bytes = (bytes + 511) / 512 * 512;
      total += per_parameter * bytes;
    }
  }
  return total;
}

}  // namespace actckpt
