// The divergences from the unwrapped model that a differential fuzz found (issue 21), one case
// each, in both checkpoint forms and every policy: what the non-reentrant form (the default)
// does, and what the reentrant form keeps (README "What is bitwise", docs/pitfalls.md#p17).
// The forms are chosen explicitly here (NonReentrant<P>, Reentrant<P>), so both runs of this
// file (unit.divergences, unit.divergences.reentrant) check both forms.

#include "reliability_models.hpp"

#include <functional>
#include <optional>
#include <string>

using namespace reliability;

namespace {

/// Reads its input twice (x * x and x @ W): its input gradient is a sum of two terms.
struct ReadsTwiceImpl : torch::nn::Module {
  explicit ReadsTwiceImpl(int64_t n) { weight = register_parameter("weight", torch::randn({n, n}, test_device::options()) * 0.3); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) { return torch::tanh(x * x + x.matmul(weight)); }
  torch::Tensor weight;
};
TORCH_MODULE(ReadsTwice);

/// Two inputs; uses the second only when asked.
struct TwoInputsImpl : torch::nn::Module {
  TwoInputsImpl(int64_t n, bool use_second) : use_second(use_second) {
    weight = register_parameter("weight", torch::randn({n, n}, test_device::options()) * 0.3);
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor a, torch::Tensor b) {
    auto h = a.matmul(weight);
    return use_second ? h * b : h;
  }
  bool use_second;
  torch::Tensor weight;
};
TORCH_MODULE(TwoInputs);

/// Ends in a view of its result (t()).
struct ViewOutputImpl : torch::nn::Module {
  explicit ViewOutputImpl(int64_t n) { weight = register_parameter("weight", torch::randn({n, n}, test_device::options()) * 0.3); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) { return x.matmul(weight).t(); }
  torch::Tensor weight;
};
TORCH_MODULE(ViewOutput);

/// Ends in tanh, whose backward reads its output.
struct TanhOutputImpl : torch::nn::Module {
  explicit TanhOutputImpl(int64_t n) { weight = register_parameter("weight", torch::randn({n, n}, test_device::options()) * 0.3); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) { return torch::tanh(x.matmul(weight)); }
  torch::Tensor weight;
};
TORCH_MODULE(TanhOutput);

/// Adds its bias in place to a view of an intermediate (the reentrant form's doubled gradient).
struct BiasIntoViewImpl : torch::nn::Module {
  explicit BiasIntoViewImpl(int64_t n) : n(n) { bias = register_parameter("bias", torch::randn({n}, test_device::options()) * 0.1); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto h = x.tanh().reshape({-1}).view({n, n});  // x transposed: reshape copies, view aliases the copy
    h.add_(bias);
    return h.tanh();
  }
  int64_t n;
  torch::Tensor bias;
};
TORCH_MODULE(BiasIntoView);

/// Sensitive to its input's layout: records the strides it sees (forward and recompute), and
/// `.contiguous()` copies only when the input is not contiguous.
struct LayoutProbeImpl : torch::nn::Module {
  explicit LayoutProbeImpl(int64_t channels) {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, channels, 3).padding(1)));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) {
    seen_strides.push_back(x.strides().vec());
    auto y = x.dim() == 4 ? conv(x) : x.contiguous().matmul(x.t().contiguous());
    return torch::tanh(y);
  }
  torch::nn::Conv2d conv{nullptr};
  std::vector<std::vector<int64_t>> seen_strides;
};
TORCH_MODULE(LayoutProbe);

/// The outcome of one step: gradients (parameters by name, then the leaves) or the error.
struct Step {
  std::map<std::string, torch::Tensor> grads;
  std::optional<std::string> error;
};

/// Runs `body` (which builds the loss from fresh leaves and returns it with the leaves whose
/// gradients count) and collects the gradients of `module`'s parameters and those leaves.
Step step(torch::nn::Module& module, const std::function<std::pair<torch::Tensor, std::vector<torch::Tensor>>()>& body) {
  Step s;
  for (auto& p : module.parameters()) p.mutable_grad().reset();
  try {
    auto [loss, leaves] = body();
    loss.backward();
    s.grads = take_grads(module);
    for (std::size_t i = 0; i < leaves.size(); ++i)
      s.grads["<leaf " + std::to_string(i) + ">"] = leaves[i].grad().defined() ? leaves[i].grad().clone() : torch::Tensor();
  } catch (const c10::Error& e) {  // autograd's own errors
    s.error = e.what_without_backtrace();
  } catch (const std::exception& e) {  // actckpt::Error and others
    s.error = e.what();
  }
  for (auto& p : module.parameters()) p.mutable_grad().reset();
  return s;
}

