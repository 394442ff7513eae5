#pragma once
// Small models that exercise each kind of layer signature, plus helpers that run a model with and
// without checkpointing and compare gradients bitwise.

#include <actckpt/actckpt.hpp>
#include <actckpt/models/transformer.hpp>
#include "test_device.hpp"
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

namespace test_models {

/// Linear, GELU, Dropout, Linear with a residual.
struct MlpBlockImpl : torch::nn::Cloneable<MlpBlockImpl> {
  MlpBlockImpl(int64_t dim, int64_t hidden, double dropout = 0.0) : dim_(dim), hidden_(hidden), dropout_(dropout) {
    reset();
  }
  void reset() override {
    fc1 = register_module("fc1", torch::nn::Linear(dim_, hidden_));
    fc2 = register_module("fc2", torch::nn::Linear(hidden_, dim_));
    drop = register_module("drop", torch::nn::Dropout(dropout_));
    to(test_device::device());
  }
  int64_t dim_, hidden_;
  double dropout_;
  torch::Tensor forward(torch::Tensor x) { return x + fc2(drop(torch::gelu(fc1(x)))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(MlpBlock);

/// Two tensor inputs (x and a mask) and a non-tensor flag.
struct MaskedBlockImpl : torch::nn::Module {
  explicit MaskedBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, bool invert) {
    auto m = invert ? 1.0 - mask : mask;
    return torch::tanh(fc(x)) * m + x;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(MaskedBlock);

/// A random leaf tensor that requires grad, on the test device.
inline torch::Tensor leaf(at::IntArrayRef sizes) { return torch::randn(sizes, test_device::options().requires_grad(true)); }

/// A layer whose recompute does not match its forward: from its second call on it returns
/// another output shape (and saves as many tensors, of other shapes). The reentrant form sees
/// another output, the non-reentrant one other saved tensors.
struct ChangingBlockImpl : torch::nn::Module {
  explicit ChangingBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto y = fc(x);
    if (calls++ == 0) return torch::tanh(y) * y;
    return torch::tanh(y.narrow(0, 0, 2)) * y.narrow(0, 0, 2);
  }
  torch::nn::Linear fc{nullptr};
  int calls = 0;
};
TORCH_MODULE(ChangingBlock);

/// Two outputs, plus a non-differentiable integer output and a non-tensor member.
struct TwoOutputBlockImpl : torch::nn::Module {
  explicit TwoOutputBlockImpl(int64_t dim) {
    a = register_module("a", torch::nn::Linear(dim, dim));
    b = register_module("b", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor, int64_t> forward(torch::Tensor x) {
    auto ya = torch::relu(a(x));
    auto yb = torch::sigmoid(b(x));
    return {ya, yb, ya.argmax(-1), x.size(0)};
  }
  torch::nn::Linear a{nullptr}, b{nullptr};
};
TORCH_MODULE(TwoOutputBlock);

/// An output that the layer detaches: it carries no gradient with or without the wrapper.
struct DetachingBlockImpl : torch::nn::Module {
  explicit DetachingBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  std::vector<torch::Tensor> forward(torch::Tensor x) {
    auto y = fc(x);
    return {y, (y * 2).detach()};
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(DetachingBlock);

/// BatchNorm: running statistics are buffers updated in train-mode forward.
struct BatchNormBlockImpl : torch::nn::Module {
  explicit BatchNormBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    bn = register_module("bn", torch::nn::BatchNorm1d(dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) { return torch::relu(bn(fc(x))); }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(BatchNormBlock);

/// Throws when told to: in its forward pass (every call, or only the k-th: `fail_forward_call`
/// counts forward calls 1, 2, ...; 0 = never), or only when recomputing (`actckpt::recomputing()`
/// tells them apart in either checkpoint form). Tests that nothing leaks when a layer fails.
struct FaultyBlockImpl : torch::nn::Module {
  explicit FaultyBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) {
    const bool recomputing = actckpt::recomputing();
    if (!recomputing) {
      ++forward_calls;
      if (fail_every_forward) throw std::runtime_error("injected forward failure");
      if (forward_calls == fail_forward_call)
        throw std::runtime_error("injected forward failure in step " + std::to_string(forward_calls));
    }
    if (recomputing && fail_recompute) throw std::runtime_error("injected recompute failure");
    return torch::relu(fc(x)) + x;
  }
  /// Faults off.
  void heal() {
    fail_every_forward = false;
    fail_forward_call = 0;
    fail_recompute = false;
  }
  torch::nn::Linear fc{nullptr};
  int forward_calls = 0;
  bool fail_every_forward = false;
  int fail_forward_call = 0;
  bool fail_recompute = false;
};
TORCH_MODULE(FaultyBlock);

/// Returns a different shape on its second call: a recompute that does not match the forward.
struct ShapeShiftingBlockImpl : torch::nn::Module {
  explicit ShapeShiftingBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) {
    auto y = fc(x);
    return (calls++ % 2 == 0) ? y : y.narrow(0, 0, 1);
  }
  torch::nn::Linear fc{nullptr};
  int calls = 0;
};
TORCH_MODULE(ShapeShiftingBlock);

/// Gradients of every parameter, cloned, then cleared.
inline std::vector<torch::Tensor> take_grads(torch::nn::Module& m) {
  std::vector<torch::Tensor> grads;
  for (auto& p : m.parameters()) {
    grads.push_back(p.grad().defined() ? p.grad().clone() : torch::Tensor());
    p.mutable_grad().reset();
  }
  return grads;
}

/// What README and docs call "bitwise": the same definedness, shape and dtype, and the same bytes
/// element by element (in logical order, whatever the strides). Unlike torch::equal this tells
/// -0.0 from +0.0 and one NaN payload from another. The one helper every bitwise claim of the
/// suite goes through.
inline bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  if (a.numel() == 0) return true;
  auto bytes = [](const torch::Tensor& t) { return t.detach().cpu().contiguous().view({-1}).view(torch::kByte); };
  return torch::equal(bytes(a), bytes(b));
}

/// Bitwise equality (bitwise_equal) of two gradient lists (both undefined counts as equal).
inline void check_bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    REQUIRE(a[i].defined() == b[i].defined());
    if (a[i].defined()) CHECK(bitwise_equal(a[i], b[i]));
  }
}

/// True when layers checkpointed with `Policy` use the non-reentrant form in this process (the
/// unit tests run once per form: ACTCKPT_CHECKPOINT_FORM sets the default).
template <class Policy>
bool non_reentrant_form() {
  return actckpt::resolve(Policy::options().form) == actckpt::CheckpointForm::non_reentrant;
}

/// A private pool (of `limit` bytes) and context, so a test's byte counts are its own.
struct IsolatedOffload {
  explicit IsolatedOffload(std::size_t limit = std::size_t{1} << 30)
      : pool(actckpt::HostBufferPool::create(limit)), context(actckpt::OffloadContext::create(pool)) {}
  std::shared_ptr<actckpt::HostBufferPool> pool;
  std::shared_ptr<actckpt::OffloadContext> context;
};

/// Waits (bounded) until the context's copy worker has finished every queued copy: a stash
/// destroyed while its copy was queued returns its host buffer only when that copy is done.
inline bool wait_until_idle(actckpt::OffloadContext& context, std::chrono::milliseconds limit = std::chrono::seconds(10)) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (context.engine().pending() != 0) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  return true;
}

/// Runs `layers` as a chain on x; returns the output.
template <class L>
torch::Tensor chain(std::vector<L>& layers, torch::Tensor x) {
  for (auto& l : layers) x = l(x);
  return x;
}

/// Wraps each layer in Checkpointed<Layer, Policy> on the isolated context, labelled by index.
template <class Policy, class Layer>
std::vector<actckpt::Checkpointed<Layer, Policy>> wrap_stack(std::vector<Layer>& layers, const IsolatedOffload& iso) {
  std::vector<actckpt::Checkpointed<Layer, Policy>> wrapped;
  for (std::size_t i = 0; i < layers.size(); ++i) {
    wrapped.emplace_back(layers[i]);
    wrapped.back()->set_offload_context(iso.context);
    wrapped.back()->set_label(std::to_string(i));
  }
  return wrapped;
}

/// Records observer events (kind, label, bytes and the emitting thread) in order.
struct EventLog : actckpt::Observer {
  struct Entry {
    actckpt::EventKind kind;
    std::string label;
    std::int64_t bytes;
    std::thread::id thread;
  };
  void on_event(const actckpt::Event& e) override {
    std::lock_guard<std::mutex> lock(mutex);
    entries.push_back({e.kind, std::string(e.label), e.bytes, std::this_thread::get_id()});
  }
  std::vector<Entry> snapshot() {
    std::lock_guard<std::mutex> lock(mutex);
    return entries;
  }
  /// The events of one kind, in order.
  std::vector<Entry> of(actckpt::EventKind kind) {
    std::vector<Entry> out;
    for (auto& e : snapshot())
      if (e.kind == kind) out.push_back(e);
    return out;
  }
  /// Position of the first event of `kind` for `label`, or -1.
  long index_of(actckpt::EventKind kind, const std::string& label) {
    auto all = snapshot();
    for (std::size_t i = 0; i < all.size(); ++i)
      if (all[i].kind == kind && all[i].label == label) return static_cast<long>(i);
    return -1;
  }
  std::mutex mutex;
  std::vector<Entry> entries;
};

/// Gradients of `tensors`, cloned, then cleared.
inline std::vector<torch::Tensor> take_grads(const std::vector<torch::Tensor>& tensors) {
  std::vector<torch::Tensor> out;
  for (auto t : tensors) {
    out.push_back(t.grad().defined() ? t.grad().clone() : torch::Tensor());
    t.mutable_grad().reset();
  }
  return out;
}

}  // namespace test_models

/// The policies of the non-reentrant cases, each pinned to that form whatever the process default.
#define NR_POLICIES                                                                                   \
  actckpt::NonReentrant<actckpt::NoOffload>, actckpt::NonReentrant<actckpt::SyncOffload>,          \
      actckpt::NonReentrant<actckpt::AsyncOffload>
