#pragma once
/// \file planner.hpp
/// The memory-budget planner: "fit this training step in N bytes, as fast as possible".
/// \code
///   actckpt::MemoryMeter meter(device);                  // optional; before the model counts weights
///   ... build the model with Checkpointed<Block, NoOffload> layers ...
///   auto step = [&] { model->zero_grad(); loss_of(model->forward(x)).backward(); };
///   actckpt::PlannerOptions options;
///   options.meter = &meter;
///   actckpt::MemoryPlan plan = actckpt::plan_memory(*model, step, 512ull << 20, options);
///   std::cout << plan.describe();                         // "layers 0-5 checkpoint, 6-7 keep"
///   plan.apply(*model);                                   // each layer's StashOptions set
/// \endcode
/// For each `Checkpointed` layer of a chain it chooses one of five things (`LayerChoice`): keep
/// (not checkpointed: autograd keeps its activations), checkpoint (inputs stay on the device),
/// sync offload, async offload (of the checkpoint's inputs), offload saved (no recompute: every
/// activation autograd saves goes to the host pool and comes back a layer ahead in backward); the
/// choice is set at run time through the layer's `StashOptions`, so any policy type works and
/// gradients stay those of the unwrapped model.
///
/// The parts, each in its own header (this one includes them all; include it, or search.hpp
/// alone to plan from a profile without torch::nn):
///  - plan.hpp: the types (choices, profiles, plans) and the StashOptions of each choice;
///  - profiler.hpp: `profile_step`, which measures a model's sample step;
///  - cost_model.hpp: `evaluate_plan`, a plan's predicted peak and step time;
///  - search.hpp: `plan_for_budget` and `smallest_feasible_budget`, on a profile alone;
///  - optimizer_state.hpp: `optimizer_state_bytes`, the state an optimizer's first step creates;
///  - here: `plan_memory` (profile, then search) and `MemoryPlan::apply`.

#include <torch/nn/module.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>

#include "actckpt/base/errors.hpp"
#include "actckpt/planner/cost_model.hpp"
#include "actckpt/planner/optimizer_state.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/planner/profiler.hpp"
#include "actckpt/planner/search.hpp"

namespace actckpt {

/// Profiles the step and returns the fastest plan that fits `budget_bytes` (not applied: call
/// `apply`). Bad input raises an error and leaves the model as it was.
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const PlannerOptions& options = {}) {
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_memory: the memory budget must be positive, got ", budget_bytes, " bytes");
  return plan_for_budget(profile_step(model, step, options), budget_bytes, options.costs);
}

/// The same, planned before `optimizer`'s first step: the state that step will create on the
/// model's device (`optimizer_state_bytes`) is added to `options.reserve_bytes`.
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const torch::optim::Optimizer& optimizer, PlannerOptions options = {}) {
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_memory: the memory budget must be positive, got ",
                budget_bytes, " bytes");
  c10::Device device(c10::kCPU);
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  options.reserve_bytes += optimizer_state_bytes(optimizer, options.meter ? options.meter->device() : device);
  return plan_for_budget(profile_step(model, step, options), budget_bytes, options.costs);
}

inline void MemoryPlan::apply(torch::nn::Module& model) const {
  auto layers = detail::planner::find_layers(model);
  std::size_t wanted = 0;
  for (auto i : module_index) wanted = std::max(wanted, i + 1);
  ACTCKPT_CHECK(layers.size() == choices.size() && wanted == layers.size(), UsageError, "actckpt::MemoryPlan::apply: the plan is for ",
              choices.size(), " Checkpointed layers, the model has ", layers.size());
  for (std::size_t p = 0; p < choices.size(); ++p) {
    auto* layer = layers[module_index[p]];
    layer->set_stash_options(detail::planner::options_for(choices[p], layer->stash_options()));
  }
}

}  // namespace actckpt
