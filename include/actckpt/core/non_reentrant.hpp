#pragma once
/// \file core/non_reentrant.hpp
/// Non-reentrant checkpointing (PyTorch's `use_reentrant=False`), on C++ saved-tensor hooks.
///
/// Forward: the layer runs under the caller's grad mode, so autograd records its graph as for the
/// unwrapped layer; a saved-tensor hook replaces every tensor that graph saves by a slot of a
/// `RecomputeFrame` (its index, shape, dtype, device and version), keeping no memory. The layer's
/// tensor arguments are stashed per the policy (device, host sync, host async with prefetch).
/// Backward: the first node that unpacks a slot finds it empty and recomputes the layer from the
/// restored inputs (forward RNG and autocast state, grad mode on, buffers put back afterwards)
/// under a second hook that fills the slots in order, and stops the layer with an exception as
/// soon as the last slot is filled (early stop). Each slot is handed out once and dropped; a
/// second unpack (retain_graph, or an autograd call inside the layer's forward) recomputes again.
/// Checks that raise an error naming the layer, never silently wrong gradients: a recompute
/// that saved a different number of tensors, or ones of another shape, dtype or device; a saved
/// tensor changed in place between forward and backward (autograd skips its own check for
/// hooked tensors).

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/core/checkpoint_record.hpp"
// Lets this room's detail/ headers in (they refuse to be included from outside the library).
#define ACTCKPT_CORE_INTERNALS
#include "actckpt/core/detail/nesting.hpp"
#include "actckpt/core/detail/tensor_checks.hpp"
#include "actckpt/hooks/frame_slot_hooks.hpp"
#include "actckpt/hooks/saved_tensor_hooks.hpp"
#include "actckpt/replay/autocast_state.hpp"
#include "actckpt/replay/buffer_replay.hpp"
#include "actckpt/replay/recompute_state.hpp"
#include "actckpt/replay/rng_state.hpp"

namespace actckpt {

namespace detail {

/// Thrown by the recompute's pack hook once the last needed tensor is recomputed, to stop the
/// layer early. Not a std::exception: a layer's `catch (const std::exception&)` lets it through.
struct StopRecomputation {};

/// A checkpoint nested in a layer that is being recomputed runs its layer directly under this
/// scope: its graph is thrown away with the recompute's, and the outer recompute must see
/// exactly the saved tensors its forward saw, where the nested checkpoint kept its own.
class DiscardSavedTensors {
 public:
  DiscardSavedTensors() { push_saved_tensor_hooks(&factory_); }
  ~DiscardSavedTensors() { pop_saved_tensor_hooks(&factory_); }
  DiscardSavedTensors(const DiscardSavedTensors&) = delete;
  DiscardSavedTensors& operator=(const DiscardSavedTensors&) = delete;

 private:
  struct Hooks final : torch::autograd::SavedVariableHooks {
    void call_pack_hook(const at::Tensor&) override {}
    at::Tensor call_unpack_hook() override {
      throw UsageError("actckpt: a checkpointed layer nested in another one used autograd inside its forward "
                       "(a tensor it saved was needed) while the outer layer was being recomputed; this "
                       "is not supported. Checkpoint the inner layer only, or the outer one only.");
    }
  };
  struct Factory final : SavedTensorHooksFactory {
    std::unique_ptr<torch::autograd::SavedVariableHooks> make() override { return std::make_unique<Hooks>(); }
  };
  Factory factory_;
};

}  // namespace detail

/// What one non-reentrant checkpointed call keeps between forward and backward: one slot per
/// tensor its graph saved, the record (stashed inputs, RNG, autocast, how to call the layer).
/// Owned by the hooks of the saved tensors: it goes when autograd drops the last of them.
class RecomputeFrame {
 public:
  RecomputeFrame(c10::intrusive_ptr<CheckpointRecord> record, std::vector<at::Tensor> forward_inputs)
      : record_(std::move(record)), forward_inputs_(std::move(forward_inputs)) {
    for (const auto& b : record_->layer_buffers())
      if (b.defined() && b.has_storage()) buffer_storages_.push_back(b.storage().unsafeGetStorageImpl());
  }

  /// The forward returned: an autograd call inside it recomputes from these inputs no more.
  void forward_completed() {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    forward_completed_ = true;
    forward_inputs_.clear();
  }

  std::size_t slot_count() const {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    return slots_.size();
  }

