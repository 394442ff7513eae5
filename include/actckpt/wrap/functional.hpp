#pragma once
/// \file wrap/functional.hpp
/// The functional form, as `torch.utils.checkpoint`: checkpoint any callable, lambdas that
/// capture tensors included, and a `torch::nn::Sequential` in segments.
/// \code
///   auto y = actckpt::checkpoint<actckpt::AsyncOffload>(
///       [&](const torch::Tensor& x) { return torch::relu(x.mm(shared_weight)); }, x);
///   auto z = actckpt::checkpoint_sequential<actckpt::SyncOffload>(seq, /*segments=*/4, x);
/// \endcode
/// Always non-reentrant (saved-tensor hooks): a callable's captured tensors are not known to
/// actckpt, and only the non-reentrant form gives them their gradients. The tensor arguments are
/// stashed per the policy; tensors the callable captures, or that arguments hold inside
/// containers, stay where they are (referenced, as autograd would keep them). Unlike
/// `Checkpointed`, `checkpoint` does not know the modules the callable runs: a BatchNorm inside
/// updates its running statistics again in the recompute (as in PyTorch); `checkpoint_sequential`
/// puts the buffers of its modules back after each recompute. With grad mode off the callable
/// runs directly.

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>
#include <torch/nn/modules/container/sequential.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/core/argument_binding.hpp"
#include "actckpt/core/dispatch.hpp"
#include "actckpt/layer/layer_traits.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/policy/no_offload.hpp"
#include "actckpt/policy/policy.hpp"

namespace actckpt {

namespace detail {

/// A callable seen as a layer by TypedCheckpointRecord: `forward` calls it, `buffers` are the
/// tensors to put back after a recompute.
template <class F>
struct CallableLayer {
  F fn;
  std::vector<at::Tensor> buffer_list;
  template <class... A>
  decltype(auto) forward(A&&... args) {
    return std::invoke(fn, std::forward<A>(args)...);
  }
  std::vector<at::Tensor> buffers() const { return buffer_list; }
};

template <class F, class... Args>
using checkpoint_result_t = std::decay_t<std::invoke_result_t<std::decay_t<F>&, std::decay_t<Args>&&...>>;

template <class F, class... Args>
checkpoint_result_t<F, Args...> checkpoint_callable(const StashOptions& options, std::string label,
                                                    std::vector<at::Tensor> buffers, F&& fn, Args&&... args) {
  using R = checkpoint_result_t<F, Args...>;
  static_assert(result_traits<R>::has_tensor,
                "actckpt::checkpoint: the callable must return a tensor, a std::vector of tensors, or a "
                "tuple/pair holding at least one tensor");
  // The callable's parameters are not known: for offload saved, leaves that require grad count
  // as parameters, except the tensor arguments.
  std::vector<at::Tensor> arguments;
  if (options.offload_saved) {
    (
        [&](const auto& a) {
          if constexpr (std::is_same_v<std::decay_t<decltype(a)>, at::Tensor>) arguments.push_back(a);
        }(args),
        ...);
  }
  CallSettings settings{EventSource{std::move(label)}, options, OffloadContext::current(),
                        c10::GradMode::is_enabled(), FormRule::non_reentrant_only, &arguments};
  auto direct = [&]() -> R { return std::invoke(fn, std::forward<Args>(args)...); };
  return dispatch(settings, CallWays{
                                direct,
                                direct,  // not checkpointed: runs as it is, unannounced
                                [&] { return buffers; },
                                [&] {
                                  using Layer = CallableLayer<std::decay_t<F>>;
                                  using Record = TypedCheckpointRecord<Layer, R, std::decay_t<Args>...>;
                                  auto layer = std::make_shared<Layer>(Layer{std::forward<F>(fn), std::move(buffers)});
                                  return c10::make_intrusive<Record>(layer, settings.source, options, settings.context,
                                                                     std::forward<Args>(args)...);
                                },
                                [] { return std::vector<at::Tensor>{}; }});
}

}  // namespace detail

/// `fn(args...)`, checkpointed: its activations are recomputed in backward, its tensor arguments
/// kept per `Policy` (NoOffload, SyncOffload, AsyncOffload or your own) until then. Returns what
/// `fn` returns (a tensor, a vector of tensors, or a tuple/pair of tensors and other values).
/// Gradients are those of `fn(args...)` itself, for arguments, captured tensors and tensors in
/// containers alike.
template <OffloadPolicy Policy = NoOffload, class F, class... Args>
detail::checkpoint_result_t<F, Args...> checkpoint(F&& fn, Args&&... args) {
  return detail::checkpoint_callable(Policy::options(), "actckpt::checkpoint", {}, std::forward<F>(fn),
                                     std::forward<Args>(args)...);
}

/// Runs `seq` on `input` in `segments` parts, each but the last checkpointed (as PyTorch's
/// `checkpoint_sequential`: the last segment's activations are needed at once by backward).
/// Every module must map one tensor to one tensor. Segment boundaries are PyTorch's: segments of
/// size(seq) / segments modules, the last one taking the rest.
template <OffloadPolicy Policy = NoOffload>
at::Tensor checkpoint_sequential(const torch::nn::Sequential& seq, int64_t segments, at::Tensor input) {
  ACTCKPT_CHECK(!seq.is_empty(), UsageError, "actckpt::checkpoint_sequential: the Sequential is empty (nullptr)");
  const auto n = static_cast<int64_t>(seq->size());
  ACTCKPT_CHECK(segments >= 1 && segments <= n, UsageError, "actckpt::checkpoint_sequential: segments must be between 1 and "
              "the number of modules (", n, "), got ", segments);
  auto run = [impl = seq.ptr()](int64_t first, int64_t last, at::Tensor x) {
    for (int64_t i = first; i <= last; ++i) x = (impl->begin() + i)->forward(std::move(x));
    return x;
  };
  const int64_t size = n / segments;
  int64_t end = -1;
  for (int64_t start = 0; start < size * (segments - 1); start += size) {
    end = start + size - 1;
    std::vector<at::Tensor> buffers;
    for (int64_t i = start; i <= end; ++i)
      for (auto& b : seq->ptr(static_cast<std::size_t>(i))->buffers()) buffers.push_back(b);
    input = detail::checkpoint_callable(
        Policy::options(), "checkpoint_sequential[" + std::to_string(start) + ".." + std::to_string(end) + "]",
        std::move(buffers), [run, start, end](at::Tensor x) { return run(start, end, std::move(x)); },
        std::move(input));
  }
  return run(end + 1, n - 1, std::move(input));
}

}  // namespace actckpt
