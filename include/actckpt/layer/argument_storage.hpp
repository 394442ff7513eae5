#pragma once
/// \file argument_storage.hpp
/// How a checkpointed call keeps its non-tensor arguments until the recompute in backward.
///
/// The call returns long before backward runs, so what the record keeps must not point into the
/// caller's memory. A non-owning view is kept as the values it views and handed back to the
/// layer as the view type its forward takes:
///
/// | the forward takes                                  | kept as                         |
/// |----------------------------------------------------|---------------------------------|
/// | `c10::ArrayRef<T>` (`at::IntArrayRef`, ...)         | `std::vector<T>`                |
/// | `c10::OptionalArrayRef<T>`                          | `std::optional<std::vector<T>>` |
/// | `std::span<const T, N>`                             | `std::vector<T>`                |
/// | `std::basic_string_view`, `c10::basic_string_view`  | `std::basic_string`             |
/// | `c10::optional<V>` / `std::optional<V>` of a view   | an optional of what V is kept as|
/// | anything else copyable (ints, options structs, ...) | a copy                          |
///
/// A type actckpt cannot own is rejected at compile time (`check_argument`) with a message that
/// says what to pass instead: raw pointers, `std::reference_wrapper`, `std::initializer_list`,
/// spans of mutable elements, lists of tensors (not autograd inputs), non-tensor arguments taken
/// by non-const reference (the layer's writes would land in actckpt's copy), types that cannot be
/// copied, containers (vector, array, pair, tuple) of views or pointers, and any other type that
/// looks like a view (trivially copyable with a `data()` pointer). Optionals are judged by what
/// they hold.
///
/// Customization point (as fmt's `formatter`): a view type of your own becomes usable by saying
/// how to own it.
/// \code
///   template <> struct actckpt::argument_storage<MyView> {
///     using stored_type = MyOwningCopy;
///     static stored_type store(const MyView& v);  // called in the forward
///     static MyView view(stored_type& s);         // called for every call of the layer
///   };
/// \endcode
/// Views nested inside other types (an options struct holding an `IntArrayRef`) cannot be seen
/// and are kept as they are: give such a struct owning members.

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <c10/util/OptionalArrayRef.h>
#include <c10/util/SmallVector.h>
#include <c10/util/string_view.h>

#include <array>
#include <concepts>
#include <cstddef>
#include <functional>
#include <initializer_list>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace actckpt {

/// How a checkpointed call keeps an argument of type `T` (cv/ref removed) for the recompute.
/// The primary template keeps a copy: right for every type that owns what it refers to.
/// `view(stored)` gives what the layer's forward receives; for a copy that is the copy itself
/// (an lvalue, which the call may move from: every call works on its own copy).
namespace detail {
template <class T>
struct copy_storage {
  using stored_type = T;
  static constexpr bool is_copy = true;
  template <class A>
  static stored_type store(A&& value) {
    return stored_type(std::forward<A>(value));
  }
  static stored_type& view(stored_type& stored) { return stored; }
};
}  // namespace detail

template <class T>
struct argument_storage : detail::copy_storage<T> {};

namespace detail {
/// Whether `argument_storage<T>` keeps a plain copy (a user specialization without `is_copy`
/// owns a view).
template <class T>
consteval bool stored_as_copy() {
  if constexpr (requires { argument_storage<T>::is_copy; }) {
    return argument_storage<T>::is_copy;
  } else {
    return false;
  }
}

/// An owning array that a `c10::ArrayRef<E>` can view (std::vector<bool> has no data()).
template <class E>
using owned_array_t = std::conditional_t<std::is_same_v<E, bool>, c10::SmallVector<bool, 8>, std::vector<E>>;

template <class E>
owned_array_t<E> own_array(const E* data, std::size_t size) {
  return owned_array_t<E>(data, data + size);
}

template <class T>
inline constexpr bool is_tensor_element_v = std::is_same_v<std::remove_cv_t<T>, at::Tensor> ||
                                            std::is_same_v<std::remove_cv_t<T>, c10::optional<at::Tensor>>;

/// An optional of a type kept in another form: kept as an optional of that form.
template <class Optional, class V>
struct optional_view_storage {
  using inner = argument_storage<V>;
  using stored_type = std::optional<typename inner::stored_type>;
  static constexpr bool is_copy = false;
  static stored_type store(const Optional& value) {
    if (!value.has_value()) return std::nullopt;
    return inner::store(*value);
  }
  static Optional view(stored_type& stored) {
    if (!stored.has_value()) return Optional();
    return Optional(inner::view(*stored));
  }
};

template <class Optional, class V>
using optional_storage =
    std::conditional_t<stored_as_copy<V>(), copy_storage<Optional>, optional_view_storage<Optional, V>>;
}  // namespace detail

