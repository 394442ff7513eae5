#pragma once
/// \file layer_stand_in.hpp
/// `detail::LayerStandIn`: the module base of every actckpt wrapper that takes a layer's place in
/// a model (`Checkpointed`, `Plain`). It registers the layer's children, own parameters and own
/// buffers as its own under the same names, so `named_parameters()` and `torch::save` archives
/// are those of the layer (docs/pitfalls.md#p14); it passes train/eval on to the layer, which is
/// not a registered child; and it answers `torch::nn::AnyModule`'s questions about default
/// arguments (LibTorch's `FORWARD_HAS_DEFAULT_ARGS`) with the layer's, since the wrapper's
/// forward takes the layer's arguments.

#include <torch/nn/module.h>
#include <torch/nn/modules/container/any_module_holder.h>
#include <torch/nn/modules/container/any_value.h>

#include <memory>
#include <utility>
#include <vector>

#include "actckpt/layer/layer_traits.hpp"

namespace actckpt::detail {

class LayerStandIn : public torch::nn::Module {
 public:
  /// Passes the mode on to the layer, which is not a registered child.
  void train(bool on = true) override {
    torch::nn::Module::train(on);
    layer_->train(on);
  }

 protected:
  explicit LayerStandIn(std::shared_ptr<torch::nn::Module> layer) : layer_(std::move(layer)) {}

  /// Registers the layer's members on this module (call once the layer is known non-null).
  void adopt_layer_members() {
    for (const auto& child : layer_->named_children()) register_module(child.key(), child.value());
    for (const auto& p : layer_->named_parameters(/*recurse=*/false))
      register_parameter(p.key(), p.value(), p.value().requires_grad());
    for (const auto& b : layer_->named_buffers(/*recurse=*/false)) register_buffer(b.key(), b.value());
    torch::nn::Module::train(layer_->is_training());
  }

  template <typename ModuleType, typename... ArgumentTypes>
  friend struct torch::nn::AnyModuleHolder;
  bool _forward_has_default_args() override { return ForwardDefaults::has_defaults(*layer_); }
  unsigned int _forward_num_required_args() override { return ForwardDefaults::required_count(*layer_); }
  std::vector<torch::nn::AnyValue> _forward_populate_default_args(std::vector<torch::nn::AnyValue>&& given) override {
    return ForwardDefaults::populate(*layer_, std::move(given));
  }

 private:
  std::shared_ptr<torch::nn::Module> layer_;
};

}  // namespace actckpt::detail
