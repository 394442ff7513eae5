#pragma once
/// \file core/argument_binding.hpp
/// `TypedCheckpointRecord`: binds one call's arguments to its layer, so the recompute can call
/// the layer's forward again exactly as the caller did. Tensor arguments leave the record (they
/// travel through autograd and the stash); every other argument is kept in an owning form
/// (layer/argument_storage.hpp) and handed back as the type the forward takes. It also keeps the
/// shape of the forward's result, so the outputs of either form can be put back into it.

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstddef>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "actckpt/base/observer.hpp"
#include "actckpt/core/checkpoint_record.hpp"
#include "actckpt/layer/argument_storage.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/policy/stash_options.hpp"

namespace actckpt {

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
  TypedCheckpointRecord(std::shared_ptr<Impl> layer, EventSource source, StashOptions options,
                        std::shared_ptr<OffloadContext> context, Given&&... args)
      : CheckpointRecord(std::move(source), options, std::move(context)),
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
