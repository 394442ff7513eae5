#pragma once
/// \file wrap_every.hpp
/// `actckpt::wrap_every<Policy>(layers, k)`: checkpoint every k-th layer of a stack and leave the
/// others plain, the usual trade between memory (more checkpointed layers) and time (fewer).
/// \code
///   std::vector<Block> blocks;
///   for (int i = 0; i < 12; ++i) blocks.emplace_back(1024, 64, 4096);
///   torch::nn::Sequential stack = actckpt::wrap_every<actckpt::AsyncOffload>(blocks, 2);
///   // stack: Checkpointed<Block>, Block, Checkpointed<Block>, Block, ...
///   x = stack->forward(x);                                        // one-tensor blocks chain
///   for (auto& layer : *stack) x = layer.forward<torch::Tensor>(x, mask, true);  // or call each
/// \endcode
/// The result is a plain `torch::nn::Sequential` whose children keep the names they had ("0",
/// "1", ... for a vector, the Sequential's own names otherwise), and `Checkpointed` keeps the
/// names below them, so `named_parameters()` and `torch::save` archives are the same as for the
/// unwrapped stack. The layers are shared, not copied: the stack trains the blocks you passed.
/// A Sequential holds only modules with one non-template `forward` (AnyModule's rule): a layer
/// left unwrapped whose forward is not one (a `torch::nn::Sequential` block) goes in as
/// `Plain<Layer>`, which runs it directly under the same parameter names.
/// Each wrapped layer is labelled by its name in the stack ("3"; see `label_layers`), a label
/// that `label_layers(model)` replaces by its full path ("blocks.3") once the stack is in a model.

#include <c10/util/Exception.h>
#include <torch/nn/modules/container/any.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "actckpt/wrap/checkpointed.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/layer/label_layers.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/wrap/plain.hpp"
#include "actckpt/policy/policy.hpp"

namespace actckpt {

namespace detail {
/// Whether the layer at position `count` (counting layers of the wrapped type, from 0) is wrapped.
inline bool wrap_every_selects(std::size_t count, std::size_t k, std::size_t first) {
  return count >= first && (count - first) % k == 0;
}

inline void check_wrap_every_step(std::size_t k) {
  ACTCKPT_CHECK(k > 0, UsageError, "actckpt::wrap_every: k must be at least 1 (1 checkpoints every layer), got 0");
}
}  // namespace detail

/// A Sequential of `layers` in order, where layers `first`, `first + k`, `first + 2k`, ...
/// (0-based) are wrapped in `Checkpointed<Layer, Policy>` and the others are kept as they are.
/// Children are named "0", "1", ... as `Sequential` names them.
template <OffloadPolicy Policy, CheckpointableLayer Layer>
torch::nn::Sequential wrap_every(const std::vector<Layer>& layers, std::size_t k, std::size_t first = 0) {
  detail::check_wrap_every_step(k);
  torch::nn::Sequential stack;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    ACTCKPT_CHECK(!layers[i].is_empty(), UsageError, "actckpt::wrap_every: layer ", i, " is an empty holder (nullptr)");
    if (detail::wrap_every_selects(i, k, first)) {
      stack->push_back(Checkpointed<Layer, Policy>(layers[i]));
    } else if constexpr (detail::has_single_forward<typename Layer::ContainedType>) {
      stack->push_back(layers[i]);
    } else {
      stack->push_back(Plain<Layer>(layers[i]));
    }
  }
  label_layers(*stack);
  return stack;
}

/// The same for an existing Sequential that may mix layer types: counting only the children
/// whose type is `Layer`'s module (from 0), those at `first`, `first + k`, ... are wrapped; every
/// other child, of any type, is kept as it is, under its own name.
/// \code
///   auto stack = actckpt::wrap_every<actckpt::NoOffload, Block>(model->blocks, 3);
/// \endcode
template <OffloadPolicy Policy, CheckpointableLayer Layer>
torch::nn::Sequential wrap_every(const torch::nn::Sequential& layers, std::size_t k, std::size_t first = 0) {
  using Impl = typename Layer::ContainedType;
  detail::check_wrap_every_step(k);
  ACTCKPT_CHECK(!layers.is_empty(), UsageError, "actckpt::wrap_every: the Sequential is an empty holder (nullptr)");
  // Sequential registers its children in the order it holds them.
  const auto names = layers->named_children().keys();
  ACTCKPT_CHECK(names.size() == layers->size(), UsageError, "actckpt::wrap_every: the Sequential has ", layers->size(),
              " layers but ", names.size(), " registered children");
  torch::nn::Sequential stack;
  std::size_t count = 0;  // layers of type Layer seen so far
  std::size_t index = 0;
  for (const torch::nn::AnyModule& layer : *layers) {
    std::string name = names[index++];
    auto impl = std::dynamic_pointer_cast<Impl>(layer.ptr());
    const bool wrap = impl != nullptr && detail::wrap_every_selects(count, k, first);
    if (impl != nullptr) ++count;
    if (wrap) {
      // An rvalue name: push_back(name&, ...) would pick Sequential's private variadic overload.
      stack->push_back(std::move(name), Checkpointed<Layer, Policy>(Layer(std::move(impl))));
    } else {
      stack->push_back(std::move(name), layer);
    }
  }
  label_layers(*stack);
  return stack;
}

}  // namespace actckpt
