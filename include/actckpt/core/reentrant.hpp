#pragma once
/// \file core/reentrant.hpp
/// The reentrant form (PyTorch's `use_reentrant=True`): the custom autograd function behind a
/// call checkpointed in that form.
///
/// forward (run by autograd with grad mode off): captures RNG and autocast state, runs the
/// layer, stashes its inputs. backward: restores the inputs, replays RNG, autocast and buffers,
/// recomputes the layer with grad mode on and differentiates it with `torch::autograd::grad`
/// with respect to the inputs and the parameters, which were passed to `apply` as explicit
/// inputs. Because of that:
///  - parameters get gradients even when no input requires grad (docs/pitfalls.md#p3);
///  - an outer `torch::autograd::grad(loss, params)` or `backward(inputs=...)` works, since the
///    parameter gradients leave this node along ordinary graph edges (docs/pitfalls.md#p8).

#include <ATen/core/ivalue.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <c10/core/GradMode.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/replay/autocast_state.hpp"
#include "actckpt/core/checkpoint_record.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/replay/buffer_replay.hpp"
#include "actckpt/replay/recompute_state.hpp"

namespace actckpt {

namespace detail {

/// Watches the `.grad` of the layer's parameters across the recompute's nested
/// `torch::autograd::grad` call, which must leave them alone (its gradients leave this node as
/// return values). LibTorch breaks that in one case found by the randomized programs test: when
/// the layer adds a parameter in place to a view of an intermediate (`h.view(..).add_(bias)`), the
/// nested call *also* accumulates that parameter's gradient into `.grad`, so it arrives twice
/// (LibTorch 1.13; 2.15 does not). A silent doubled gradient is the worst outcome; the reentrant
/// form cannot prevent it, so it raises (the non-reentrant form records the real graph and is
/// not affected).
class ParamGradWatch {
 public:
  explicit ParamGradWatch(const std::vector<at::Tensor>& params) {
    seen_.reserve(params.size());
    for (const auto& p : params) seen_.push_back(state_of(p));
  }
  /// Index of the first parameter whose `.grad` changed since construction, or -1.
  std::ptrdiff_t first_changed(const std::vector<at::Tensor>& params) const {
    for (std::size_t i = 0; i < params.size(); ++i)
      if (state_of(params[i]) != seen_[i]) return static_cast<std::ptrdiff_t>(i);
    return -1;
  }

 private:
  using State = std::pair<const void*, std::uint32_t>;  // the grad's TensorImpl and version
  static State state_of(const at::Tensor& p) {
    const auto& g = p.grad();
    if (!g.defined()) return {nullptr, 0};
    return {g.unsafeGetTensorImpl(), g._version()};
  }
  std::vector<State> seen_;
};

}  // namespace detail

struct CheckpointFunction : public torch::autograd::Function<CheckpointFunction> {
  static constexpr const char* record_key = "actckpt_record";

  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx,
                                                c10::intrusive_ptr<CheckpointRecord> record,
                                                at::TensorList inputs, at::TensorList params) {
    record->capture_forward_state(inputs, params);
    std::vector<at::Tensor> outputs;
    {
      AutocastCacheOff no_cast_cache;  // grad mode is off: casts cached now would carry no history
      outputs = record->run_layer(inputs.vec());
    }
    record->stash_inputs(inputs);
    record->record_outputs(outputs);
    std::vector<at::Tensor> non_differentiable;
    for (const auto& t : outputs)
      if (!c10::isFloatingType(t.scalar_type()) && !c10::isComplexType(t.scalar_type())) non_differentiable.push_back(t);
    if (!non_differentiable.empty()) ctx->mark_non_differentiable(non_differentiable);
    ctx->set_materialize_grads(false);  // unused outputs cost nothing in backward
    ctx->saved_data[record_key] = c10::IValue::make_capsule(std::move(record));
    return outputs;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto record = c10::static_intrusive_pointer_cast<CheckpointRecord>(ctx->saved_data.at(record_key).toCapsule());
    emit(EventKind::backward_begin, record->source());
    const bool create_graph = c10::GradMode::is_enabled();  // true under backward(create_graph=true)

    std::vector<at::Tensor> inputs = record->restore_inputs();
    std::vector<at::Tensor> targets;  // what gradients are taken with respect to
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      inputs[i] = inputs[i].detach();
      if (record->input_requires_grad()[i]) {
        inputs[i].requires_grad_(true);
        targets.push_back(inputs[i]);
      }
    }
    for (const auto& p : record->params()) targets.push_back(p);

    // Buffers (BatchNorm statistics) are put back only after the gradients are taken: the
    // recompute's graph may have saved them, and restoring bumps their version.
    detail::BufferRestoreGuard buffers(record->layer_buffers());
    std::vector<at::Tensor> outputs;
    {
      RngReplayGuard rng(record->rng(), record->devices());
      AutocastReplayGuard autocast(record->autocast());
      AutocastCacheOff no_cast_cache;  // as in forward: the recompute's casts are its own
      c10::AutoGradMode grad_on(true);
      detail::RecomputeScope recomputing(/*non_reentrant=*/false);
      outputs = record->run_layer(inputs);
    }
    emit(EventKind::recompute_end, record->source());
    record->check_recompute(outputs);

    std::vector<at::Tensor> roots, root_grads;
    for (std::size_t i = 0; i < outputs.size(); ++i) {
      if (i < grad_outputs.size() && grad_outputs[i].defined() && outputs[i].requires_grad()) {
        roots.push_back(outputs[i]);
        root_grads.push_back(grad_outputs[i]);
      }
    }
    std::vector<at::Tensor> grads;
    if (!roots.empty() && !targets.empty()) {
      detail::ParamGradWatch watch(record->params());
      grads = torch::autograd::grad(roots, targets, root_grads, /*retain_graph=*/create_graph, create_graph,
                                    /*allow_unused=*/true);
      const auto changed = watch.first_changed(record->params());
      if (changed >= 0) {
        throw RecomputeMismatch(
            c10::str("actckpt: the reentrant recompute of checkpointed layer '", record->label(),
                     "' would give parameter #", changed, " of the layer its gradient twice: LibTorch accumulated it "
                     "into .grad during the recompute's own autograd::grad call (this happens when the layer "
                     "applies a parameter in place to a view of an intermediate, e.g. h.view(...).add_(bias)). "
                     "Use the non-reentrant form (the default; not Reentrant<...>, not "
                     "ACTCKPT_CHECKPOINT_FORM=reentrant), or make that operation out of place (h = h + bias)."),
            record->label());
      }
    }
    outputs.clear();
    roots.clear();

    // One entry per flattened argument of apply: the record (none), the inputs, the params.
    torch::autograd::variable_list result;
    result.reserve(1 + inputs.size() + record->params().size());
    result.emplace_back();
    std::size_t next = 0;
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      const bool wanted = record->input_requires_grad()[i];
      result.push_back(wanted && !grads.empty() ? grads[next] : at::Tensor());
      if (wanted) ++next;
    }
    for (std::size_t i = 0; i < record->params().size(); ++i) result.push_back(grads.empty() ? at::Tensor() : grads[next++]);
    emit(EventKind::backward_end, record->source());
    return result;
  }
};

}  // namespace actckpt
