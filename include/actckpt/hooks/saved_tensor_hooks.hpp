#pragma once
/// \file saved_tensor_hooks.hpp
/// Saved-tensor hooks from C++: the equivalent of Python's
/// `torch.autograd.graph.saved_tensors_hooks(pack, unpack)`, which LibTorch has no C++ API for.
/// \code
///   actckpt::SavedTensorHooks hooks(
///       [](const at::Tensor& t) { return t.to(at::kCPU); },   // pack: any copyable value
///       [](const at::Tensor& cpu) { return cpu.to(at::kCUDA); });  // unpack: back to a tensor
///   auto y = model(x);  // every tensor autograd saves for backward goes through pack
///   // ... the scope may end here; backward later calls unpack for each saved tensor
/// \endcode
///
/// How it works. Every tensor autograd saves for backward (a `SavedVariable`) asks the default
/// engine, `Engine::get_default_engine().get_default_saved_variable_hooks()` (a virtual function),
/// for hooks; the base engine answers none. actckpt installs an `Engine` subclass with
/// `torch::autograd::set_default_engine_stub` that answers with the innermost open scope's hooks.
/// This is how PyTorch's Python engine implements `saved_tensors_hooks`.
///
/// When the engine is installed: during static initialization of any program that includes this
/// header (directly or through actckpt.hpp), i.e. before `main` and before any backward ran, and
/// only when LibTorch's own base engine is the default one. Without an open scope it answers
/// "no hooks" exactly like the base engine, so code that does not use actckpt behaves and
/// performs as before. Should static initialization not have installed it (for instance another
/// library replaced the engine first), the first scope tries again.
///
/// Another engine: PyTorch's Python module installs its own engine when it is imported (a
/// process that embeds Python, or actckpt code loaded into a Python process). actckpt never
/// replaces a foreign engine and never loses hooks silently: opening a scope while any other
/// engine is the default raises an error that says so. Hooks attached to tensors saved before
/// stay attached (they live in the saved tensors, not in the engine).
///
/// Scopes are per thread (like Python's), nest (the innermost applies, the outer ones are not
/// called), and must close in reverse order of opening (they are RAII objects on the stack).
/// Pack runs on the thread that saves the tensor, under no-grad; unpack runs wherever backward
/// evaluates the node that needs the tensor (the calling thread on CPU, an autograd device thread
/// for CUDA nodes), possibly long after the scope closed, once per use (a `retain_graph` backward
/// unpacks again). So both callables must be safe to call from another thread and must outlive
/// nothing: they are kept (shared) by every tensor packed through them. Autograd's in-place
/// version check is skipped for hooked tensors (LibTorch does so for any hooks).
/// Scopes open on one thread do not apply on autograd's device threads: nodes built during a
/// `create_graph` backward on CUDA threads are saved without hooks.
///
/// fork(): the child inherits the calling thread's open scopes, as with Python's hooks; LibTorch's
/// engine handles its own worker threads across fork (the engine installed here is LibTorch's
/// engine with one virtual function overridden).

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"

namespace actckpt {

namespace detail {

/// An open scope: makes the hooks object for each tensor saved while it is the innermost.
class SavedTensorHooksFactory {
 public:
  virtual ~SavedTensorHooksFactory() = default;
  virtual std::unique_ptr<torch::autograd::SavedVariableHooks> make() = 0;
};

/// The calling thread's open scopes, innermost last.
inline std::vector<SavedTensorHooksFactory*>& saved_tensor_hooks_stack() {
  thread_local std::vector<SavedTensorHooksFactory*> stack;
  return stack;
}

/// LibTorch's engine, answering with the innermost open scope's hooks.
class HooksEngine final : public torch::autograd::Engine {
 public:
  static HooksEngine& instance() {
    static HooksEngine engine;
    return engine;
  }
  static torch::autograd::Engine& stub() { return instance(); }

  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks() override {
    const auto& stack = saved_tensor_hooks_stack();
    if (stack.empty()) return nullptr;
    return stack.back()->make();
  }

  // As LibTorch's PythonEngine: stop the worker threads before the vtable goes away.
  ~HooksEngine() override { stop(); }

