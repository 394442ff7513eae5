#pragma once
/// \file wrap/checkpointed.hpp
/// `actckpt::Checkpointed<Layer, Policy>`: a LibTorch module that wraps a layer so that its
/// activations are recomputed in backward instead of kept, and its inputs are kept per Policy.
/// \code
///   Block block(1024, 64, 4096);
///   actckpt::Checkpointed<Block, actckpt::AsyncOffload> layer(block);  // shares block's parameters
///   torch::Tensor y = layer(x);                                        // Block::forward's signature
/// \endcode
/// Arguments the layer's forward has defaults for may be left out, as with the layer itself:
/// `layer(x)` directly, and inside `torch::nn::Sequential` / `AnyModule` where the layer
/// declares them with LibTorch's `FORWARD_HAS_DEFAULT_ARGS` (as LibTorch's own modules do).
/// The wrapper registers the layer's children, parameters and buffers as its own, under the
/// same names (detail::LayerStandIn), so state dicts (`torch::save`/`torch::load`) move freely
/// between wrapped and unwrapped models (docs/pitfalls.md#p14). In eval mode or with grad mode
/// off it calls the layer directly and stashes nothing (docs/pitfalls.md#p15).

#include <c10/util/Optional.h>
#include <c10/core/GradMode.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <cstddef>
#include <memory>
#include <ostream>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/core/argument_binding.hpp"
#include "actckpt/core/dispatch.hpp"
#include "actckpt/layer/checkpointed_layer.hpp"
#include "actckpt/layer/layer_stand_in.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/policy/no_offload.hpp"
#include "actckpt/policy/policy.hpp"

namespace actckpt {

namespace detail {
template <class Layer, class = void>
struct signature_of {
  using type = void;
};
template <class Layer>
struct signature_of<Layer, std::void_t<forward_signature_t<typename Layer::ContainedType>>> {
  using type = forward_signature_t<typename Layer::ContainedType>;
};
}  // namespace detail

/// The module implementation; use it through the `Checkpointed` holder. The third parameter
/// is the layer's forward signature, deduced.
template <CheckpointableLayer Layer, OffloadPolicy Policy = NoOffload,
          class Signature = typename detail::signature_of<Layer>::type>
class CheckpointedImpl;

template <CheckpointableLayer Layer, OffloadPolicy Policy, class R, class... Args>
class CheckpointedImpl<Layer, Policy, R(Args...)> : public detail::LayerStandIn, public CheckpointedLayer {
  // Each non-tensor argument must be one actckpt can keep for the recompute; the failing check
  // says what to pass instead (argument_storage.hpp).
  static_assert((check_argument<Args>() && ...));

 public:
  using LayerImpl = typename Layer::ContainedType;
  using PolicyType = Policy;
  /// How many arguments the layer's forward takes, defaulted ones included.
  static constexpr std::size_t arity = sizeof...(Args);

  /// Wraps `layer`; the wrapper and `layer` share parameters and buffers.
  explicit CheckpointedImpl(Layer layer)
      : detail::LayerStandIn(checked_ptr(layer)), layer_(std::move(layer)), options_(Policy::options()) {
    label_ = layer_->name();
    adopt_layer_members();
  }

  /// Builds the layer in place from its constructor arguments.
  template <class... A>
    requires(std::constructible_from<Layer, A...> &&
             !(sizeof...(A) == 1 && (std::is_same_v<std::remove_cvref_t<A>, Layer> && ...)))
  explicit CheckpointedImpl(A&&... args) : CheckpointedImpl(Layer(std::forward<A>(args)...)) {}

  /// Runs the layer, checkpointed when training with grad mode on.
  R forward(Args... args) { return run<Args...>(std::forward<Args>(args)...); }

  /// `forward` with trailing arguments left out where the layer's forward has defaults for them;
  /// the layer's own defaults fill them in, in the forward and again in the recompute. The
  /// holder's `operator()` (`layer(x)`) calls it. `forward` itself keeps one non-template
  /// signature, which `torch::nn::Sequential` and `AnyModule` need.
  template <class... Given>
    requires(sizeof...(Given) < sizeof...(Args) && detail::accepts_leading_arguments<LayerImpl, Given...>)
  R forward_with_defaults(Given&&... given) {
    return [&]<std::size_t... I>(std::index_sequence<I...>) {
      return run<std::tuple_element_t<I, std::tuple<Args...>>...>(std::forward<Given>(given)...);
    }(std::index_sequence_for<Given...>{});
  }

 private:
  /// The call, with the first sizeof...(Params) of the forward's parameters; the record calls
  /// the layer again with as many, so the layer's own defaults apply in the recompute too.
  template <class... Params>
  R run(Params... args) {
    // Eval mode or grad mode off: the layer runs directly, before anything is built for the
    // dispatch (docs/pitfalls.md#p15: such passes pay nothing for checkpointing).
    if (!is_training() || !c10::GradMode::is_enabled()) return layer_->forward(std::forward<Params>(args)...);
    const detail::CallSettings settings{source(), options_, context_ ? context_ : OffloadContext::current(),
                                        /*enabled=*/true};
    return detail::dispatch(
        settings,
        detail::CallWays{
            [&]() -> R { return layer_->forward(std::forward<Params>(args)...); },
            [&]() -> R { return run_kept<Params...>(std::forward<Params>(args)...); },
            [&] {
              std::vector<at::Tensor> kept;
              for (auto& p : layer_->parameters()) kept.push_back(p);
              for (auto& b : layer_->buffers()) kept.push_back(b);
              return kept;
            },
            [&] {
              using Record = TypedCheckpointRecord<LayerImpl, R, Params...>;
              return c10::make_intrusive<Record>(layer_.ptr(), settings.source, options_, settings.context,
                                                 std::forward<Params>(args)...);
            },
            [&] {
              std::vector<at::Tensor> params;
              for (auto& p : layer_->parameters())
                if (p.requires_grad()) params.push_back(p);
              return params;
            }});
  }