  /// A tensor the forward's graph saved; returns its slot.
  std::size_t add_slot(const at::Tensor& t) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    Slot slot{detail::TensorMeta::of(t), detail::VersionStamp::of(t), is_buffer(t), true, {}};
    slots_.push_back(std::move(slot));
    ++alive_;
    return slots_.size() - 1;
  }

  /// Autograd needs slot `index`: the recomputed tensor, recomputing the layer if it is not there.
  at::Tensor unpack(std::size_t index) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    if (!slots_[index].value.defined()) recompute_locked();
    TORCH_INTERNAL_ASSERT(slots_[index].value.defined(), "actckpt: slot ", index, " of '", record_->label(),
                          "' was not recomputed");
    return std::move(slots_[index].value);
  }

  /// Autograd dropped the saved tensor of slot `index` (its node ran, or the graph went).
  void release(std::size_t index) noexcept {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    auto& slot = slots_[index];
    if (!slot.alive) return;
    slot.alive = false;
    slot.value.reset();
    if (--alive_ == 0 && backward_started_) emit(EventKind::backward_end, record_->source());
  }

  /// The recompute saved `t` (its hook calls this in order); throws StopRecomputation after the last.
  void recomputed(const at::Tensor& t) {
    const std::size_t index = recompute_count_++;
    if (index >= recompute_target_) {
      throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", record_->label(),
                                       "' saved more tensors for backward than its forward did (", recompute_target_,
                                       "). The layer's forward must do the same work when run again on the same "
                                       "inputs."),
                              record_->label());
    }
    if (slots_[index].alive) slots_[index].value = t;
    if (recompute_count_ == recompute_target_) throw detail::StopRecomputation{};
  }

  const std::string& label() const { return record_->label(); }

 private:
  struct Slot {
    detail::TensorMeta meta;
    detail::VersionStamp stamp;
    bool buffer;  // one of the layer's buffers, which the recompute puts back (bumping its version)
    bool alive;
    at::Tensor value;  // recomputed, until handed out
  };

  /// Saves into the frame what the recompute saves; hands each tensor back on unpack for the
  /// recompute's own graph (an autograd call inside the layer's forward).
  class RecomputeHooks final : public detail::SavedTensorHooksFactory {
   public:
    explicit RecomputeHooks(RecomputeFrame* frame) : frame_(frame) { detail::push_saved_tensor_hooks(this); }
    ~RecomputeHooks() override { detail::pop_saved_tensor_hooks(this); }
    std::unique_ptr<torch::autograd::SavedVariableHooks> make() override { return std::make_unique<Held>(frame_); }

   private:
    struct Held final : torch::autograd::SavedVariableHooks {
      explicit Held(RecomputeFrame* frame) : frame(frame) {}
      void call_pack_hook(const at::Tensor& t) override {
        tensor = t.requires_grad() ? t.detach() : t;  // the recompute's graph must not be kept
        frame->recomputed(tensor);
      }
      at::Tensor call_unpack_hook() override { return tensor; }
      RecomputeFrame* frame;  // only used while the recompute runs, when the frame is alive
      at::Tensor tensor;
    };
    RecomputeFrame* frame_;
  };

  bool is_buffer(const at::Tensor& t) const {
    if (buffer_storages_.empty() || !t.has_storage()) return false;
    const auto* storage = t.storage().unsafeGetStorageImpl();
    for (const auto* b : buffer_storages_)
      if (b == storage) return true;
    return false;
  }

  void recompute_locked() {
    const auto& label = record_->label();
    if (recomputing_) {
      throw UsageError(c10::str("actckpt: checkpointed layer '", label,
                                "' needed one of its own saved tensors while it was being recomputed."));
    }
    std::vector<at::Tensor> inputs;
    if (!forward_completed_) {
      inputs = forward_inputs_;  // an autograd call inside the layer's own forward
    } else {
      if (!inputs_restored_) {
        backward_started_ = true;
        emit(EventKind::backward_begin, record_->source());
        restored_inputs_ = record_->restore_inputs(/*saved_tensors_checked=*/true);
        inputs_restored_ = true;
      }
      inputs = restored_inputs_;  // kept for another backward (retain_graph) until the frame goes
    }
    // (After the stash's own checks, whose messages name the input.)
    // Autograd checks a saved tensor's version only without hooks: check here, as it would.
    for (std::size_t i = 0; i < slots_.size(); ++i) {
      const auto& s = slots_[i];
      if (s.alive && s.stamp.changed()) {
        throw InputMutated(c10::str("actckpt: a tensor that checkpointed layer '", label,
                                    "' saved for backward (saved tensor #", i, ", [", s.meta.str(),
                                    "]) was modified by an in-place operation after the forward saved it (version ",
                                    s.stamp.version, ", now ", s.stamp.now(), "). Its gradient would be computed "
                                    "from the modified value, as autograd refuses for the unwrapped layer. Modify "
                                    "a clone instead."),
                           label);
      }
    }
    for (std::size_t i = 0; i < inputs.size(); ++i) {
      inputs[i] = inputs[i].detach();
      if (record_->input_requires_grad()[i]) inputs[i].requires_grad_(true);
    }

    recompute_target_ = slots_.size();
    recompute_count_ = 0;
    recomputing_ = true;
    struct Done {
      RecomputeFrame* frame;
      ~Done() { frame->recomputing_ = false; }
    } done{this};
    {
      detail::RecomputeScope recomputing(/*non_reentrant=*/true);
      detail::BufferRestoreGuard buffers(record_->layer_buffers());
      RngReplayGuard rng(record_->rng(), record_->devices());
      AutocastReplayGuard autocast(record_->autocast());
      c10::AutoGradMode grad_on(true);
      RecomputeHooks hooks(this);
      try {
        (void)record_->run_layer(inputs);
      } catch (const detail::StopRecomputation&) {
      }
    }
    if (forward_completed_) emit(EventKind::recompute_end, record_->source());
    // The buffers were put back by a copy, which bumped their versions: that write is ours.
    for (auto& s : slots_)
      if (s.buffer) s.stamp.version = s.stamp.now();

    if (recompute_count_ != recompute_target_) {
      throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", label, "' saved ",
                                       recompute_count_, " tensors for backward, its forward saved ",
                                       recompute_target_, ". The layer's forward must do the same work when run "
                                       "again on the same inputs (a layer that depends on state changing between "
                                       "forward and backward cannot be checkpointed)."),
                              label);
    }
    for (std::size_t i = 0; i < recompute_target_; ++i) {
      auto& s = slots_[i];
      if (!s.alive || !s.value.defined()) continue;
      const auto meta = detail::TensorMeta::of(s.value);
      if (meta == s.meta) continue;
      for (auto& other : slots_) other.value.reset();
      throw RecomputeMismatch(c10::str("actckpt: the recompute of checkpointed layer '", label, "' saved tensor #",
                                       i, " as [", meta.str(), "], the forward as [", s.meta.str(),
                                       "]. The layer's forward must do the same work when run again on the same "
                                       "inputs."),
                              label);
    }
  }

  mutable std::recursive_mutex mutex_;  // recursive: autograd may drop a saved tensor during a recompute
  c10::intrusive_ptr<CheckpointRecord> record_;
  std::vector<at::Tensor> forward_inputs_;   // until the forward returned
  std::vector<at::Tensor> restored_inputs_;  // after the first recompute in backward
  std::vector<const c10::StorageImpl*> buffer_storages_;
  std::vector<Slot> slots_;
  std::size_t alive_ = 0;
  std::size_t recompute_target_ = 0;
  std::size_t recompute_count_ = 0;
  bool forward_completed_ = false;
  bool inputs_restored_ = false;
  bool recomputing_ = false;
  bool backward_started_ = false;
};

namespace detail {

/// The hooks of a non-reentrant checkpoint's forward: each saved tensor becomes a slot of its
/// RecomputeFrame.
using ForwardSlotHooks = FrameSlotHooks<RecomputeFrame>;

}  // namespace detail

/// Runs `record`'s layer on `inputs` checkpointed without reentrance (file comment); returns the
/// layer's output tensors, with the forward's graph. `params` are the layer's parameters that
/// require grad (their versions are checked before the recompute).
inline std::vector<at::Tensor> run_non_reentrant(const c10::intrusive_ptr<CheckpointRecord>& record,
                                                 std::vector<at::Tensor> inputs,
                                                 const std::vector<at::Tensor>& params) {
  record->capture_forward_state(inputs, params);
  auto frame = std::make_shared<RecomputeFrame>(record, inputs);
  std::vector<at::Tensor> outputs;
  {
    detail::ForwardSlotHooks hooks(frame);
    detail::CheckpointedForwardScope forward(&hooks);
    outputs = record->run_layer(inputs);
  }
  frame->forward_completed();
  // Nothing saved: backward never recomputes, so nothing needs to wait for it.
  record->stash_inputs(inputs, /*keep=*/frame->slot_count() > 0);
  return outputs;
}

}  // namespace actckpt
