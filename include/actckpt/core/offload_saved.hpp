#pragma once
/// \file core/offload_saved.hpp
/// (The mechanism; the policies that select it, OffloadSaved and SyncOffloadSaved, are in
/// policy/offload_saved.hpp.)
/// Offloading every activation autograd saves, without recompute (`StashOptions::offload_saved`;
/// torchtune's `OffloadActivations` and Megatron-Core's fine-grained activation offload).
///
/// Forward: the layer runs once, under the caller's grad mode, inside a saved-tensor hooks scope.
/// Each tensor its graph saves becomes a slot of a `SavedOffloadFrame`:
///  - a parameter or buffer of the layer (same storage), in the functional form a leaf that
///    requires grad other than an argument (a parameter the callable captured), an empty tensor
///    or one without storage stays on the device, referenced as autograd would;
///  - the others are grouped by storage when the layer's forward returns; a storage moves when at
///    least one of its saved tensors addresses `min_offload_bytes` or more (its smaller ones move
///    with it: kept, they would keep the whole storage on the device), else it stays. Each storage
///    moves once, as the bytes from the lowest to the highest one any of its saved
///    tensors addresses, through an ordinary `TensorStash` (pool, copy engine, keep-N stack,
///    telemetry, checksums, exhaustion policy). A view and its base, or a tensor saved twice, so
///    move once, and come back as views of one restored storage with their sizes, strides and
///    relative offsets, at the same alignment within a 64-byte line.
/// Backward: the first saved tensor a layer's backward needs brings back the whole layer (async:
/// the prefetch of all its stashes starts) and starts the prefetch of the layer whose forward ran
/// before it, so that layer's tensors travel while this one's backward computes. A restored
/// storage is dropped when autograd drops the last saved tensor using it.
/// Autograd skips its in-place version check for hooked tensors: every slot, moved or kept,
/// checks its version when unpacked and raises, as autograd would for the unwrapped layer.
/// Storage is shared per layer only: a tensor saved by two layers (one's output, the next one's
/// input) moves once for each.

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
// Lets this room's detail/ headers in (they refuse to be included from outside the library).
#define ACTCKPT_CORE_INTERNALS
#include "actckpt/core/detail/nesting.hpp"
#include "actckpt/core/detail/tensor_checks.hpp"
#include "actckpt/hooks/frame_slot_hooks.hpp"
#include "actckpt/offload/offload_context.hpp"
#include "actckpt/offload/stash_stack.hpp"
#include "actckpt/offload/tensor_stash.hpp"
#include "actckpt/policy/stash_options.hpp"
#include "actckpt/replay/recompute_state.hpp"

namespace actckpt {

namespace detail {

/// Bytes `t` addresses in its storage, from its first element to its last (0 when empty).
inline std::int64_t addressed_bytes(const at::Tensor& t) {
  if (t.numel() == 0) return 0;
  std::int64_t last = 0;
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  return (last + 1) * static_cast<std::int64_t>(t.element_size());
}

}  // namespace detail

/// What one offload-saved call keeps between forward and backward (file comment). Owned by the
/// hooks of its saved tensors: it goes when autograd drops the last of them. It is a StackEntry
/// only so the next layer's backward can prefetch it through the context; it is never pushed.
class SavedOffloadFrame final : public StackEntry, public std::enable_shared_from_this<SavedOffloadFrame> {
 public:
  /// `kept`: the layer's parameters and buffers (never moved). `arguments`: when not null, the
  /// layer's parameters are not known (a callable): leaves that require grad then count as
  /// parameters, except the tensors among `*arguments`.
  SavedOffloadFrame(const StashOptions& options, std::shared_ptr<OffloadContext> context, EventSource source,
                    const std::vector<at::Tensor>& kept, const std::vector<at::Tensor>* arguments = nullptr)
      : options_(options), context_(std::move(context)), source_(std::move(source)), leaves_are_parameters_(arguments != nullptr) {
    for (const auto& t : kept)
      if (t.defined() && t.has_storage()) kept_storages_.push_back(t.storage().unsafeGetStorageImpl());
    if (arguments != nullptr)
      for (const auto& t : *arguments)
        if (t.defined()) argument_impls_.push_back(t.unsafeGetTensorImpl());
    // The group's stash is moved whole; the per-tensor threshold was applied when it was saved.
    stash_options_ = options_;
    stash_options_.min_offload_bytes = 0;
  }

