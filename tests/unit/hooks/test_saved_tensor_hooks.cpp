// actckpt::SavedTensorHooks, the C++ saved_tensors_hooks: every saved tensor goes through pack and
// unpack, gradients are bitwise those without hooks, scopes nest and are per thread, unpack works
// after the scope closed and more than once (retain_graph), double backward works, and a foreign
// engine gives a clear error instead of silently ignored hooks.

#include <actckpt/hooks/saved_tensor_hooks.hpp>

#include <map>

#include "test_models.hpp"

namespace {

/// A small graph with several saved tensors (mm saves both operands, tanh its result).
torch::Tensor small_graph(const torch::Tensor& x, const torch::Tensor& w) { return torch::tanh(x.mm(w)).pow(2).sum(); }

/// Counts packs and unpacks; stores the tensor detached (the tensor itself, with its history,
/// would be a reference cycle for an output saved by its own node: see saved_tensor_hooks.hpp).
struct Counter {
  std::atomic<int> packs{0}, unpacks{0};
  auto pack() {
    return [this](const at::Tensor& t) {
      ++packs;
      return t.detach();
    };
  }
  auto unpack() {
    return [this](const at::Tensor& t) {
      ++unpacks;
      return t;
    };
  }
};

/// An engine that is neither LibTorch's base engine nor actckpt's (as PyTorch's Python engine).
struct ForeignEngine : torch::autograd::Engine {
  static torch::autograd::Engine& stub() {
    static ForeignEngine engine;
    return engine;
  }
  ~ForeignEngine() override { stop(); }
};

}  // namespace

TEST_CASE("saved-tensor hooks: actckpt's engine is LibTorch's default from startup, inert without a scope" * test_device::no_tensors()) {
  CHECK(&torch::autograd::Engine::get_default_engine() == &actckpt::detail::HooksEngine::instance());
  CHECK(actckpt::saved_tensor_hooks_depth() == 0);
  CHECK(torch::autograd::Engine::get_default_engine().get_default_saved_variable_hooks() == nullptr);
}

TEST_CASE("saved-tensor hooks: every saved tensor is packed and unpacked, gradients bitwise unchanged") {
  torch::manual_seed(0);
  auto x = torch::randn({4, 5}, test_device::options().requires_grad(true));
  auto w = torch::randn({5, 3}, test_device::options().requires_grad(true));
  small_graph(x, w).backward();
  auto gx = x.grad().clone(), gw = w.grad().clone();
  x.mutable_grad().reset();
  w.mutable_grad().reset();

  Counter c;
  torch::Tensor loss;
  {
    actckpt::SavedTensorHooks hooks(c.pack(), c.unpack());
    CHECK(actckpt::saved_tensor_hooks_depth() == 1);
    loss = small_graph(x, w);
  }
  CHECK(actckpt::saved_tensor_hooks_depth() == 0);
  CHECK(c.packs == 4);  // x and w (mm), tanh's result, pow's input
  CHECK(c.unpacks == 0);
  loss.backward();  // after the scope closed
  CHECK(c.unpacks == 4);
  CHECK(test_models::bitwise_equal(x.grad(), gx));
  CHECK(test_models::bitwise_equal(w.grad(), gw));
}

TEST_CASE("saved-tensor hooks: what pack returns replaces the tensor (a CPU copy in a string-keyed store)") {
  auto x = torch::randn({6}, test_device::options().requires_grad(true));
  std::map<int, at::Tensor> store;
  int next = 0;
  torch::Tensor y;
  {
    actckpt::SavedTensorHooks hooks(
        [&](const at::Tensor& t) {
          store[next] = t.clone();
          return next++;
        },
        [&](int key) { return store.at(key); });
    y = (x * x).sum();
  }
  CHECK(next == 2);  // mul saves both operands
  // Backward must use what unpack returns, not the tensors autograd was given: change the stored
  // copies (x itself is untouched) and the gradient follows them, 3x + 3x instead of 2x.
  for (auto& [key, saved] : store) saved.mul_(3.0);
  y.backward();
  const auto tripled = x.detach() * 3.0;
  CHECK(test_models::bitwise_equal(x.grad(), tripled + tripled));
}

TEST_CASE("saved-tensor hooks: nested scopes, the innermost applies; per thread") {
  auto x = torch::randn({3}, test_device::options().requires_grad(true));
  Counter outer, inner, other;
  {
    actckpt::SavedTensorHooks a(outer.pack(), outer.unpack());
    auto y1 = x.exp();  // outer
    {
      actckpt::SavedTensorHooks b(inner.pack(), inner.unpack());
      CHECK(actckpt::saved_tensor_hooks_depth() == 2);
      auto y2 = x.exp();  // inner only
      std::thread t([&] {
        CHECK(actckpt::saved_tensor_hooks_depth() == 0);
        auto y3 = x.exp();  // another thread: none of this thread's scopes
        actckpt::SavedTensorHooks c(other.pack(), other.unpack());
        auto y4 = x.exp();
        y4.sum().backward();
      });
      t.join();
    }
    auto y5 = x.exp();  // outer again
  }
  CHECK(outer.packs == 2);
  CHECK(inner.packs == 1);
  CHECK(other.packs == 1);
  CHECK(other.unpacks == 1);
}

TEST_CASE("saved-tensor hooks: retain_graph unpacks again; double backward through hooked tensors works") {
  auto x = torch::randn({5}, test_device::options().requires_grad(true));
  Counter c;
  torch::Tensor y;
  {
    actckpt::SavedTensorHooks hooks(c.pack(), c.unpack());
    y = (x * x * x).sum();
  }
  const int packed = c.packs;
  auto g = torch::autograd::grad({y}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  CHECK(c.unpacks == packed);
  CHECK(torch::allclose(g, 3 * x * x));
  auto gg = torch::autograd::grad({g.sum()}, {x}, {}, /*retain_graph=*/true)[0];
  CHECK(torch::allclose(gg, 6 * x));
  y.backward();  // retained: unpacked a second time
  CHECK(c.unpacks >= 2 * packed);
  CHECK(torch::allclose(x.grad(), 3 * x * x));
}

TEST_CASE("saved-tensor hooks: a foreign engine as the default is a clear error, never silently ignored hooks") {
  torch::autograd::set_default_engine_stub(&ForeignEngine::stub);
  Counter c;
  std::string message;
  try {
    actckpt::SavedTensorHooks hooks(c.pack(), c.unpack());
  } catch (const actckpt::UsageError& e) {
    message = e.what();
  }
  // Back to actckpt's engine before any CHECK can leave the case.
  torch::autograd::set_default_engine_stub(&actckpt::detail::HooksEngine::stub);
  CHECK(message.find("another engine is LibTorch's default") != std::string::npos);
  CHECK(message.find("Python") != std::string::npos);
  CHECK(actckpt::saved_tensor_hooks_depth() == 0);
  actckpt::SavedTensorHooks hooks(c.pack(), c.unpack());  // works again
  auto x = torch::randn({2}, test_device::options().requires_grad(true));
  x.exp().sum().backward();
  CHECK(c.packs == 1);
}
