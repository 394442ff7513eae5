#pragma once
/// \file plain.hpp
/// `actckpt::Plain<Layer>`: a layer kept as it is, run directly (not checkpointed), behind a
/// module with one non-template `forward` of the layer's signature. It lets a layer that
/// `torch::nn::AnyModule` cannot hold, such as a `torch::nn::Sequential` block (its forward is a
/// template), sit in a `torch::nn::Sequential` beside `Checkpointed` ones: `wrap_every` uses it
/// for the blocks it leaves unwrapped. Parameter and buffer names are the layer's
/// (detail::LayerStandIn), so state dicts are the same as for the layer.
/// \code
///   torch::nn::Sequential stack;
///   stack->push_back(actckpt::Plain<torch::nn::Sequential>(block));  // shares block's parameters
/// \endcode

#include <c10/util/Exception.h>
#include <c10/util/Optional.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <memory>
#include <ostream>
#include <utility>

#include "actckpt/base/errors.hpp"
#include "actckpt/layer/layer_stand_in.hpp"
#include "actckpt/layer/layer_traits.hpp"

namespace actckpt {

template <class Layer, class Signature = forward_signature_t<typename Layer::ContainedType>>
class PlainImpl;

template <class Layer, class R, class... Args>
class PlainImpl<Layer, R(Args...)> : public detail::LayerStandIn {
 public:
  using LayerImpl = typename Layer::ContainedType;

  /// Holds `layer`; the two share parameters and buffers.
  explicit PlainImpl(Layer layer) : detail::LayerStandIn(checked_ptr(layer)), layer_(std::move(layer)) {
    adopt_layer_members();
  }

  /// The layer's forward, run directly.
  R forward(Args... args) { return layer_->forward(std::forward<Args>(args)...); }

  Layer& layer() { return layer_; }
  const Layer& layer() const { return layer_; }

  /// A deep copy: the layer is cloned.
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<c10::Device>& device = c10::nullopt) const override {
    auto layer_copy = std::dynamic_pointer_cast<LayerImpl>(layer_->clone(device));
    ACTCKPT_CHECK(layer_copy != nullptr, UsageError, "actckpt: cloning the layer of a Plain did not give a ", layer_->name());
    auto copy = std::make_shared<PlainImpl>(Layer(std::move(layer_copy)));
    copy->train(is_training());
    return copy;
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "actckpt::Plain(";
    layer_->pretty_print(stream);
    stream << ")";
  }

 private:
  static std::shared_ptr<torch::nn::Module> checked_ptr(const Layer& layer) {
    ACTCKPT_CHECK(!layer.is_empty(), UsageError, "actckpt: Plain was given an empty layer holder (nullptr)");
    return layer.ptr();
  }

  Layer layer_;
};

/// The holder: `actckpt::Plain<Block> plain(block); plain(x);`.
template <class Layer>
class Plain : public torch::nn::ModuleHolder<PlainImpl<Layer>> {
 public:
  using Impl = PlainImpl<Layer>;
  using torch::nn::ModuleHolder<Impl>::ModuleHolder;
  Plain(std::shared_ptr<Impl> impl) : torch::nn::ModuleHolder<Impl>(std::move(impl)) {}  // NOLINT
};

}  // namespace actckpt