/// `c10::ArrayRef<T>` (`at::IntArrayRef`, `c10::ArrayRef<double>`, ...): kept as a vector.
template <class E>
  requires(!detail::is_tensor_element_v<E>)
struct argument_storage<c10::ArrayRef<E>> {
  using stored_type = detail::owned_array_t<E>;
  static constexpr bool is_copy = false;
  static stored_type store(c10::ArrayRef<E> value) { return detail::own_array(value.data(), value.size()); }
  static c10::ArrayRef<E> view(const stored_type& stored) { return c10::ArrayRef<E>(stored.data(), stored.size()); }
};

/// `c10::OptionalArrayRef<T>`: kept as an optional vector.
template <class E>
struct argument_storage<c10::OptionalArrayRef<E>> {
  using stored_type = std::optional<detail::owned_array_t<E>>;
  static constexpr bool is_copy = false;
  static stored_type store(const c10::OptionalArrayRef<E>& value) {
    if (!value.has_value()) return std::nullopt;
    return detail::own_array(value->data(), value->size());
  }
  static c10::OptionalArrayRef<E> view(const stored_type& stored) {
    if (!stored.has_value()) return c10::OptionalArrayRef<E>();
    return c10::OptionalArrayRef<E>(c10::ArrayRef<E>(stored->data(), stored->size()));
  }
};

/// `std::span<const T, N>`: kept as a vector (a span of mutable elements is rejected).
template <class E, std::size_t N>
  requires std::is_const_v<E>
struct argument_storage<std::span<E, N>> {
  using stored_type = std::vector<std::remove_cv_t<E>>;
  static constexpr bool is_copy = false;
  static stored_type store(std::span<E, N> value) { return stored_type(value.begin(), value.end()); }
  static std::span<E, N> view(const stored_type& stored) { return std::span<E, N>(stored.data(), stored.size()); }
};

/// `std::string_view` and its kin: kept as a string.
template <class C, class Traits>
struct argument_storage<std::basic_string_view<C, Traits>> {
  using stored_type = std::basic_string<C, Traits>;
  static constexpr bool is_copy = false;
  static stored_type store(std::basic_string_view<C, Traits> value) { return stored_type(value); }
  static std::basic_string_view<C, Traits> view(const stored_type& stored) { return stored; }
};

/// `c10::string_view` where it is LibTorch's own class (1.x; in 2.x it names std::string_view).
template <class C>
struct argument_storage<c10::basic_string_view<C>> {
  using stored_type = std::basic_string<C>;
  static constexpr bool is_copy = false;
  static stored_type store(c10::basic_string_view<C> value) { return stored_type(value.data(), value.size()); }
  static c10::basic_string_view<C> view(const stored_type& stored) {
    return c10::basic_string_view<C>(stored.data(), stored.size());
  }
};

/// Optionals: a copy when what they hold is kept as a copy, else an optional of the owning form.
template <class V>
struct argument_storage<std::optional<V>> : detail::optional_storage<std::optional<V>, V> {};
/// `c10::optional` where it is LibTorch's own class template (1.x; in 2.x it is std::optional).
template <class V>
  requires(!std::is_same_v<c10::optional<V>, std::optional<V>>)
struct argument_storage<c10::optional<V>> : detail::optional_storage<c10::optional<V>, V> {};