 private:
  HooksEngine() = default;
};

/// Where the default engine stands.
enum class EngineState { ours, foreign };

/// Installs actckpt's engine unless another subclass (Python's) is already the default. Never throws.
inline EngineState install_hooks_engine() noexcept {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto& ours = HooksEngine::instance();
  auto* current = &torch::autograd::Engine::get_default_engine();
  if (current == &ours) return EngineState::ours;
  if (current != &torch::autograd::Engine::get_base_engine()) return EngineState::foreign;
  torch::autograd::set_default_engine_stub(&HooksEngine::stub);
  return EngineState::ours;
}

/// Installed before main, before any backward can run (see the file comment).
inline const EngineState hooks_engine_at_startup = install_hooks_engine();

/// Raises a clear error when saved-tensor hooks would not be called.
inline void require_hooks_engine() {
  if (&torch::autograd::Engine::get_default_engine() == &HooksEngine::instance()) return;
  ACTCKPT_CHECK(install_hooks_engine() == EngineState::ours, UsageError,
              "actckpt: saved-tensor hooks need actckpt's autograd engine, but another engine is LibTorch's "
              "default (PyTorch's Python engine, installed when the torch Python module is imported, or one "
              "installed by another library). Its hooks would never be called, so actckpt refuses instead of "
              "losing them. Use the reentrant checkpoint form (CheckpointForm::reentrant) in such a process.");
}

/// Opens `factory` as the calling thread's innermost scope.
inline void push_saved_tensor_hooks(SavedTensorHooksFactory* factory) {
  require_hooks_engine();
  saved_tensor_hooks_stack().push_back(factory);
}

/// Closes `factory`; it is the innermost scope unless scopes were closed out of order, in which
/// case it is removed wherever it is (a destructor must not throw).
inline void pop_saved_tensor_hooks(SavedTensorHooksFactory* factory) noexcept {
  auto& stack = saved_tensor_hooks_stack();
  if (!stack.empty() && stack.back() == factory) {
    stack.pop_back();
    return;
  }
  stack.erase(std::remove(stack.begin(), stack.end(), factory), stack.end());
}

}  // namespace detail

/// Number of saved-tensor hook scopes open on the calling thread.
inline std::size_t saved_tensor_hooks_depth() { return detail::saved_tensor_hooks_stack().size(); }

/// For its lifetime, every tensor autograd saves on this thread is passed to `pack`, and what
/// pack returned is kept instead of the tensor; backward gets the tensor back from `unpack`.
/// `pack`: `const at::Tensor& -> P` for any copyable or movable P; `unpack`: `P& -> at::Tensor`
/// (called once per use of the saved tensor; it must return a tensor with the original's size,
/// dtype and device, as in PyTorch).
template <class Pack, class Unpack>
class SavedTensorHooks {
 public:
  using Packed = std::decay_t<std::invoke_result_t<Pack&, const at::Tensor&>>;
  static_assert(std::is_invocable_r_v<at::Tensor, Unpack&, Packed&>,
                "actckpt::SavedTensorHooks: unpack must take what pack returns and give back an at::Tensor");

  SavedTensorHooks(Pack pack, Unpack unpack)
      : factory_(std::make_shared<Callables>(Callables{std::move(pack), std::move(unpack)})) {
    detail::push_saved_tensor_hooks(&factory_);
  }
  ~SavedTensorHooks() { detail::pop_saved_tensor_hooks(&factory_); }
  SavedTensorHooks(const SavedTensorHooks&) = delete;
  SavedTensorHooks& operator=(const SavedTensorHooks&) = delete;

 private:
  struct Callables {
    Pack pack;
    Unpack unpack;
  };

  // One per saved tensor; keeps the callables alive as long as the saved tensor lives.
  class Hooks final : public torch::autograd::SavedVariableHooks {
   public:
    explicit Hooks(std::shared_ptr<Callables> callables) : callables_(std::move(callables)) {}
    void call_pack_hook(const at::Tensor& tensor) override { packed_.emplace(callables_->pack(tensor)); }
    at::Tensor call_unpack_hook() override {
      ACTCKPT_CHECK(packed_.has_value(), UsageError, "actckpt: a saved tensor was unpacked, but its pack hook never returned");
      return callables_->unpack(*packed_);
    }

   private:
    std::shared_ptr<Callables> callables_;
    std::optional<Packed> packed_;
  };

  class Factory final : public detail::SavedTensorHooksFactory {
   public:
    explicit Factory(std::shared_ptr<Callables> callables) : callables_(std::move(callables)) {}
    std::unique_ptr<torch::autograd::SavedVariableHooks> make() override { return std::make_unique<Hooks>(callables_); }

   private:
    std::shared_ptr<Callables> callables_;
  };

  Factory factory_;
};

}  // namespace actckpt
