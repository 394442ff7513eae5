#pragma once
/// \file layer_traits.hpp
/// What actckpt needs to know about a layer: the signature of its `forward`, which arguments
/// and results are tensors, and the `CheckpointableLayer` concept that rejects, at compile
/// time, a layer whose forward cannot be wrapped.
///
/// Customization point (as fmt's `formatter`): a layer whose `forward` is a template or is
/// overloaded (like `torch::nn::SequentialImpl`) declares the signature to wrap by
/// specializing `actckpt::forward_signature<Impl>`:
/// \code
///   template <> struct actckpt::forward_signature<MyImpl> { using type = at::Tensor(at::Tensor); };
/// \endcode

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/pimpl.h>

#include <concepts>
#include <cstddef>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace actckpt {

namespace detail {
template <class F>
struct member_forward;
template <class C, class R, class... A>
struct member_forward<R (C::*)(A...)> {
  using type = R(A...);
};
template <class C, class R, class... A>
struct member_forward<R (C::*)(A...) const> {
  using type = R(A...);
};
template <class C, class R, class... A>
struct member_forward<R (C::*)(A...) noexcept> {
  using type = R(A...);
};
template <class Impl>
concept has_single_forward = requires { &Impl::forward; };
}  // namespace detail

/// The function type `R(Args...)` of `Impl::forward`, deduced when forward is a single
/// non-template member function. Specialize it for layers whose forward is overloaded.
template <class Impl>
struct forward_signature {};

template <class Impl>
  requires detail::has_single_forward<Impl>
struct forward_signature<Impl> : detail::member_forward<decltype(&Impl::forward)> {};

/// `torch::nn::Sequential` forwards a template; as a checkpointed layer it maps a tensor to a tensor.
template <>
struct forward_signature<torch::nn::SequentialImpl> {
  using type = at::Tensor(at::Tensor);
};

template <class Impl>
using forward_signature_t = typename forward_signature<Impl>::type;

// ---------------------------------------------------------------------------------------------
// Arguments: tensors travel through autograd and the stash; everything else is copied aside.

namespace detail {
template <class T>
inline constexpr bool is_tensor_v = std::is_same_v<std::remove_cvref_t<T>, at::Tensor>;
template <class T>
inline constexpr bool is_optional_tensor_v =
    std::is_same_v<std::remove_cvref_t<T>, c10::optional<at::Tensor>>;
/// A tensor argument taken by non-const lvalue reference lets the layer write to its input,
/// which makes recomputation read different data than the forward did.
template <class T>
inline constexpr bool is_mutable_tensor_ref_v =
    std::is_lvalue_reference_v<T> && !std::is_const_v<std::remove_reference_t<T>> &&
    (is_tensor_v<T> || is_optional_tensor_v<T>);

// Results: a tensor, or tuples/pairs/vectors of them, with non-tensor members passed through.
template <class T>
struct result_traits {
  static constexpr bool has_tensor = false;
  template <class F>
  static void visit(T&, F&&) {}
};
template <>
struct result_traits<at::Tensor> {
  static constexpr bool has_tensor = true;
  template <class F>
  static void visit(at::Tensor& t, F&& f) {
    f(t);
  }
};
template <>
struct result_traits<std::vector<at::Tensor>> {
  static constexpr bool has_tensor = true;
  template <class F>
  static void visit(std::vector<at::Tensor>& v, F&& f) {
    for (auto& t : v) f(t);
  }
};
template <class... T>
struct result_traits<std::tuple<T...>> {
  static constexpr bool has_tensor = (result_traits<T>::has_tensor || ...);
  template <class F>
  static void visit(std::tuple<T...>& tup, F&& f) {
    std::apply([&](auto&... e) { (result_traits<std::remove_cvref_t<decltype(e)>>::visit(e, f), ...); },
               tup);
  }
};
template <class A, class B>
struct result_traits<std::pair<A, B>> {
  static constexpr bool has_tensor = result_traits<A>::has_tensor || result_traits<B>::has_tensor;
  template <class F>
  static void visit(std::pair<A, B>& p, F&& f) {
    result_traits<A>::visit(p.first, f);
    result_traits<B>::visit(p.second, f);
  }
};

/// Calls `f(at::Tensor&)` on every tensor inside a forward result, in a fixed order.
template <class R, class F>
void for_each_result_tensor(R& result, F&& f) {
  result_traits<R>::visit(result, std::forward<F>(f));
}

template <class Sig>
struct signature_checks;
template <class R, class... A>
struct signature_checks<R(A...)> {
  static constexpr bool returns_tensors =
      result_traits<R>::has_tensor && std::copy_constructible<R> && !std::is_reference_v<R>;
  static constexpr bool no_mutable_tensor_refs = (!is_mutable_tensor_ref_v<A> && ...);
  static constexpr bool takes_a_tensor = ((is_tensor_v<A> || is_optional_tensor_v<A>) || ...);
};

template <class Layer>
concept module_holder = requires { typename Layer::ContainedType; } &&
                        std::derived_from<Layer, torch::nn::ModuleHolder<typename Layer::ContainedType>> &&
                        std::derived_from<typename Layer::ContainedType, torch::nn::Module>;

template <class Impl>
concept has_forward_signature = requires { typename forward_signature<Impl>::type; };

/// The layer's forward takes `Given` as its leading arguments, its own default arguments filling
/// in the rest. Only for a single non-template forward: were forward overloaded, a shorter call
/// could pick another overload than the one wrapped.
template <class Impl, class... Given>
concept accepts_leading_arguments = has_single_forward<Impl> && requires(Impl& layer, Given&&... given) {
  layer.forward(std::forward<Given>(given)...);
};

/// A module's `FORWARD_HAS_DEFAULT_ARGS` answers (how `torch::nn::AnyModule`, and so
/// `Sequential`, learns the default arguments of a forward). LibTorch keeps these hooks
/// protected, friends with AnyModuleHolder only; a member pointer formed through a class derived
/// from `torch::nn::Module` may call them on any module ([class.protected]), virtually.
struct ForwardDefaults : torch::nn::Module {
  static bool has_defaults(torch::nn::Module& m) { return (m.*&ForwardDefaults::_forward_has_default_args)(); }
  static unsigned int required_count(torch::nn::Module& m) {
    return (m.*&ForwardDefaults::_forward_num_required_args)();
  }
  static std::vector<torch::nn::AnyValue> populate(torch::nn::Module& m, std::vector<torch::nn::AnyValue>&& given) {
    return (m.*&ForwardDefaults::_forward_populate_default_args)(std::move(given));
  }
};
}  // namespace detail

/// A LibTorch module holder (`TORCH_MODULE(Block)` gives `Block`) whose forward actckpt can
/// checkpoint: a single non-template `forward` (or a `forward_signature` specialization) that
/// takes at least one tensor, takes no tensor by non-const reference, and returns a tensor, a
/// std::vector of tensors, or a tuple/pair holding at least one tensor. Its non-tensor arguments
/// are checked when the wrapper is instantiated (`check_argument`, argument_storage.hpp), each
/// with a message that says what to pass instead of a type actckpt cannot keep for backward.
template <class Layer>
concept CheckpointableLayer =
    detail::module_holder<Layer> && detail::has_forward_signature<typename Layer::ContainedType> &&
    detail::signature_checks<forward_signature_t<typename Layer::ContainedType>>::returns_tensors &&
    detail::signature_checks<forward_signature_t<typename Layer::ContainedType>>::takes_a_tensor &&
    detail::signature_checks<forward_signature_t<typename Layer::ContainedType>>::no_mutable_tensor_refs;

}  // namespace actckpt