  /// Autograd saved `t` (the pack hook); returns its slot.
  std::size_t add_slot(const at::Tensor& t) {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    Slot slot(detail::TensorMeta::of(t), detail::VersionStamp::of(t));
    slot.tensor = t.detach();  // never the tensor with its history: that could be a reference cycle
    slot.movable = movable(t);
    if (slot.movable) {
      const auto bytes = detail::addressed_bytes(t);
      slot.large = bytes > 0 && static_cast<std::size_t>(bytes) >= options_.min_offload_bytes;
      slot.sizes = t.sizes().vec();
      slot.strides = t.strides().vec();
      slot.options = t.options();
      slot.byte_offset = t.storage_offset() * static_cast<std::int64_t>(t.element_size());
    }
    slots_.push_back(std::move(slot));
    ++alive_;
    return slots_.size() - 1;
  }

  /// The layer's forward returned: moves the saved tensors (one stash per storage) and joins the
  /// context's chain of layers for the prefetch a layer ahead.
  void forward_completed() {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    forward_completed_ = true;
    std::unordered_map<const c10::StorageImpl*, std::size_t> group_of;
    // A storage moves when one of its saved tensors is large enough; its small ones then move
    // with it (kept on the device, they would keep the whole storage there).
    for (auto& s : slots_) {
      if (!s.movable || !s.large || !s.alive) continue;
      if (group_of.try_emplace(s.tensor.storage().unsafeGetStorageImpl(), groups_.size()).second)
        groups_.push_back(Group{s.byte_offset, s.byte_offset, s.tensor, {}, {}, 0});
    }
    for (auto& s : slots_) {
      if (!s.movable || !s.alive) continue;
      const auto it = group_of.find(s.tensor.storage().unsafeGetStorageImpl());
      if (it == group_of.end()) continue;
      auto& g = groups_[it->second];
      g.begin = std::min(g.begin, s.byte_offset);
      g.end = std::max(g.end, s.byte_offset + detail::addressed_bytes(s.tensor));
      s.group = static_cast<std::ptrdiff_t>(it->second);
      ++g.alive;
    }
    c10::NoGradGuard no_grad;
    for (auto& g : groups_) {
      // The addressed bytes of the storage, as one flat byte tensor: what moves and comes back.
      at::Tensor flat = at::empty({0}, g.source.options().dtype(at::kByte))
                            .set_(g.source.storage(), g.begin, {g.end - g.begin}, {1});
      g.source.reset();
      g.stash = std::make_unique<TensorStash>(flat, stash_options_, context_, source_);
    }
    // The moved slots now live in their stashes only.
    for (auto& s : slots_)
      if (s.group >= 0) s.tensor.reset();
    if (!groups_.empty()) previous_ = context_->exchange_last_saved_layer(weak_from_this());
  }

  /// Autograd needs slot `index` (the unpack hook).
  at::Tensor unpack(std::size_t index) {
    std::shared_ptr<StackEntry> previous;
    at::Tensor result;
    {
      std::lock_guard<std::recursive_mutex> lock(mutex_);
      auto& s = slots_[index];
      if (s.stamp.changed()) {
        throw InputMutated(c10::str("actckpt: a tensor that layer '", source_.label, "' saved for backward (saved tensor #",
                                    index, ", [", s.meta.str(), "]) was modified by an in-place operation after the "
                                    "forward saved it (version ", s.stamp.version, ", now ", s.stamp.now(),
                                    "). Its gradient would be computed from the modified value, as autograd refuses "
                                    "for the unwrapped layer. Modify a clone instead."),
                           source_.label);
      }
      if (forward_completed_ && !backward_started_) {  // (an autograd call inside the forward is not backward)
        backward_started_ = true;
        emit(EventKind::backward_begin, source_);
        if (options_.mode == StashMode::async_host) {
          begin_prefetch_locked();
          previous = previous_.lock();
        }
      }
      if (s.group < 0) {
        result = s.tensor;
      } else {
        result = restored_view_locked(s);
      }
    }
    // The layer before this one: its saved tensors are needed next.
    if (previous) previous->begin_prefetch();
    return result;
  }

 private:
  struct Slot;

  /// Slot `s`'s tensor as a view of its group's restored storage, restoring the group first.
  at::Tensor restored_view_locked(const Slot& s) {
    auto& g = groups_[static_cast<std::size_t>(s.group)];
    if (!g.restored.defined()) {
      g.restored = g.stash->restore();
      g.stash.reset();  // its host buffer goes back to the pool now
    }
    const auto element = static_cast<std::int64_t>(s.options.dtype().itemsize());
    const std::int64_t offset = g.restored.storage_offset() + (s.byte_offset - g.begin);
    TORCH_INTERNAL_ASSERT(offset % element == 0, "actckpt: a saved tensor of layer '", source_.label, "' ([", s.meta.str(),
                "]) came back at a byte offset (", offset, ") that is not a multiple of its element size; "
                "its storage was not aligned to its element size.");
    c10::NoGradGuard no_grad;
    return at::empty({0}, s.options).set_(g.restored.storage(), offset / element, s.sizes, s.strides);
  }

