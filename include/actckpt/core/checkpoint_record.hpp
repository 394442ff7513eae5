#pragma once
/// \file core/checkpoint_record.hpp
/// What one checkpointed call keeps between its forward and its backward, whatever its layer:
/// the stashed inputs, the RNG and autocast state of the forward, version stamps of inputs and
/// parameters, and the metadata of the outputs. Both forms (reentrant.hpp, non_reentrant.hpp)
/// reach it through this untyped interface; the typed part that knows the layer and its
/// arguments is `TypedCheckpointRecord` (argument_binding.hpp).

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <ATen/core/ivalue.h>  // torch::CustomClassHolder

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
// Lets this room's detail/ headers in (they refuse to be included from outside the library).
#define ACTCKPT_CORE_INTERNALS
#include "actckpt/core/detail/tensor_checks.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/offload/tensor_stash.hpp"
#include "actckpt/policy/stash_options.hpp"
#include "actckpt/replay/autocast_state.hpp"
#include "actckpt/replay/rng_state.hpp"

namespace actckpt {

/// The untyped part, reachable from the autograd node.
class CheckpointRecord : public torch::CustomClassHolder {
 public:
  CheckpointRecord(EventSource source, StashOptions options, std::shared_ptr<OffloadContext> context)
      : source_(std::move(source)), options_(options), context_(std::move(context)) {}
  ~CheckpointRecord() override = default;

  /// Runs the layer's forward on `inputs` (the tensor arguments, in order) and the stored
  /// non-tensor arguments, under the current grad mode; returns the defined output tensors.
  virtual std::vector<at::Tensor> run_layer(const std::vector<at::Tensor>& inputs) = 0;
  /// The layer's buffers (running statistics and the like).
  virtual std::vector<at::Tensor> layer_buffers() const = 0;

  /// Captures what the recompute must replay: RNG states of the devices in use and autocast.
  void capture_forward_state(at::TensorList inputs, at::TensorList params) {
    for (const auto& t : inputs) add_device(t.device());
    for (const auto& p : params) add_device(p.device());
    rng_ = RngSnapshot::capture(devices_);
    autocast_ = AutocastState::current();
    for (const auto& t : inputs) {
      input_versions_.push_back(detail::VersionStamp::of(t));
      input_requires_grad_.push_back(t.requires_grad());
    }
    for (const auto& p : params) {
      params_.push_back(p);
      param_versions_.push_back(detail::VersionStamp::of(p));
    }
    // Before the layer's work is queued: an offload of these inputs can start as soon as they
    // are complete, not after the layer (and the ones after it) ran.
    if (options_.mode != StashMode::device) {
      for (const auto& t : inputs) ready_marks_.push_back(context_->engine().mark_ready(t));
    }
  }

  /// Checks the layer did not write to its own inputs, then stashes them per the options
  /// (`keep` false: no backward will need them, nothing is stashed).
  void stash_inputs(at::TensorList inputs, bool keep = true) {
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      if (input_versions_[i].changed()) {
        throw InputMutated(c10::str("actckpt: checkpointed layer '", source_.label, "' modified its input #", i,
                                    " in place during forward; its recompute would read the modified value. "
                                    "Make the layer work on a copy (e.g. x = x.clone())."),
                           source_.label);
      }
    }
    if (!keep) {
      ready_marks_.clear();
      return;
    }
    stashes_.reserve(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      auto ready = i < ready_marks_.size() ? std::move(ready_marks_[i]) : nullptr;
      stashes_.push_back(std::make_unique<TensorStash>(inputs[i], options_, context_, source_, std::move(ready)));
    }
    ready_marks_.clear();
  }

  void record_outputs(const std::vector<at::Tensor>& outputs) {
    for (const auto& t : outputs) output_meta_.push_back(detail::TensorMeta::of(t));
  }

