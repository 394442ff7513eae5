#pragma once
/// \file recompute_state.hpp
/// Whether the calling thread is recomputing a checkpointed layer. A layer with side effects
/// (counting calls, logging, injecting faults in tests) asks `actckpt::recomputing()` instead
/// of guessing from grad mode, which differs between the two checkpoint forms.

namespace actckpt {

namespace detail {
/// Recomputes running on this thread, of either form / of the non-reentrant form.
inline int& recompute_depth() {
  thread_local int depth = 0;
  return depth;
}
inline int& non_reentrant_recompute_depth() {
  thread_local int depth = 0;
  return depth;
}
inline bool in_non_reentrant_recompute() { return non_reentrant_recompute_depth() > 0; }

/// Marks the calling thread as recomputing for its lifetime.
class RecomputeScope {
 public:
  explicit RecomputeScope(bool non_reentrant) : non_reentrant_(non_reentrant) {
    ++recompute_depth();
    if (non_reentrant_) ++non_reentrant_recompute_depth();
  }
  ~RecomputeScope() {
    --recompute_depth();
    if (non_reentrant_) --non_reentrant_recompute_depth();
  }
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;

 private:
  bool non_reentrant_;
};
}  // namespace detail

/// True while the calling thread runs a checkpointed layer again in backward (either form).
inline bool recomputing() { return detail::recompute_depth() > 0; }

}  // namespace actckpt