 public:
  /// Autograd dropped the saved tensor of slot `index` (its node ran, or the graph went).
  void release(std::size_t index) noexcept {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    auto& s = slots_[index];
    if (!s.alive) return;
    s.alive = false;
    s.tensor.reset();
    if (s.group >= 0) {
      auto& g = groups_[static_cast<std::size_t>(s.group)];
      if (--g.alive == 0) {
        g.restored.reset();
        g.stash.reset();
      }
    }
    if (--alive_ == 0 && backward_started_) emit(EventKind::backward_end, source_);
  }

  void begin_offload() override {}  // the stashes move themselves (sync at once, async via the stack)

  /// Starts bringing back every stash of this layer that is on the host.
  void begin_prefetch() override {
    std::lock_guard<std::recursive_mutex> lock(mutex_);
    begin_prefetch_locked();
  }

  const std::string& label() const { return source_.label; }

 private:
  struct Slot {
    Slot(detail::TensorMeta meta, detail::VersionStamp stamp) : meta(std::move(meta)), stamp(std::move(stamp)) {}
    detail::TensorMeta meta;
    detail::VersionStamp stamp;
    at::Tensor tensor;  // detached: kept on the device, or (moved slots) until the forward returned
    bool movable = false;  // not a parameter or buffer, has a storage
    bool large = false;    // addresses at least min_offload_bytes
    bool alive = true;
    std::ptrdiff_t group = -1;  // its storage's group, when moved
    std::vector<int64_t> sizes, strides;
    at::TensorOptions options;
    std::int64_t byte_offset = 0;  // in its storage
  };
  struct Group {
    std::int64_t begin, end;  // bytes of the storage that move
    at::Tensor source;        // one of the slots' tensors, until stashed
    std::unique_ptr<TensorStash> stash;
    at::Tensor restored;  // the flat byte tensor, back on the device
    std::size_t alive;    // slots using it
  };

  bool movable(const at::Tensor& t) const {
    if (options_.mode == StashMode::device) return false;
    if (!t.defined() || !t.has_storage() || t.layout() != at::kStrided || t.numel() == 0) return false;
    if (leaves_are_parameters_ && t.is_leaf() && t.requires_grad() &&
        std::find(argument_impls_.begin(), argument_impls_.end(), t.unsafeGetTensorImpl()) == argument_impls_.end())
      return false;  // a parameter a callable captured
    const auto* storage = t.storage().unsafeGetStorageImpl();
    for (const auto* k : kept_storages_)
      if (k == storage) return false;
    return true;
  }

  void begin_prefetch_locked() {
    for (auto& g : groups_)
      if (g.stash) g.stash->begin_prefetch();
  }

  mutable std::recursive_mutex mutex_;  // recursive: autograd may drop a saved tensor while we unpack
  const StashOptions options_;
  StashOptions stash_options_;
  const std::shared_ptr<OffloadContext> context_;
  const EventSource source_;
  const bool leaves_are_parameters_;
  std::vector<const c10::StorageImpl*> kept_storages_;
  std::vector<const c10::TensorImpl*> argument_impls_;
  std::vector<Slot> slots_;
  std::vector<Group> groups_;
  std::weak_ptr<StackEntry> previous_;  // the offload-saved layer whose forward ran before this one
  std::size_t alive_ = 0;
  bool forward_completed_ = false;
  bool backward_started_ = false;
};

namespace detail {

/// The hooks of an offload-saved forward: each saved tensor becomes a slot of its frame.
using SavedOffloadHooks = FrameSlotHooks<SavedOffloadFrame>;

/// Whether a layer with `offload_saved` set runs directly instead: when recomputing (either
/// form), or inside a non-reentrant checkpoint's forward, its saved tensors belong to the
/// enclosing checkpoint, which drops them anyway.
inline bool offload_saved_runs_directly() { return recomputing() || in_checkpointed_forward(); }

}  // namespace detail

/// Runs `run()` (the layer's forward) with every tensor it saves for backward offloaded per
/// `options` (file comment), announcing the layer's forward to observers; returns what it returns.
/// `kept`: the layer's parameters and buffers; `arguments`: see SavedOffloadFrame.
template <class Run>
auto run_offload_saved(const StashOptions& options, std::shared_ptr<OffloadContext> context, const EventSource& source,
                       const std::vector<at::Tensor>& kept, Run&& run,
                       const std::vector<at::Tensor>* arguments = nullptr) {
  auto frame = std::make_shared<SavedOffloadFrame>(options, std::move(context), source, kept, arguments);
  emit(EventKind::forward_begin, source);
  auto result = [&] {
    detail::SavedOffloadHooks hooks(frame);
    return run();
  }();
  frame->forward_completed();
  emit(EventKind::forward_end, source);
  return result;
}

}  // namespace actckpt
