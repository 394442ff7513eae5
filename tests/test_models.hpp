#pragma once
// Small models that exercise each kind of layer signature, plus helpers that run a model with and
// without checkpointing and compare gradients bitwise.

#include <actckpt/actckpt.hpp>
#include <actckpt/models/transformer.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <string>
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
  explicit MaskedBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); }
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask, bool invert) {
    auto m = invert ? 1.0 - mask : mask;
    return torch::tanh(fc(x)) * m + x;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(MaskedBlock);

/// Two outputs, plus a non-differentiable integer output and a non-tensor member.
struct TwoOutputBlockImpl : torch::nn::Module {
  explicit TwoOutputBlockImpl(int64_t dim) {
    a = register_module("a", torch::nn::Linear(dim, dim));
    b = register_module("b", torch::nn::Linear(dim, dim));
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
  explicit DetachingBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); }
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
  }
  torch::Tensor forward(torch::Tensor x) { return torch::relu(bn(fc(x))); }
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(BatchNormBlock);

/// Throws when told to, in the forward pass, or only when recomputing (grad mode on inside a
/// checkpoint's backward), to test that nothing leaks.
struct FaultyBlockImpl : torch::nn::Module {
  explicit FaultyBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); }
  torch::Tensor forward(torch::Tensor x) {
    const bool recomputing = torch::GradMode::is_enabled();  // the wrapped forward runs with grad off
    if (throw_in_forward && !recomputing) throw std::runtime_error("injected forward failure");
    if (throw_in_recompute && recomputing) throw std::runtime_error("injected recompute failure");
    return torch::relu(fc(x)) + x;
  }
  torch::nn::Linear fc{nullptr};
  bool throw_in_forward = false;
  bool throw_in_recompute = false;
};
TORCH_MODULE(FaultyBlock);

/// Returns a different shape on its second call: a recompute that does not match the forward.
struct ShapeShiftingBlockImpl : torch::nn::Module {
  explicit ShapeShiftingBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); }
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

/// Bitwise equality of two gradient lists (both undefined counts as equal).
inline void check_bitwise_equal(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    REQUIRE(a[i].defined() == b[i].defined());
    if (a[i].defined()) CHECK(torch::equal(a[i], b[i]));
  }
}

/// A private pool and context, so a test's byte counts are its own.
struct IsolatedOffload {
  std::shared_ptr<actckpt::HostBufferPool> pool = actckpt::HostBufferPool::create(std::size_t{1} << 30);
  std::shared_ptr<actckpt::OffloadContext> context = actckpt::OffloadContext::create(pool);
};

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

/// Records observer events (kind + label) in order.
struct EventLog : actckpt::Observer {
  struct Entry {
    actckpt::EventKind kind;
    std::string label;
    std::int64_t bytes;
  };
  void on_event(const actckpt::Event& e) override {
    std::lock_guard<std::mutex> lock(mutex);
    entries.push_back({e.kind, std::string(e.label), e.bytes});
  }
  std::vector<Entry> snapshot() {
    std::lock_guard<std::mutex> lock(mutex);
    return entries;
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

}  // namespace test_models
