#pragma once
/// \file checkpoint_record.hpp
/// What one checkpointed call keeps between its forward and its backward: the stashed inputs,
/// the RNG and autocast state of the forward, version stamps of inputs and parameters, and the
/// metadata of the outputs. The typed part (`TypedCheckpointRecord`) knows the layer and how to
/// call its forward again with the restored inputs and the non-tensor arguments.

#include <ATen/core/Tensor.h>
#include <ATen/core/ivalue.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/variable.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "actckpt/layer/argument_storage.hpp"
#include "actckpt/replay/autocast_state.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/replay/rng_state.hpp"
#include "actckpt/offload/tensor_stash.hpp"

namespace actckpt {

namespace detail {

/// A tensor's version counter and its value when stamped; detects in-place changes
/// (docs/pitfalls.md#p6) without keeping the tensor's memory alive.
struct VersionStamp {
  c10::VariableVersion counter;
  std::uint32_t version = 0;
  static VersionStamp of(const at::Tensor& t) {
    const auto& c = t.unsafeGetTensorImpl()->version_counter();
    return VersionStamp{c, c.enabled() ? c.current_version() : 0};
  }
  bool changed() const { return counter.enabled() && counter.current_version() != version; }
  std::uint32_t now() const { return counter.enabled() ? counter.current_version() : 0; }
};

/// Shape, dtype and device of a forward output, checked against the recompute
/// (docs/pitfalls.md#p5).
struct TensorMeta {
  std::vector<int64_t> sizes;
  c10::ScalarType dtype;
  c10::Device device;
  static TensorMeta of(const at::Tensor& t) { return {t.sizes().vec(), t.scalar_type(), t.device()}; }
  bool operator==(const TensorMeta& o) const { return sizes == o.sizes && dtype == o.dtype && device == o.device; }
  std::string str() const {
    std::ostringstream s;
    s << c10::IntArrayRef(sizes) << ' ' << c10::toString(dtype) << ' ' << device;
    return s.str();
  }
};

/// For the lifetime of the guard nothing the recompute does to the layer's buffers sticks:
/// BatchNorm's running statistics change once per step, in the forward (docs/pitfalls.md#p7).
class BufferRestoreGuard {
 public:
  explicit BufferRestoreGuard(std::vector<at::Tensor> buffers) : buffers_(std::move(buffers)) {
    c10::NoGradGuard no_grad;
    saved_.reserve(buffers_.size());
    for (const auto& b : buffers_) saved_.push_back(b.defined() ? b.clone() : b);
  }
  ~BufferRestoreGuard() {
    c10::NoGradGuard no_grad;
    for (std::size_t i = 0; i < buffers_.size(); ++i)
      if (buffers_[i].defined()) buffers_[i].copy_(saved_[i]);
  }
  BufferRestoreGuard(const BufferRestoreGuard&) = delete;
  BufferRestoreGuard& operator=(const BufferRestoreGuard&) = delete;

 private:
  std::vector<at::Tensor> buffers_;
  std::vector<at::Tensor> saved_;
};

}  // namespace detail

/// The untyped part, reachable from the autograd node.
class CheckpointRecord : public torch::CustomClassHolder {
 public:
  CheckpointRecord(std::string label, StashOptions options, std::shared_ptr<OffloadContext> context)
      : label_(std::move(label)), options_(options), context_(std::move(context)) {}
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
        throw InputMutated(c10::str("actckpt: checkpointed layer '", label_, "' modified its input #", i,
                                    " in place during forward; its recompute would read the modified value. "
                                    "Make the layer work on a copy (e.g. x = x.clone())."),
                           label_);
      }
    }
    if (!keep) {
      ready_marks_.clear();
      return;
    }
    stashes_.reserve(inputs.size());
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      auto ready = i < ready_marks_.size() ? std::move(ready_marks_[i]) : nullptr;
      stashes_.push_back(std::make_unique<TensorStash>(inputs[i], options_, context_, label_, std::move(ready)));
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
      throw StashConsumed(c10::str("actckpt: backward ran through checkpointed layer '", label_,
                                   "' a second time, but its stashed inputs were consumed by the first backward. "
                                   "Checkpointed layers support one backward per forward (no retain_graph=true); "
                                   "run the forward again for another backward."),
                          label_);
    }
    consumed_ = true;
    // Whatever happens below, the stashes' memory is returned when this function exits.
    auto stashes = std::move(stashes_);
    std::vector<at::Tensor> restored;
    restored.reserve(stashes.size());
    for (std::size_t i = 0; i < stashes.size(); ++i) {
      const bool unaffected = saved_tensors_checked && stashes[i]->holds_snapshot();
      if (!unaffected && input_versions_[i].changed()) {
        throw InputMutated(c10::str("actckpt: input #", i, " of checkpointed layer '", label_,
                                    "' was modified in place after the forward stashed it (version ",
                                    input_versions_[i].version, ", now ", input_versions_[i].now(),
                                    "). Checkpointing recomputes from the stashed input; modify a clone "
                                    "instead, or do not checkpoint this layer."),
                           label_);
      }
      restored.push_back(stashes[i]->restore());
    }
    for (std::size_t i = 0; i < params_.size(); ++i) {
      if (param_versions_[i].changed()) {
        throw InputMutated(c10::str("actckpt: a parameter of checkpointed layer '", label_,
                                    "' was modified in place between its forward and its backward (for "
                                    "example an optimizer step before backward); the recompute would use "
                                    "different weights."),
                           label_);
      }
    }
    return restored;
  }

  /// Raises a clear error when the recompute produced something else than the forward.
  void check_recompute(const std::vector<at::Tensor>& outputs) const {
    if (outputs.size() != output_meta_.size()) {
      throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", label_, "' returned ",
                                       outputs.size(), " tensors, the forward returned ", output_meta_.size(),
                                       ". The layer's forward must return the same outputs when run again on "
                                       "the same inputs."),
                              label_);
    }
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      const auto meta = detail::TensorMeta::of(outputs[i]);
      if (!(meta == output_meta_[i])) {
        throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", label_,
                                         "' produced output #", i, " as [", meta.str(), "], the forward as [",
                                         output_meta_[i].str(), "]. The layer's forward must not depend on "
                                         "state that changes between forward and backward."),
                                label_);
      }
    }
  }

  const std::string& label() const { return label_; }
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

  std::string label_;
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