void check_same(const Step& actual, const Step& expected) {
  REQUIRE_MESSAGE(!expected.error, "the unwrapped step raised: ", expected.error.value_or(""));
  REQUIRE_MESSAGE(!actual.error, "the wrapped step raised: ", actual.error.value_or(""));
  check_grads_bitwise(actual.grads, expected.grads);
}

/// Same values within a few roundings of each gradient's largest element.
void check_close(const Step& actual, const Step& expected) {
  REQUIRE(!expected.error);
  REQUIRE(!actual.error);
  for (const auto& [name, e] : expected.grads) {
    CAPTURE(name);
    const auto& a = actual.grads.at(name);
    REQUIRE(a.defined() == e.defined());
    if (!e.defined()) continue;
    const double scale = e.abs().max().item<double>();
    CHECK(max_abs_diff(a, e) <= 64 * std::ldexp(1.0, -23) * scale);
  }
}

bool error_contains(const std::optional<std::string>& error, const char* text) {
  return error && error->find(text) != std::string::npos;
}

template <class Policy, class Layer>
actckpt::Checkpointed<Layer, Policy> wrapped(Layer layer, const IsolatedOffload& iso) {
  actckpt::Checkpointed<Layer, Policy> w(layer);
  w->set_offload_context(iso.context);
  w->set_label("probe");
  return w;
}

void check_nothing_left(const IsolatedOffload& iso) {
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.context->stack().size() == 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

constexpr int64_t n = 6;

}  // namespace

#define ACTCKPT_EVERY_POLICY actckpt::NoOffload, actckpt::SyncOffload, actckpt::AsyncOffload

TEST_CASE_TEMPLATE("divergence 1, summation order: a tensor used inside a layer and outside it", Policy, ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  IsolatedOffload iso;
  torch::manual_seed(1);
  ReadsTwice layer(n);
  const auto values = torch::randn({n, n}, test_device::options());
  auto non_reentrant = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
  auto reentrant = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
  // Three shapes: a residual around the layer, the layer applied twice, one tensor passed twice.
  const std::vector<std::pair<const char*, std::function<torch::Tensor(std::function<torch::Tensor(torch::Tensor)>, torch::Tensor)>>>
      shapes = {{"residual", [](auto f, torch::Tensor x) { return f(x) + x; }},
                {"applied twice", [](auto f, torch::Tensor x) { return f(f(x)) + x; }},
                {"residual twice", [](auto f, torch::Tensor x) { return f(f(x) + x) + x; }}};
  for (const auto& [name, shape] : shapes) {
    CAPTURE(name);
    auto run = [&](std::function<torch::Tensor(torch::Tensor)> f) {
      return step(*layer, [&] {
        auto x = values.clone().requires_grad_(true);
        return std::pair{weighted_loss(shape(f, x)), std::vector<torch::Tensor>{x}};
      });
    };
    const auto expected = run([&](torch::Tensor x) { return layer(x); });
    check_same(run([&](torch::Tensor x) { return non_reentrant(x); }), expected);  // removed: bitwise
    check_close(run([&](torch::Tensor x) { return reentrant(x); }), expected);     // remains: roundings
  }
  // One tensor passed as both arguments.
  TwoInputs two(n, /*use_second=*/true);
  auto two_nr = wrapped<actckpt::NonReentrant<Policy>>(two, iso);
  auto two_r = wrapped<actckpt::Reentrant<Policy>>(two, iso);
  auto run = [&](std::function<torch::Tensor(torch::Tensor, torch::Tensor)> f) {
    return step(*two, [&] {
      auto x = values.clone().requires_grad_(true);
      return std::pair{weighted_loss(f(x, x) + x), std::vector<torch::Tensor>{x}};
    });
  };
  const auto expected = run([&](torch::Tensor a, torch::Tensor b) { return two(a, b); });
  check_same(run([&](torch::Tensor a, torch::Tensor b) { return two_nr(a, b); }), expected);
  check_close(run([&](torch::Tensor a, torch::Tensor b) { return two_r(a, b); }), expected);
  check_nothing_left(iso);
}

