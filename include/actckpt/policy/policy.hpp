#pragma once
/// \file policy.hpp
/// The `OffloadPolicy` concept. A policy is a small stateless type, chosen at compile time as
/// `Checkpointed<Layer, Policy>`'s second argument, whose static members say how that layer's
/// stash is kept:
/// \code
///   struct MyPolicy {
///     static constexpr std::string_view name = "MyPolicy";
///     static actckpt::StashOptions options() { return {actckpt::StashMode::async_host, 2, 1 << 20}; }
///   };
///   static_assert(actckpt::OffloadPolicy<MyPolicy>);
/// \endcode

#include <concepts>
#include <string_view>

#include "actckpt/policy/stash_options.hpp"

namespace actckpt {

template <class P>
concept OffloadPolicy = requires {
  { P::name } -> std::convertible_to<std::string_view>;
  { P::options() } -> std::same_as<StashOptions>;
};

/// Policy `P` with the checkpoint form fixed, whatever the process default:
/// `Checkpointed<Block, actckpt::Reentrant<actckpt::AsyncOffload>>`.
template <OffloadPolicy P, CheckpointForm Form>
struct WithForm {
  static constexpr std::string_view name = P::name;
  static StashOptions options() {
    StashOptions o = P::options();
    o.form = Form;
    return o;
  }
};
template <OffloadPolicy P>
using Reentrant = WithForm<P, CheckpointForm::reentrant>;
template <OffloadPolicy P>
using NonReentrant = WithForm<P, CheckpointForm::non_reentrant>;

}  // namespace actckpt
