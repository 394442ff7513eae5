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
/// It plans chains and, at call level, any step as the user wrote it: a layer whose forward runs
/// several times (a GAN's discriminator, shared weights), several backward calls, accumulated
/// micro-batches (call_model.hpp). `PlanMonitor` reports a training step that calls the layers
/// otherwise than the profiled one. For each `Checkpointed` layer it chooses one of five things (`LayerChoice`): keep
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
///  - tier_model.hpp: host bytes against `PlannerOptions::host_budget_bytes`, the disk tier's costs;
///  - disk_probe.hpp: `measure_disk_bandwidth`, a disk store's bandwidths for the disk tier;
///  - optimizer_state.hpp: `optimizer_state_bytes`, the state an optimizer's first step creates;
///  - here: `plan_memory` (profile, then search) and `MemoryPlan::apply`.

#include <torch/nn/module.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/planner/cost_model.hpp"
#include "actckpt/planner/disk_probe.hpp"
#include "actckpt/planner/optimizer_state.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/planner/profiler.hpp"
#include "actckpt/planner/search.hpp"

namespace actckpt {
namespace detail::planner {

/// `options.costs`, with the disk bandwidths probed from `options.disk_store` (or the current
/// offload context's store) where the costs give none. A store with no free space is not probed
/// (no disk choice then: it could not take a stash either).
inline OffloadCosts costs_with_disk(const PlannerOptions& options) {
  OffloadCosts costs = options.costs;
  if (costs.disk_write_bytes_per_s && costs.disk_read_bytes_per_s) return costs;
  auto store = options.disk_store ? options.disk_store : OffloadContext::current()->disk_ptr();
  if (store && store->stats().largest_free_bytes > 0) set_disk_bandwidth(costs, *store);
  return costs;
}

}  // namespace detail::planner

/// Profiles the step and returns the fastest plan that fits `budget_bytes` (not applied: call
/// `apply`). Bad input raises an error and leaves the model as it was. With
/// `options.host_budget_bytes` the plan puts at most that much in host memory; the disk tier is
/// open to it where disk bandwidths are given or a disk store can be probed (`options.disk_store`).
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const PlannerOptions& options = {}) {
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_memory: the memory budget must be positive, got ", budget_bytes, " bytes");
  return plan_for_budget(profile_step(model, step, options), budget_bytes, detail::planner::costs_with_disk(options),
                         options.host_budget_bytes);
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
  return plan_for_budget(profile_step(model, step, options), budget_bytes, detail::planner::costs_with_disk(options),
                         options.host_budget_bytes);
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

/// How `PlanMonitor` reports a step whose calls differ from the plan's.
enum class SequenceCheck { warn, strict };

/// Watches a planned model train: a plan holds for the calls it was profiled with, so a step
/// whose layers' forward calls differ (data-dependent control flow: a layer skipped, run once
/// more, in another order) runs a plan made for another step, and its peak may not be the one
/// predicted. Call `step_done()` after each training step; the first step that differs is
/// reported once, naming its first differing call: a LibTorch warning, or with
/// `SequenceCheck::strict` a `UsageError` (thrown from `step_done`, in the caller's thread).
/// While it lives an observer listens to the layers' events (kept layers then announce their
/// phases too: a gradient hook per call).
class PlanMonitor {
 public:
  PlanMonitor(torch::nn::Module& model, const MemoryPlan& plan, SequenceCheck check = SequenceCheck::warn)
      : check_(check), expected_(plan.call_sequence), labels_(plan.labels), recorder_(std::make_shared<Recorder>()) {
    auto layers = detail::planner::find_layers(model);
    ACTCKPT_CHECK(layers.size() == plan.choices.size(), UsageError, "actckpt::PlanMonitor: the plan is for ",
                  plan.choices.size(), " Checkpointed layers, the model has ", layers.size());
    for (std::size_t p = 0; p < plan.module_index.size(); ++p)
      recorder_->position.emplace(static_cast<const void*>(static_cast<const CheckpointedLayer*>(layers[plan.module_index[p]])), p);
    scope_ = std::make_unique<ObserverScope>(recorder_);
  }
  /// Compares the step that just ended with the plan's calls (see the class comment). Returns
  /// whether they matched.
  bool step_done() {
    std::vector<std::size_t> seen;
    {
      std::lock_guard<std::mutex> lock(recorder_->mutex);
      seen.swap(recorder_->calls);
    }
    ++steps_;
    if (seen == expected_) return true;
    if (reported_) return false;
    reported_ = true;
    std::size_t i = 0;
    while (i < seen.size() && i < expected_.size() && seen[i] == expected_[i]) ++i;
    auto name = [&](const std::vector<std::size_t>& s) {
      return i < s.size() ? "layer '" + labels_[s[i]] + "'" : std::string("no call (the step ended)");
    };
    message_ = c10::str("actckpt::PlanMonitor: training step ", steps_, " called the planned layers differently from "
                        "the step the plan was made for: its forward call ", i + 1, " was ", name(seen), " where the "
                        "planned step has ", name(expected_), " (", seen.size(), " calls, planned ", expected_.size(),
                        "). The plan's peak holds only for the profiled calls: plan again with a sample step that "
                        "makes these calls (this is reported once)");
    if (check_ == SequenceCheck::strict) throw UsageError(message_);
    TORCH_WARN(message_);
    return false;
  }
  /// The report, once made (empty before).
  const std::string& report() const { return message_; }

 private:
  struct Recorder final : Observer {
    std::unordered_map<const void*, std::size_t> position;  // written before listening only
    std::mutex mutex;
    std::vector<std::size_t> calls;
    void on_event(const Event& e) override {
      if (e.kind != EventKind::forward_begin) return;
      const auto found = position.find(e.layer);
      if (found == position.end()) return;
      std::lock_guard<std::mutex> lock(mutex);
      calls.push_back(found->second);
    }
  };
  SequenceCheck check_;
  std::vector<std::size_t> expected_;
  std::vector<std::string> labels_;
  std::shared_ptr<Recorder> recorder_;
  std::unique_ptr<ObserverScope> scope_;
  std::size_t steps_ = 0;
  bool reported_ = false;
  std::string message_;
};

}  // namespace actckpt