TEST_CASE_TEMPLATE("divergence 2, layout: a stash comes back with the layout it left with", Policy, ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  for (const char* layout : {"transposed", "sliced", "expanded", "expanded then materialized", "channels last"}) {
    CAPTURE(layout);
    IsolatedOffload iso;
    torch::manual_seed(2);
    const bool four_d = std::string(layout) == "channels last";
    LayoutProbe layer(3);
    torch::Tensor values = four_d ? torch::randn({2, 3, 5, 5}, test_device::options()) : std::string(layout) == "sliced" ? torch::randn({n, n + 3}, test_device::options())
                           : std::string(layout).rfind("expanded", 0) == 0 ? torch::randn({1, n}, test_device::options()) : torch::randn({n, n}, test_device::options());
    auto make_input = [&](const torch::Tensor& leaf) {
      const std::string l = layout;
      if (l == "transposed") return leaf.t();
      if (l == "sliced") return leaf.narrow(1, 2, n);
      if (l == "expanded") return leaf.expand({n, n});
      if (l == "expanded then materialized") return leaf.expand({n, n}).contiguous();
      return leaf.contiguous(at::MemoryFormat::ChannelsLast);
    };
    auto run = [&](std::function<torch::Tensor(torch::Tensor)> f) {
      return step(*layer, [&] {
        auto leaf = values.clone().requires_grad_(true);
        return std::pair{weighted_loss(f(make_input(leaf))), std::vector<torch::Tensor>{leaf}};
      });
    };
    const auto expected = run([&](torch::Tensor x) { return layer(x); });
    const auto original_strides = layer->seen_strides.back();
    for (bool reentrant : {false, true}) {
      CAPTURE(reentrant);
      layer->seen_strides.clear();
      Step actual;
      if (reentrant) {
        auto w = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
        actual = run([&](torch::Tensor x) { return w(x); });
      } else {
        auto w = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
        actual = run([&](torch::Tensor x) { return w(x); });
      }
      check_same(actual, expected);
      // The forward and the recompute saw the caller's strides (an expanded input keeps its
      // stride 0: it is stashed unexpanded and expanded again).
      REQUIRE(layer->seen_strides.size() == 2);
      CHECK(layer->seen_strides[0] == original_strides);
      CHECK(layer->seen_strides[1] == original_strides);
      check_nothing_left(iso);
    }
  }
}

TEST_CASE_TEMPLATE("divergence 3: changing a layer's view output in place", Policy, ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  IsolatedOffload iso;
  torch::manual_seed(3);
  ViewOutput layer(n);
  const auto values = torch::randn({n, n}, test_device::options());
  auto run = [&](std::function<torch::Tensor(torch::Tensor)> f) {
    return step(*layer, [&] {
      auto x = values.clone().requires_grad_(true);
      auto y = f(x);
      y.mul_(2.0);  // nothing autograd saved: the unwrapped layer allows it
      y += x;
      return std::pair{weighted_loss(y), std::vector<torch::Tensor>{x}};
    });
  };
  const auto expected = run([&](torch::Tensor x) { return layer(x); });
  auto nr = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
  check_same(run([&](torch::Tensor x) { return nr(x); }), expected);  // removed
  auto r = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
  const auto reentrant = run([&](torch::Tensor x) { return r(x); });
  CHECK(error_contains(reentrant.error, "is a view and is being modified inplace"));  // remains: an error
  check_nothing_left(iso);
}

TEST_CASE_TEMPLATE("divergence 4: changing in place an output that autograd saved", Policy, ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  IsolatedOffload iso;
  torch::manual_seed(4);
  TanhOutput layer(n);
  const auto values = torch::randn({n, n}, test_device::options());
  auto run = [&](std::function<torch::Tensor(torch::Tensor)> f) {
    return step(*layer, [&] {
      auto x = values.clone().requires_grad_(true);
      auto y = f(x);
      y.mul_(0.5);
      return std::pair{weighted_loss(y), std::vector<torch::Tensor>{x}};
    });
  };
  const auto expected = run([&](torch::Tensor x) { return layer(x); });
  REQUIRE(error_contains(expected.error, "modified by an inplace operation"));
  auto nr = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
  CHECK(error_contains(run([&](torch::Tensor x) { return nr(x); }).error, "modified by an in-place operation"));  // removed
  // Remains in the reentrant form: the forward saved nothing, the recompute makes its own tanh
  // output, so nothing stops the step. Its gradient is that of the function with the recompute's
  // (unchanged) output, i.e. what the unwrapped layer would give without the in-place change.
  auto r = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
  const auto reentrant = run([&](torch::Tensor x) { return r(x); });
  CHECK(!reentrant.error);
  // That gradient: the unwrapped layer's with the change made out of place (y * 0.5).
  const auto out_of_place = step(*layer, [&] {
    auto x = values.clone().requires_grad_(true);
    auto y = layer(x) * 0.5;
    return std::pair{weighted_loss(y), std::vector<torch::Tensor>{x}};
  });
  check_same(reentrant, out_of_place);
  check_nothing_left(iso);
}

