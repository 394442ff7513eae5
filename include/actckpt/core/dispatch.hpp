#pragma once
/// \file core/dispatch.hpp
/// The one place that decides how a checkpointed call runs, for both ways in: the module wrapper
/// (`Checkpointed`, wrap/checkpointed.hpp) and the functional form (`checkpoint`,
/// wrap/functional.hpp). A way in says what the call is (`CallSettings`) and how to run it
/// (`CallWays`); the dispatch picks, in this order:
///  1. off (eval mode, grad mode off): the layer runs directly, nothing is stashed;
///  2. offload saved (no recompute): directly when recomputing or inside a non-reentrant
///     checkpoint's forward (its saved tensors belong to that checkpoint), kept when the stash
///     stays on the device, else every saved activation goes to the host (offload_saved.hpp);
///  3. not checkpointed (`StashOptions::checkpoint == false`): kept, announced to observers;
///  4. nested in a non-reentrant recompute: directly, keeping nothing (that recompute keeps
///     exactly the saved tensors its forward saw);
///  5. checkpointed, in the form the options resolve to: non-reentrant (saved-tensor hooks,
///     non_reentrant.hpp) or reentrant (a custom autograd function, reentrant.hpp), the forward
///     announced to observers around it.

#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/core/checkpoint_record.hpp"
// Lets this room's detail/ headers in (they refuse to be included from outside the library).
#define ACTCKPT_CORE_INTERNALS
#include "actckpt/core/detail/nesting.hpp"
#include "actckpt/core/non_reentrant.hpp"
#include "actckpt/core/offload_saved.hpp"
#include "actckpt/core/reentrant.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/policy/stash_options.hpp"
#include "actckpt/replay/recompute_state.hpp"

namespace actckpt::detail {

/// Which checkpoint forms a way in can run.
enum class FormRule {
  /// `StashOptions::form`, resolved (the process default, or what the options name).
  as_options,
  /// Non-reentrant whatever the process default; naming the reentrant form is a usage error
  /// (the functional form: the reentrant form would give no gradient to captured tensors).
  non_reentrant_only,
};

/// What one call is.
struct CallSettings {
  EventSource source;  ///< label and identity, for errors and events
  const StashOptions& options;
  std::shared_ptr<OffloadContext> context;
  bool enabled;                     ///< false: run directly (eval mode, grad mode off)
  FormRule form_rule = FormRule::as_options;
  /// Offload saved, where the layer's parameters are not known (a callable): the tensor
  /// arguments, so that other leaves that require grad count as parameters (SavedOffloadFrame).
  const std::vector<at::Tensor>* callable_arguments = nullptr;
};

/// How to run one call each way. Every member is a callable taking no argument:
///  - `direct()`: the layer's forward, plainly (returns the call's result);
///  - `kept()`: the same, not checkpointed, announced to observers where the way in does so;
///  - `kept_tensors()`: the layer's parameters and buffers, which offload saved never moves;
///  - `make_record()`: a new `TypedCheckpointRecord` holding the call's arguments
///    (argument_binding.hpp), its tensor inputs in `tensor_inputs()`;
///  - `trainable_parameters()`: the layer's parameters that require grad (their versions are
///    checked before a recompute; the reentrant form differentiates with respect to them).
template <class Direct, class Kept, class KeptTensors, class MakeRecord, class TrainableParameters>
struct CallWays {
  Direct direct;
  Kept kept;
  KeptTensors kept_tensors;
  MakeRecord make_record;
  TrainableParameters trainable_parameters;
};
template <class... F>
CallWays(F...) -> CallWays<F...>;

/// The form `settings` runs in (a usage error where the way in cannot run the one named).
inline CheckpointForm form_of(const CallSettings& settings) {
  if (settings.form_rule == FormRule::as_options) return resolve(settings.options.form);
  ACTCKPT_CHECK(settings.options.form != CheckpointForm::reentrant, UsageError,
                "actckpt::checkpoint (the functional form) is non-reentrant only: the reentrant form would give no "
                "gradient to the tensors a callable captures.");
  return CheckpointForm::non_reentrant;
}

/// Runs one call as the file comment says; returns what the layer's forward returns.
template <class... F>
auto dispatch(const CallSettings& settings, CallWays<F...>&& ways) -> decltype(ways.direct()) {
  using R = decltype(ways.direct());
  const StashOptions& options = settings.options;
  if (options.offload_saved) {  // no recompute: the form does not matter
    if (!settings.enabled || offload_saved_runs_directly()) return ways.direct();
    if (options.mode == StashMode::device) return ways.kept();
    return run_offload_saved(options, settings.context, settings.source, ways.kept_tensors(),
                             [&]() -> R { return ways.direct(); }, settings.callable_arguments);
  }
  const CheckpointForm form = form_of(settings);
  if (!settings.enabled) return ways.direct();
  if (!options.checkpoint) {
    if (in_non_reentrant_recompute()) return ways.direct();
    return ways.kept();
  }
  if (in_non_reentrant_recompute()) {
    // Nested in a layer being recomputed: that recompute keeps only its own saved tensors.
    DiscardSavedTensors discard;
    return ways.direct();
  }

  auto record = ways.make_record();
  // The inputs travel through autograd and the stash only: the record must not keep them.
  std::vector<at::Tensor> inputs = std::move(record->tensor_inputs());
  record->tensor_inputs().clear();
  std::vector<at::Tensor> params = ways.trainable_parameters();
  if (form == CheckpointForm::non_reentrant) {
    emit(EventKind::forward_begin, settings.source);
    R result = record->assemble(run_non_reentrant(record, std::move(inputs), params));
    emit(EventKind::forward_end, settings.source);
    return result;
  }
  bool any_requires_grad = !params.empty();
  for (const auto& t : inputs) any_requires_grad = any_requires_grad || t.requires_grad();
  if (!any_requires_grad) {  // nothing to differentiate: nothing to stash
    return record->assemble(record->run_layer(inputs));
  }
  emit(EventKind::forward_begin, settings.source);
  auto outputs = CheckpointFunction::apply(c10::intrusive_ptr<CheckpointRecord>(record), at::TensorList(inputs),
                                           at::TensorList(params));
  inputs.clear();
  R result = record->assemble(outputs);
  emit(EventKind::forward_end, settings.source);
  return result;
}

}  // namespace actckpt::detail
