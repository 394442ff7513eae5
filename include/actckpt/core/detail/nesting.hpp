#pragma once
#if !defined(ACTCKPT_CORE_INTERNALS)
#error "actckpt/core/detail/nesting.hpp is internal to actckpt: include <actckpt/actckpt.hpp> (or a header of actckpt/core/) instead"
#endif
/// \file core/detail/nesting.hpp
/// What the calling thread is running inside of, for the dispatch of a checkpointed call nested
/// in another one (dispatch.hpp): a recompute of either form (replay/recompute_state.hpp), or a
/// non-reentrant checkpoint's forward. Thread-local state, like the recompute's depth: the modes
/// need not know each other's frames or hooks to answer.

#include <vector>

#include "actckpt/hooks/saved_tensor_hooks.hpp"

namespace actckpt::detail {

/// The saved-tensor hooks of the innermost non-reentrant checkpointed forward open on this
/// thread (null: none).
inline const SavedTensorHooksFactory*& checkpointed_forward_hooks() {
  thread_local const SavedTensorHooksFactory* hooks = nullptr;
  return hooks;
}

/// Marks `hooks` as a non-reentrant checkpoint's forward for its lifetime (scopes nest).
class CheckpointedForwardScope {
 public:
  explicit CheckpointedForwardScope(const SavedTensorHooksFactory* hooks) : outer_(checkpointed_forward_hooks()) {
    checkpointed_forward_hooks() = hooks;
  }
  ~CheckpointedForwardScope() { checkpointed_forward_hooks() = outer_; }
  CheckpointedForwardScope(const CheckpointedForwardScope&) = delete;
  CheckpointedForwardScope& operator=(const CheckpointedForwardScope&) = delete;

 private:
  const SavedTensorHooksFactory* outer_;
};

/// True when the innermost saved-tensor hooks scope is a non-reentrant checkpoint's forward: a
/// layer run there must save into that checkpoint's slots, as it will in the recompute. (Inside
/// another scope opened on top of it, an offload-saved forward or the user's own hooks, the
/// tensors go to that scope instead.)
inline bool in_checkpointed_forward() {
  const auto& stack = saved_tensor_hooks_stack();
  return !stack.empty() && checkpointed_forward_hooks() != nullptr && stack.back() == checkpointed_forward_hooks();
}

}  // namespace actckpt::detail