/// The typed part: the layer, its non-tensor arguments, and the shape of its result.
/// `Args` are the forward's parameter types; each argument is kept in an owning form
/// (argument_storage.hpp) and handed back to the layer as the type its forward takes, so the
/// recompute never reads the caller's memory after the call returned.
template <class Impl, class R, class... Args>
class TypedCheckpointRecord final : public CheckpointRecord {
  static_assert((check_argument<Args>() && ...));

 public:
  using Stored = std::tuple<stored_argument_t<Args>...>;

  /// Keeps the call's arguments; their tensors are moved out to `tensor_inputs()` (they travel
  /// through autograd and the stash, not through this record).
  template <class... Given>
  TypedCheckpointRecord(std::shared_ptr<Impl> layer, std::string label, StashOptions options,
                        std::shared_ptr<OffloadContext> context, Given&&... args)
      : CheckpointRecord(std::move(label), options, std::move(context)),
        layer_(std::move(layer)),
        args_(store_argument<Args>(std::forward<Given>(args))...) {
    std::apply([&](auto&... slot) { (take_tensor(slot), ...); }, args_);
  }

  std::vector<at::Tensor>& tensor_inputs() { return tensor_inputs_; }

  std::vector<at::Tensor> run_layer(const std::vector<at::Tensor>& inputs) override {
    Stored call = args_;
    std::size_t next = 0, slot_index = 0;
    std::apply([&](auto&... slot) { (put_tensor(slot, inputs, next, slot_index), ...); }, call);
    R result = std::apply([&](auto&... a) -> R { return layer_->forward(pass_argument<Args>(a)...); }, call);
    std::vector<at::Tensor> tensors;
    const bool first = !result_.has_value();
    detail::for_each_result_tensor(result, [&](at::Tensor& t) {
      if (first) output_defined_.push_back(t.defined());
      if (t.defined()) tensors.push_back(t);
      t.reset();  // the template must not keep outputs alive
    });
    if (first) result_.emplace(std::move(result));
    return tensors;
  }

  std::vector<at::Tensor> layer_buffers() const override { return layer_->buffers(); }

  /// The forward's result with its tensors replaced by `outputs` (the autograd-wrapped ones);
  /// non-tensor members are passed through as the forward returned them.
  R assemble(const std::vector<at::Tensor>& outputs) const {
    R result = *result_;
    std::size_t next = 0, position = 0;
    detail::for_each_result_tensor(result, [&](at::Tensor& t) {
      if (output_defined_[position++]) t = outputs[next++];
    });
    return result;
  }

 private:
  template <class T>
  void take_tensor(T& slot) {
    if constexpr (std::is_same_v<T, at::Tensor>) {
      present_.push_back(slot.defined());
      if (slot.defined()) tensor_inputs_.push_back(std::move(slot));
      slot.reset();
    } else if constexpr (std::is_same_v<T, c10::optional<at::Tensor>>) {
      const bool present = slot.has_value() && slot->defined();
      present_.push_back(present);
      if (present) tensor_inputs_.push_back(std::move(*slot));
      slot = c10::nullopt;
    }
  }

  template <class T>
  void put_tensor(T& slot, const std::vector<at::Tensor>& inputs, std::size_t& next, std::size_t& slot_index) {
    if constexpr (std::is_same_v<T, at::Tensor> || std::is_same_v<T, c10::optional<at::Tensor>>) {
      if (present_[slot_index++]) slot = inputs[next++];
    }
  }

  std::shared_ptr<Impl> layer_;
  Stored args_;
  std::vector<bool> present_;
  std::vector<at::Tensor> tensor_inputs_;
  std::optional<R> result_;
  std::vector<bool> output_defined_;
};

}  // namespace actckpt
