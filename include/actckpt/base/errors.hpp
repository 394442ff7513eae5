#pragma once
/// \file errors.hpp
/// actckpt's exception types. Every error a caller can cause is an `actckpt::Error` (a
/// `std::runtime_error`, so `catch (const std::exception&)` sees it too) whose `what()` is the
/// message alone, without a C++ backtrace; the subclasses carry what a program needs to react
/// without parsing text:
/// \code
///   try {
///     plan = actckpt::plan_memory(*model, step, budget, options);
///   } catch (const actckpt::InfeasibleBudget& e) {
///     plan = actckpt::plan_memory(*model, step, e.smallest_feasible_budget(), options);
///   }
/// \endcode
/// Errors raised during backward (a recompute mismatch, a consumed stash, a checksum failure)
/// pass through LibTorch's autograd engine, which rethrows the original exception object in the
/// thread that called `backward()`: they arrive with their type and data (tested on LibTorch
/// 1.13 and 2.x). Broken internal invariants stay LibTorch's `c10::Error` (TORCH_INTERNAL_ASSERT):
/// those are actckpt's bugs, not the caller's.

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include <c10/macros/Macros.h>
#include <c10/util/StringUtil.h>

namespace actckpt {

/// The base of every error actckpt raises for something the caller did or asked for.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

/// An argument actckpt cannot work with, or a call it does not support in the state it was made
/// in (an empty holder, eval mode for the planner, a nested checkpoint using autograd inside a
/// recompute, a bad environment variable, ...). The message says what to do instead.
class UsageError : public Error {
 public:
  using Error::Error;
};

/// No plan fits the memory budget (`plan_for_budget`, `plan_memory`).
class InfeasibleBudget : public Error {
 public:
  InfeasibleBudget(const std::string& message, std::int64_t budget_bytes, std::int64_t smallest_feasible_budget)
      : Error(message), budget_bytes_(budget_bytes), smallest_feasible_budget_(smallest_feasible_budget) {}
  /// The budget that was asked for (bytes, as the profile's meter reads them).
  std::int64_t budget_bytes() const noexcept { return budget_bytes_; }
  /// The smallest budget any plan fits, by the cost model (bytes): a budget to retry with.
  std::int64_t smallest_feasible_budget() const noexcept { return smallest_feasible_budget_; }

 private:
  std::int64_t budget_bytes_;
  std::int64_t smallest_feasible_budget_;
};

/// An error about one checkpointed layer; `layer()` is its label (see `label_layers`).
class LayerError : public Error {
 public:
  LayerError(const std::string& message, std::string layer) : Error(message), layer_(std::move(layer)) {}
  const std::string& layer() const noexcept { return layer_; }

 private:
  std::string layer_;
};

/// A second backward through a checkpointed layer whose stashed inputs the first one consumed
/// (retain_graph=true), or a stash restored twice.
class StashConsumed : public LayerError {
 public:
  using LayerError::LayerError;
};

/// The host buffer pool could not take a stash under its limit (`PoolExhaustion::throw_error`).
class HostPoolExhausted : public LayerError {
 public:
  HostPoolExhausted(const std::string& message, std::string layer, std::size_t requested_bytes,
                    std::size_t limit_bytes, std::size_t live_bytes)
      : LayerError(message, std::move(layer)),
        requested_bytes_(requested_bytes),
        limit_bytes_(limit_bytes),
        live_bytes_(live_bytes) {}
  /// The stash that did not fit (bytes).
  std::size_t requested_bytes() const noexcept { return requested_bytes_; }
  /// The pool's limit (HostBufferPool::limit) when it refused.
  std::size_t limit_bytes() const noexcept { return limit_bytes_; }
  /// What the pool's live buffers held when it refused.
  std::size_t live_bytes() const noexcept { return live_bytes_; }

 private:
  std::size_t requested_bytes_;
  std::size_t limit_bytes_;
  std::size_t live_bytes_;
};

/// The recompute of a layer did other work than its forward (other outputs, other saved tensors).
class RecomputeMismatch : public LayerError {
 public:
  using LayerError::LayerError;
};

/// Something a checkpointed layer's backward depends on was modified in place: one of its inputs
/// (during its forward, or between forward and backward), a parameter, or a tensor it saved.
class InputMutated : public LayerError {
 public:
  using LayerError::LayerError;
};

/// A stash came back from host memory different from what left the device (checksums).
class StashCorrupted : public LayerError {
 public:
  using LayerError::LayerError;
};

/// Moving a stash between device and host memory failed; the message carries the cause.
class OffloadFailed : public LayerError {
 public:
  using LayerError::LayerError;
};

/// Data parallelism failed across processes: a rendezvous store or a peer that could not be
/// reached in time, or ranks holding different models (distributed.hpp).
class DistributedError : public Error {
 public:
  using Error::Error;
};

}  // namespace actckpt

/// TORCH_CHECK's form for actckpt's own errors: `ACTCKPT_CHECK(cond, UsageError, "message ", value)`
/// throws `actckpt::UsageError(c10::str("message ", value))` when `cond` is false (`Type` is one of
/// the types above whose constructor takes the message alone).
#define ACTCKPT_CHECK(cond, Type, ...)                                 \
  do {                                                                 \
    if (C10_UNLIKELY(!(cond))) throw ::actckpt::Type(::c10::str(__VA_ARGS__)); \
  } while (false)