namespace detail {

template <class T>
struct is_instance_of_span : std::false_type {};
template <class E, std::size_t N>
struct is_instance_of_span<std::span<E, N>> : std::true_type {};
template <class T>
struct is_array_ref : std::false_type {};
template <class E>
struct is_array_ref<c10::ArrayRef<E>> : std::true_type {
  static constexpr bool of_tensors = is_tensor_element_v<E>;
};
template <class T>
struct is_reference_wrapper : std::false_type {};
template <class T>
struct is_reference_wrapper<std::reference_wrapper<T>> : std::true_type {};
template <class T>
struct is_initializer_list : std::false_type {};
template <class T>
struct is_initializer_list<std::initializer_list<T>> : std::true_type {};
template <class T>
struct is_std_array : std::false_type {};
template <class T, std::size_t N>
struct is_std_array<std::array<T, N>> : std::true_type {};

/// The value type of an optional (std::optional, and c10::optional where it is its own class).
template <class T>
struct optional_value {};
template <class V>
struct optional_value<std::optional<V>> {
  using type = V;
};
template <class V>
  requires(!std::is_same_v<c10::optional<V>, std::optional<V>>)
struct optional_value<c10::optional<V>> {
  using type = V;
};
template <class T>
concept optional_type = requires { typename optional_value<T>::type; };

/// The element types of the standard containers that can hold a view by value; `all(f)` is
/// true when `f.operator()<E>()` holds for each element type E.
template <class T>
struct elements_of {};
template <class E, class A>
struct elements_of<std::vector<E, A>> {
  static constexpr bool is_container = true;
  template <class F>
  static consteval bool all(F f) { return f.template operator()<E>(); }
};
template <class E, std::size_t N>
struct elements_of<std::array<E, N>> {
  static constexpr bool is_container = true;
  template <class F>
  static consteval bool all(F f) { return f.template operator()<E>(); }
};
template <class A, class B>
struct elements_of<std::pair<A, B>> {
  static constexpr bool is_container = true;
  template <class F>
  static consteval bool all(F f) { return f.template operator()<A>() && f.template operator()<B>(); }
};
template <class... E>
struct elements_of<std::tuple<E...>> {
  static constexpr bool is_container = true;
  template <class F>
  static consteval bool all(F f) { return (f.template operator()<E>() && ...); }
};
template <class T>
concept container_type = elements_of<T>::is_container;

/// A class type that behaves like a view: trivially copyable (so it cannot own a heap block)
/// and handing out a pointer from `data()`. std::array owns its elements inline.
template <class T>
concept looks_like_view = std::is_class_v<T> && std::is_trivially_copyable_v<T> && !is_std_array<T>::value &&
                          requires(const T& t) {
                            { t.data() } -> std::convertible_to<const volatile void*>;
                          };

/// False, but only once instantiated: a static_assert that fires for the argument type at hand.
template <class T>
inline constexpr bool always_false = false;

template <class T>
inline constexpr bool is_tensor_argument_v = std::is_same_v<T, at::Tensor> || std::is_same_v<T, c10::optional<at::Tensor>>;

template <class T>
inline constexpr bool is_object_pointer_v =
    std::is_pointer_v<T> && !std::is_function_v<std::remove_pointer_t<T>>;

/// Whether a forward parameter of type P can be kept for the recompute (no diagnostics).
template <class P>
consteval bool argument_supported() {
  using T = std::remove_cvref_t<P>;
  if constexpr (is_tensor_argument_v<T>) {
    return true;
  } else if constexpr (std::is_lvalue_reference_v<P> && !std::is_const_v<std::remove_reference_t<P>>) {
    return false;
  } else if constexpr (is_object_pointer_v<T> || is_reference_wrapper<T>::value || is_initializer_list<T>::value) {
    return false;
  } else if constexpr (is_array_ref<T>::value) {
    return !is_array_ref<T>::of_tensors;
  } else if constexpr (is_instance_of_span<T>::value) {
    return std::is_const_v<typename T::element_type>;
  } else if constexpr (optional_type<T>) {
    return argument_supported<typename optional_value<T>::type>();  // kept as its value is
  } else if constexpr (container_type<T>) {
    // Elements are copied with the container: each must own what it refers to.
    return std::copy_constructible<T> && elements_of<T>::all([]<class E>() {
             return argument_supported<E>() && stored_as_copy<E>();
           });
  } else if constexpr (!stored_as_copy<T>()) {
    return true;  // a known view, owned as its values
  } else if constexpr (looks_like_view<T>) {
    return false;
  } else {
    return std::copy_constructible<T>;
  }
}

}  // namespace detail