  /// This layer in events: its label, and its identity as a `CheckpointedLayer`.
  EventSource source() const { return EventSource{label_, static_cast<const CheckpointedLayer*>(this)}; }

 public:
  /// The wrapped layer.
  Layer& layer() { return layer_; }
  const Layer& layer() const { return layer_; }

  /// How this layer's inputs are kept until backward; starts as `Policy::options()` and may be
  /// changed at run time (a memory planner choosing per layer, say).
  const StashOptions& stash_options() const override { return options_; }
  void set_stash_options(const StashOptions& options) override { options_ = options; }

  /// The offload context (pool, copy engine, stash stack); null means the calling thread's
  /// current one (`OffloadContext::current()`).
  const std::shared_ptr<OffloadContext>& offload_context() const { return context_; }
  void set_offload_context(std::shared_ptr<OffloadContext> context) { context_ = std::move(context); }

  /// The name used in error messages and observer events; defaults to the layer's type name
  /// (`label_layers` names it by its path in the model, e.g. "blocks.3").
  const std::string& label() const override { return label_; }
  void set_label(std::string label) override {
    label_ = std::move(label);
    label_explicit_ = true;
  }
  bool label_is_explicit() const override { return label_explicit_; }
  void set_derived_label(std::string label) override {
    label_ = std::move(label);
    label_explicit_ = false;
  }

  /// A deep copy: the layer is cloned; the options, label and context are kept.
  std::shared_ptr<torch::nn::Module> clone(const c10::optional<c10::Device>& device = c10::nullopt) const override {
    auto layer_copy = std::dynamic_pointer_cast<LayerImpl>(layer_->clone(device));
    ACTCKPT_CHECK(layer_copy != nullptr, UsageError, "actckpt: cloning the layer of '", label_, "' did not give a ", layer_->name());
    auto copy = std::make_shared<CheckpointedImpl>(Layer(std::move(layer_copy)));
    copy->options_ = options_;
    copy->label_ = label_;
    copy->label_explicit_ = label_explicit_;
    copy->context_ = context_;
    copy->train(is_training());
    return copy;
  }

  void pretty_print(std::ostream& stream) const override {
    stream << "actckpt::Checkpointed<" << Policy::name << ">(";
    layer_->pretty_print(stream);
    stream << ")";
  }

 private:
  /// Not checkpointed (`StashOptions::checkpoint == false`): the layer runs directly and autograd
  /// keeps its activations. While an observer listens, the layer still announces its phases
  /// like a checkpointed one (forward_begin/forward_end, and backward_begin when the gradient of
  /// its first differentiable output arrives), so timelines and the memory planner see it.
  template <class... Params>
  R run_kept(Params... args) {
    if (!observing()) return layer_->forward(std::forward<Params>(args)...);
    const EventSource me = source();
    emit(EventKind::forward_begin, me);
    R result = layer_->forward(std::forward<Params>(args)...);
    emit(EventKind::forward_end, me);
    bool hooked = false;
    detail::for_each_result_tensor(result, [&](at::Tensor& t) {
      if (hooked || !t.defined() || !t.requires_grad()) return;
      t.register_hook([me](const at::Tensor&) { emit(EventKind::backward_begin, me); });
      hooked = true;
    });
    return result;
  }

  static std::shared_ptr<torch::nn::Module> checked_ptr(const Layer& layer) {
    ACTCKPT_CHECK(!layer.is_empty(), UsageError, "actckpt: Checkpointed was given an empty layer holder (nullptr)");
    return layer.ptr();
  }

  Layer layer_;
  StashOptions options_;
  std::shared_ptr<OffloadContext> context_;
  std::string label_;
  bool label_explicit_ = false;  // set_label chose label_ (label_layers keeps it)
};

/// The holder users write: `Checkpointed<Block, AsyncOffload> layer(block);`, `layer(x)`,
/// `layer->layer()`. Written by hand because TORCH_MODULE cannot make a class template.
template <CheckpointableLayer Layer, OffloadPolicy Policy = NoOffload>
class Checkpointed : public torch::nn::ModuleHolder<CheckpointedImpl<Layer, Policy>> {
 public:
  using Impl = CheckpointedImpl<Layer, Policy>;
  using torch::nn::ModuleHolder<Impl>::ModuleHolder;
  Checkpointed(std::shared_ptr<Impl> impl) : torch::nn::ModuleHolder<Impl>(std::move(impl)) {}  // NOLINT

  /// `layer(args...)`: the layer's forward with all its arguments, or with trailing ones left out
  /// where the layer's forward has defaults for them.
  template <class... Given>
  decltype(auto) operator()(Given&&... given) {
    if constexpr (sizeof...(Given) == Impl::arity) {
      return (*this)->forward(std::forward<Given>(given)...);
    } else {
      return (*this)->forward_with_defaults(std::forward<Given>(given)...);
    }
  }
};

}  // namespace actckpt