  /// Restores every stash (consuming them); checks no input or parameter changed in place.
  /// `saved_tensors_checked`: the caller (the non-reentrant form) checks every tensor the forward
  /// saved for in-place changes itself, as autograd does; an input changed after the forward then
  /// matters only when the stash would hand the recompute the changed values, so stashes that
  /// hold their own copy (sync offload) pass. Otherwise (reentrant) every change is refused.
  std::vector<at::Tensor> restore_inputs(bool saved_tensors_checked = false) {
    if (consumed_) {
      throw StashConsumed(c10::str("actckpt: backward ran through checkpointed layer '", source_.label,
                                   "' a second time, but its stashed inputs were consumed by the first backward. "
                                   "Checkpointed layers support one backward per forward (no retain_graph=true); "
                                   "run the forward again for another backward."),
                          source_.label);
    }
    consumed_ = true;
    // Whatever happens below, the stashes' memory is returned when this function exits.
    auto stashes = std::move(stashes_);
    std::vector<at::Tensor> restored;
    restored.reserve(stashes.size());
    for (std::size_t i = 0; i < stashes.size(); ++i) {
      const bool unaffected = saved_tensors_checked && stashes[i]->holds_snapshot();
      if (!unaffected && input_versions_[i].changed()) {
        throw InputMutated(c10::str("actckpt: input #", i, " of checkpointed layer '", source_.label,
                                    "' was modified in place after the forward stashed it (version ",
                                    input_versions_[i].version, ", now ", input_versions_[i].now(),
                                    "). Checkpointing recomputes from the stashed input; modify a clone "
                                    "instead, or do not checkpoint this layer."),
                           source_.label);
      }
      restored.push_back(stashes[i]->restore());
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (param_versions_[i].changed()) {
        throw InputMutated(c10::str("actckpt: a parameter of checkpointed layer '", source_.label,
                                    "' was modified in place between its forward and its backward (for "
                                    "example an optimizer step before backward); the recompute would use "
                                    "different weights."),
                           source_.label);
      }
    }
    return restored;
  }

  /// Raises a clear error when the recompute produced something else than the forward.
  void check_recompute(const std::vector<at::Tensor>& outputs) const {
    if (outputs.size() != output_meta_.size()) {
      throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", source_.label, "' returned ",
                                       outputs.size(), " tensors, the forward returned ", output_meta_.size(),
                                       ". The layer's forward must return the same outputs when run again on "
                                       "the same inputs."),
                              source_.label);
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const auto meta = detail::TensorMeta::of(outputs[i]);
      if (!(meta == output_meta_[i])) {
        throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", source_.label,
                                         "' produced output #", i, " as [", meta.str(), "], the forward as [",
                                         output_meta_[i].str(), "]. The layer's forward must not depend on "
                                         "state that changes between forward and backward."),
                                source_.label);
      }
    }
  }

  const std::string& label() const { return source_.label; }
  /// The layer's label and identity, for events.
  const EventSource& source() const { return source_; }
  const std::vector<at::Tensor>& params() const { return params_; }
  const std::vector<bool>& input_requires_grad() const { return input_requires_grad_; }
  const RngSnapshot& rng() const { return rng_; }
  const std::vector<c10::Device>& devices() const { return devices_; }
  const AutocastState& autocast() const { return autocast_; }
  std::size_t stash_count() const { return stashes_.size(); }

 private:
  void add_device(const c10::Device& d) {
    if (d.is_cpu()) return;
    for (const auto& e : devices_)
      if (e == d) return;
    devices_.push_back(d);
  }

  EventSource source_;
  StashOptions options_;
  std::shared_ptr<OffloadContext> context_;
  std::vector<std::unique_ptr<TensorStash>> stashes_;
  std::vector<std::shared_ptr<const ReadyMark>> ready_marks_;  // per input, from capture to stash
  std::vector<detail::VersionStamp> input_versions_;
  std::vector<bool> input_requires_grad_;
  std::vector<at::Tensor> params_;
  std::vector<detail::VersionStamp> param_versions_;
  std::vector<c10::Device> devices_;
  RngSnapshot rng_;
  AutocastState autocast_;
  std::vector<detail::TensorMeta> output_meta_;
  bool consumed_ = false;
};

}  // namespace actckpt