/// Fails to compile, with a message that says why and what to pass instead, when a forward
/// parameter of type P cannot be kept for the recompute; `true` otherwise. Instantiated by every
/// checkpointing entry point for each parameter of the wrapped forward.
template <class P>
consteval bool check_argument() {
  using T = std::remove_cvref_t<P>;
  if constexpr (!detail::argument_supported<P>()) {
    if constexpr (std::is_lvalue_reference_v<P> && !std::is_const_v<std::remove_reference_t<P>>) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a non-tensor argument by non-const reference. "
                    "actckpt keeps a copy of it for the recompute in backward, so the layer's writes would "
                    "land in that copy, not in the caller's object. Take it by value or by const reference.");
    } else if constexpr (detail::is_object_pointer_v<T>) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a raw pointer. The recompute in backward "
                    "calls the layer again long after the call returned, when the pointee may be gone. "
                    "Pass an owning value instead: std::string for text, std::vector or a tensor for an "
                    "array, a std::shared_ptr for an object.");
    } else if constexpr (detail::is_reference_wrapper<T>::value || detail::is_initializer_list<T>::value) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a std::reference_wrapper or "
                    "std::initializer_list, which refers to the caller's memory; the recompute in "
                    "backward would read it after the call returned. Pass the value itself, a "
                    "std::vector, or a std::shared_ptr.");
    } else if constexpr (detail::is_array_ref<T>::value) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a list of tensors (at::TensorList / "
                    "c10::ArrayRef<Tensor>): it views the caller's memory and its tensors would not be "
                    "autograd inputs of the checkpoint (no gradients). Pass the tensors as separate "
                    "at::Tensor arguments.");
    } else if constexpr (detail::is_instance_of_span<T>::value) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a std::span of mutable elements: the layer "
                    "could write to the caller's memory in the forward and actckpt's copy in the "
                    "recompute. Take std::span<const T> (kept as a copy of its elements) or a std::vector.");
    } else if constexpr (detail::optional_type<T>) {
      return check_argument<typename detail::optional_value<T>::type>();
    } else if constexpr (detail::container_type<T>) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a container (std::vector, std::array, "
                    "std::pair or std::tuple) whose elements are views or pointers (at::IntArrayRef, "
                    "string views, raw pointers, ...); the container is copied for the recompute in "
                    "backward but its elements would still refer to the caller's memory. Use owning "
                    "elements (std::vector<int64_t>, std::string).");
    } else if constexpr (detail::looks_like_view<T>) {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes an argument that looks like a non-owning "
                    "view (trivially copyable, with a data() pointer); the recompute in backward would "
                    "read the caller's memory after the call returned. Pass an owning type, or "
                    "specialize actckpt::argument_storage<T> to say how to own it (see argument_storage.hpp).");
    } else {
      static_assert(detail::always_false<P>,
                    "actckpt: the checkpointed forward takes a non-tensor argument that cannot be copied; "
                    "actckpt keeps a copy for the recompute in backward. Pass a copyable type (wrap an "
                    "object in std::shared_ptr).");
    }
    return false;
  } else {
    return true;
  }
}

/// What a checkpointed call keeps for a forward parameter of type P.
template <class P>
using stored_argument_t = typename argument_storage<std::remove_cvref_t<P>>::stored_type;

/// Keeps the argument `value` given for a forward parameter of type P.
template <class P, class A>
stored_argument_t<P> store_argument(A&& value) {
  using T = std::remove_cvref_t<P>;
  if constexpr (detail::stored_as_copy<T>()) {
    return argument_storage<T>::store(std::forward<A>(value));
  } else {
    return argument_storage<T>::store(static_cast<const T&>(T(std::forward<A>(value))));
  }
}

/// Hands a kept argument to the layer as its forward parameter type P: the copy itself (which
/// the call may move from), or a view into the kept values.
template <class P>
decltype(auto) pass_argument(stored_argument_t<P>& stored) {
  using T = std::remove_cvref_t<P>;
  if constexpr (detail::stored_as_copy<T>()) {
    return static_cast<P&&>(argument_storage<T>::view(stored));
  } else {
    return argument_storage<T>::view(stored);
  }
}

}  // namespace actckpt