TEST_CASE_TEMPLATE("divergence 5: an input the layer does not use, from a producer whose saved output changed", Policy,
                   ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  IsolatedOffload iso;
  torch::manual_seed(5);
  TwoInputs layer(n, /*use_second=*/false);
  const auto values = torch::randn({n, n}, test_device::options());
  for (bool changed_after_the_call : {false, true}) {
    CAPTURE(changed_after_the_call);
    auto run = [&](std::function<torch::Tensor(torch::Tensor, torch::Tensor)> f) {
      return step(*layer, [&] {
        auto x = values.clone().requires_grad_(true);
        auto w = values.clone().requires_grad_(true);
        auto side = w.exp();  // exp's backward reads its output
        if (!changed_after_the_call) side.mul_(2.0);
        auto y = f(x, side);
        if (changed_after_the_call) side.mul_(2.0);
        return std::pair{weighted_loss(y), std::vector<torch::Tensor>{x, w}};
      });
    };
    const auto expected = run([&](torch::Tensor a, torch::Tensor b) { return layer(a, b); });
    auto nr = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
    const auto non_reentrant = run([&](torch::Tensor a, torch::Tensor b) { return nr(a, b); });
    if (!changed_after_the_call || Policy::options().mode == actckpt::StashMode::sync_host) {
      check_same(non_reentrant, expected);  // removed (a sync stash is its own copy of the input)
    } else {
      // Both forms, documented: the stash *is* the caller's tensor (or an async copy that may
      // read the change), and actckpt cannot tell whether the layer reads it: it raises rather
      // than recompute from changed values.
      CHECK(error_contains(non_reentrant.error, "was modified in place after the forward stashed it"));
    }
    auto r = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
    const auto reentrant = run([&](torch::Tensor a, torch::Tensor b) { return r(a, b); });
    // Remains in the reentrant form: its node has an edge to every input that requires grad,
    // so backward reaches exp and its changed output.
    CHECK((error_contains(reentrant.error, "modified by an inplace operation") ||
           error_contains(reentrant.error, "was modified in place after the forward stashed it")));
  }
  check_nothing_left(iso);
}

TEST_CASE_TEMPLATE("the reentrant form refuses to double a parameter's gradient", Policy, ACTCKPT_EVERY_POLICY) {
  SingleIntraOpThread one_thread;
  IsolatedOffload iso;
  torch::manual_seed(6);
  BiasIntoView layer(n);
  const auto values = torch::randn({n, n}, test_device::options());
  auto run = [&](std::function<torch::Tensor(torch::Tensor)> f) {
    return step(*layer, [&] {
      auto leaf = values.clone().requires_grad_(true);
      return std::pair{weighted_loss(f(leaf.t())), std::vector<torch::Tensor>{leaf}};
    });
  };
  const auto expected = run([&](torch::Tensor x) { return layer(x); });
  auto nr = wrapped<actckpt::NonReentrant<Policy>>(layer, iso);
  check_same(run([&](torch::Tensor x) { return nr(x); }), expected);
  auto r = wrapped<actckpt::Reentrant<Policy>>(layer, iso);
  const auto reentrant = run([&](torch::Tensor x) { return r(x); });
  // LibTorch 1.13 doubles it (actckpt raises); 2.15 does not (the gradients are right). Never a
  // doubled gradient in silence.
  if (reentrant.error) {
    CHECK(error_contains(reentrant.error, "its gradient twice"));
  } else {
    MESSAGE("this LibTorch gives the reentrant recompute's parameter gradient once: checked equal");
    check_close(reentrant, expected);
  }
  check_nothing_left(iso);
}
