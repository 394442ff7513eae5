// The non-reentrant form (saved-tensor hooks), every policy, CPU float32 bitwise against the
// unwrapped layer: each behaviour of issue 15 that the reentrant form gets wrong or refuses,
// cases ported from PyTorch's own checkpoint tests (test/test_utils.py TestCheckpoint and the
// checkpoint tests of test/test_autograd.py), and nesting of both forms (the functional form:
// tests/unit/wrap/test_functional.cpp).

#include <map>

#include "test_models.hpp"

using namespace test_models;
using actckpt::Checkpointed;
using actckpt::NonReentrant;
using actckpt::Reentrant;


namespace {

/// Wraps `layer` with Policy on a private context.
template <class Policy, class Layer>
Checkpointed<Layer, Policy> wrap(Layer layer, const IsolatedOffload& iso, const std::string& label = "block") {
  Checkpointed<Layer, Policy> wrapped(layer);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label(label);
  return wrapped;
}


/// Uses a tensor it neither receives nor registers: a tied weight held by reference.
struct TiedBlockImpl : torch::nn::Module {
  TiedBlockImpl(int64_t dim, torch::Tensor tied) : tied(std::move(tied)) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) { return torch::tanh(fc(x)).mm(tied) + x.mm(tied.t()); }
  torch::nn::Linear fc{nullptr};
  torch::Tensor tied;  // not registered
};
TORCH_MODULE(TiedBlock);

/// Tensors inside a std::vector and a std::map argument.
struct ContainerBlockImpl : torch::nn::Module {
  explicit ContainerBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x, std::vector<torch::Tensor> extra, std::map<std::string, torch::Tensor> named) {
    auto y = torch::sigmoid(fc(x));
    for (const auto& e : extra) y = y * e;
    return y + named.at("bias").exp() * named.at("scale");
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(ContainerBlock);

/// Outputs that need no grad: the input passed through, and a value computed under NoGradGuard.
struct PassThroughBlockImpl : torch::nn::Module {
  explicit PassThroughBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> forward(torch::Tensor x) {
    torch::Tensor stats;
    {
      torch::NoGradGuard no_grad;
      stats = fc(x).mean(0);
    }
    return {torch::relu(fc(x)), x, stats};
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(PassThroughBlock);

/// Its recompute does other work than its forward: `mode` picks what the second call changes.
struct DriftingBlockImpl : torch::nn::Module {
  explicit DriftingBlockImpl(int64_t dim, int mode) : mode(mode) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    const bool again = calls++ % 2 == 1;
    auto y = fc(x);
    if (!again) return torch::tanh(y) * y;                      // saves tanh's result, y twice
    if (mode == 0) return torch::relu(y);                       // saves fewer tensors
    return torch::tanh(y.narrow(0, 0, 2)) * y.narrow(0, 0, 2);  // as many, other shapes
  }
  int mode;
  int calls = 0;
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(DriftingBlock);

/// Calls autograd inside its forward: a gradient between two of its tensors, and a tensor hook.
struct InnerGradBlockImpl : torch::nn::Module {
  explicit InnerGradBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto h = torch::tanh(fc(x));
    auto energy = (h * h).sum();
    // A "force" term: the gradient of an energy with respect to an intermediate, kept differentiable.
    auto force = torch::autograd::grad({energy}, {h}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    auto out = h + 0.5 * force;
    out.register_hook([this](const torch::Tensor& g) { hook_calls++; return g * 1.0; });
    return out;
  }
  torch::nn::Linear fc{nullptr};
  int hook_calls = 0;
};
TORCH_MODULE(InnerGradBlock);

/// Counts what runs before its last saving op (forward and recompute) and after it (early stop
/// skips that part in the recompute).
struct TailBlockImpl : torch::nn::Module {
  explicit TailBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    ++head_runs;
    auto y = torch::sigmoid(fc(x));  // the last op that saves a tensor
    ++tail_runs;
    return y.view({-1}).view(x.sizes());  // views save nothing
  }
  torch::nn::Linear fc{nullptr};
  int head_runs = 0, tail_runs = 0;
};
TORCH_MODULE(TailBlock);

/// A block holding a checkpointed block: nesting.
template <class Inner>
struct NestingBlockImpl : torch::nn::Module {
  explicit NestingBlockImpl(int64_t dim) {
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    inner = register_module("inner", Inner(MlpBlock(dim, 2 * dim)));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) { return torch::tanh(fc(inner(x))) * x; }
  torch::nn::Linear fc{nullptr};
  Inner inner{nullptr};
};
template <class Inner>
struct NestingBlock : torch::nn::ModuleHolder<NestingBlockImpl<Inner>> {
  using torch::nn::ModuleHolder<NestingBlockImpl<Inner>>::ModuleHolder;
};

}  // namespace

TEST_CASE_TEMPLATE("non-reentrant: a captured tensor (tied weight held by reference) gets its whole gradient", Policy,
                   NR_POLICIES) {
  torch::manual_seed(10);
  auto tied = torch::randn({16, 16}, test_device::options().requires_grad(true));
  TiedBlock block(16, tied);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  block(x).pow(2).sum().backward();
  auto ref = take_grads({x, tied});
  auto ref_p = take_grads(*block);
  wrapped(x).pow(2).sum().backward();
  check_bitwise_equal(take_grads({x, tied}), ref);
  check_bitwise_equal(take_grads(*block), ref_p);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

TEST_CASE_TEMPLATE("non-reentrant: tensors inside std::vector and std::map arguments get their gradients", Policy,
                   NR_POLICIES) {
  torch::manual_seed(11);
  ContainerBlock block(16);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  std::vector<torch::Tensor> extra{torch::rand({24, 16}, test_device::options().requires_grad(true)), torch::rand({16}, test_device::options().requires_grad(true))};
  std::map<std::string, torch::Tensor> named{{"bias", torch::randn({16}, test_device::options().requires_grad(true))},
                                             {"scale", torch::randn({24, 1}, test_device::options().requires_grad(true))}};
  const std::vector<torch::Tensor> all{x, extra[0], extra[1], named["bias"], named["scale"]};
  block(x, extra, named).pow(2).sum().backward();
  auto ref = take_grads(all);
  auto ref_p = take_grads(*block);
  wrapped(x, extra, named).pow(2).sum().backward();
  auto got = take_grads(all);
  for (const auto& g : got) REQUIRE(g.defined());
  check_bitwise_equal(got, ref);
  check_bitwise_equal(take_grads(*block), ref_p);
}

TEST_CASE_TEMPLATE("non-reentrant: outputs that need no grad stay so; backward from them raises as unwrapped", Policy,
                   NR_POLICIES) {
  torch::manual_seed(12);
  PassThroughBlock block(16);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto raw = torch::randn({24, 16}, test_device::options());  // does not require grad
  auto [ry, rx, rstats] = block(raw);
  auto [y, x, stats] = wrapped(raw);
  CHECK(y.requires_grad() == ry.requires_grad());
  CHECK(x.requires_grad() == rx.requires_grad());
  CHECK_FALSE(x.requires_grad());
  CHECK(stats.requires_grad() == rstats.requires_grad());
  CHECK_FALSE(stats.requires_grad());
  CHECK_THROWS_AS(stats.sum().backward(), c10::Error);  // as for the unwrapped layer's
  CHECK_THROWS_AS(rstats.sum().backward(), c10::Error);
  CHECK(test_models::bitwise_equal(stats, rstats));
  y.sum().backward();
  auto g = take_grads(*block);
  ry.sum().backward();
  check_bitwise_equal(g, take_grads(*block));
}

TEST_CASE_TEMPLATE("non-reentrant: a recompute that saves other tensors raises an error naming the layer", Policy,
                   NR_POLICIES) {
  for (int mode : {0, 1}) {
    CAPTURE(mode);
    torch::manual_seed(13);
    DriftingBlock block(16, mode);
    IsolatedOffload iso;
    auto wrapped = wrap<Policy>(block, iso, "drifter");
    auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
    auto y = wrapped(x);
    const std::string expected = mode == 0 ? "saved 3 tensors for backward, its forward saved 5" : "as [[2, 16]";
    CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("recompute of checkpointed layer 'drifter'"),
                         actckpt::RecomputeMismatch);
    y = torch::Tensor();
    CHECK(iso.pool->stats().live_bytes == 0);
    // The message says what differed.
    auto y2 = wrapped(x);
    std::string message;
    try {
      y2.sum().backward();
    } catch (const actckpt::RecomputeMismatch& e) {
      message = e.what();
      CHECK(e.layer() == "drifter");
    }
    CHECK(message.find(expected) != std::string::npos);
  }
}

TEST_CASE_TEMPLATE("non-reentrant: gradient penalty (create_graph, then backward through the gradient)", Policy,
                   NR_POLICIES) {
  torch::manual_seed(14);
  MlpBlock block(16, 32);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto run = [&](auto& module) {
    auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
    auto out = module(x);
    auto gx = torch::autograd::grad({out.pow(2).sum()}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true)[0];
    (out.sum() + gx.pow(2).sum()).backward();
    auto grads = take_grads(*block);
    grads.push_back(x.grad().clone());
    return grads;
  };
  torch::manual_seed(1);
  auto ref = run(block);
  torch::manual_seed(1);
  auto got = run(wrapped);
  for (const auto& g : got) REQUIRE(g.defined());
  check_bitwise_equal(got, ref);
}

TEST_CASE_TEMPLATE("non-reentrant: grad of grad (double backward) through the layer", Policy, NR_POLICIES) {
  torch::manual_seed(15);
  MlpBlock block(16, 32);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto second = [&](auto& module) {
    auto g = torch::autograd::grad({module(x).pow(3).sum()}, {x}, {}, true, true)[0];
    return torch::autograd::grad({g.sum()}, {x})[0];
  };
  CHECK(test_models::bitwise_equal(second(wrapped), second(block)));
}

TEST_CASE_TEMPLATE("non-reentrant: backward twice with retain_graph, as the unwrapped layer", Policy, NR_POLICIES) {
  torch::manual_seed(16);
  std::vector<MlpBlock> layers{MlpBlock(16, 32), MlpBlock(16, 32)};
  IsolatedOffload iso;
  std::vector<Checkpointed<MlpBlock, Policy>> wrapped{wrap<Policy>(layers[0], iso, "0"), wrap<Policy>(layers[1], iso, "1")};
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto twice = [&](auto& stack) {
    auto loss = chain(stack, x).pow(2).sum();
    loss.backward({}, /*retain_graph=*/true);
    loss.backward();
    auto g = take_grads({x});
    for (auto& l : layers)
      for (auto& t : take_grads(*l)) g.push_back(t);
    return g;
  };
  auto ref = twice(layers);
  check_bitwise_equal(twice(wrapped), ref);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("non-reentrant: autograd::grad and a tensor hook inside the layer's forward", Policy, NR_POLICIES) {
  torch::manual_seed(17);
  InnerGradBlock block(16);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  block(x).pow(2).sum().backward();
  auto ref = take_grads({x});
  auto ref_p = take_grads(*block);
  CHECK(block->hook_calls == 1);
  wrapped(x).pow(2).sum().backward();
  check_bitwise_equal(take_grads({x}), ref);
  check_bitwise_equal(take_grads(*block), ref_p);
  CHECK(block->hook_calls == 2);  // the forward's hook ran; the recompute's graph is never differentiated
}

TEST_CASE_TEMPLATE("non-reentrant: CPU bf16 autocast, a leaf used twice: bitwise the unwrapped layer's", Policy,
                   NR_POLICIES) {
  torch::manual_seed(18);
  auto tied = torch::randn({16, 16}, test_device::options().requires_grad(true));
  TiedBlock block(16, tied);  // uses `tied` twice: the cast cache casts it once
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto run = [&](auto& module) {
    {
      actckpt::AutocastReplayGuard autocast(actckpt::AutocastState{true, false, at::kBFloat16, at::kHalf, true});
      auto y = module(x);
      // A use of the weight outside the layer, in the same autocast region (cast cache shared).
      (y.to(at::kFloat).pow(2).sum() + x.mm(tied).to(at::kFloat).sum()).backward();
    }
    auto g = take_grads({x, tied});
    for (auto& t : take_grads(*block)) g.push_back(t);
    return g;
  };
  auto ref = run(block);
  check_bitwise_equal(run(wrapped), ref);
}

TEST_CASE_TEMPLATE("non-reentrant: early stop, the recompute ends at the last saved tensor", Policy, NR_POLICIES) {
  TailBlock block(16);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  wrapped(x).sum().backward();
  CHECK(block->head_runs == 2);  // the forward and the recompute ran ...
  CHECK(block->tail_runs == 1);  // ... and the recompute stopped before the tail
}

TEST_CASE_TEMPLATE("non-reentrant: a captured tensor changed in place before backward raises, as autograd would",
                   Policy, NR_POLICIES) {
  auto tied = torch::randn({16, 16}, test_device::options().requires_grad(true));
  TiedBlock block(16, tied);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso, "tied");
  auto mask = torch::rand({24, 16}, test_device::options());
  auto y = wrapped(torch::randn({24, 16}, test_device::options())) * 1.0;
  auto loss = actckpt::checkpoint<Policy>([&mask](const torch::Tensor& t) { return (t * mask).sum(); }, y);
  mask.mul_(2.0);  // after the forward saved it
  CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("was modified by an in-place operation after the forward saved it"),
                       actckpt::InputMutated);
}

TEST_CASE_TEMPLATE("non-reentrant: BatchNorm statistics change once per step, also with a retained second backward",
                   Policy, NR_POLICIES) {
  torch::manual_seed(19);
  BatchNormBlock ref(16), mine(16);
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < ref->parameters().size(); ++i) mine->parameters()[i].copy_(ref->parameters()[i]);
  }
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(mine, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto l_ref = ref(x).pow(2).sum();
  l_ref.backward({}, true);
  l_ref.backward();
  auto l = wrapped(x).pow(2).sum();
  l.backward({}, true);
  l.backward();
  CHECK(test_models::bitwise_equal(mine->bn->running_mean, ref->bn->running_mean));
  CHECK(test_models::bitwise_equal(mine->bn->running_var, ref->bn->running_var));
  check_bitwise_equal(take_grads(*mine), take_grads(*ref));
}

TEST_CASE_TEMPLATE("non-reentrant: backward(inputs=) and autograd::grad with respect to some tensors only", Policy,
                   NR_POLICIES) {
  torch::manual_seed(20);
  MlpBlock block(16, 32);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto w = block->fc1->weight;
  torch::autograd::backward({block(x).pow(2).sum()}, {}, c10::nullopt, false, {w});
  auto ref = take_grads({w});
  CHECK_FALSE(x.grad().defined());
  torch::autograd::backward({wrapped(x).pow(2).sum()}, {}, c10::nullopt, false, {w});
  CHECK_FALSE(x.grad().defined());
  check_bitwise_equal(take_grads({w}), ref);
  auto gx_ref = torch::autograd::grad({block(x).sum()}, {x})[0];
  auto gx = torch::autograd::grad({wrapped(x).sum()}, {x})[0];
  CHECK(test_models::bitwise_equal(gx, gx_ref));
}

TEST_CASE_TEMPLATE("non-reentrant: dropout masks and the caller's RNG state (ported from TestCheckpoint rng cases)",
                   Policy, NR_POLICIES) {
  MlpBlock block(16, 32, /*dropout=*/0.5);
  IsolatedOffload iso;
  auto wrapped = wrap<Policy>(block, iso);
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto step = [&](auto& module) {
    torch::manual_seed(21);
    module(x).pow(2).sum().backward();
    auto g = take_grads({x});
    g.push_back(torch::rand({4}, test_device::options()));  // the caller's generator after the step
    return g;
  };
  auto ref = step(block);
  check_bitwise_equal(step(wrapped), ref);
}

TEST_CASE_TEMPLATE("nesting: non-reentrant and reentrant checkpoints inside each other match the unwrapped model",
                   Policy, NR_POLICIES) {
  using Base = actckpt::NoOffload;
  // Reference: the same block unwrapped, its inner layer plain (or, for a reentrant inner layer,
  // checkpointed as it is: the reentrant form sums an input's gradient contributions inside its
  // node, so it matches the plain layer to rounding only, and the outer wrapper must add nothing).
  auto check = [](auto outer_tag, auto inner_tag, bool plain_inner_reference = true) {
    using Outer = typename decltype(outer_tag)::type;
    using Inner = typename decltype(inner_tag)::type;
    torch::manual_seed(24);
    NestingBlock<Checkpointed<MlpBlock, Inner>> block(16);
    IsolatedOffload iso;
    Checkpointed<NestingBlock<Checkpointed<MlpBlock, Inner>>, Outer> wrapped(block);
    wrapped->set_offload_context(iso.context);
    block->inner->set_offload_context(iso.context);
    auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
    // Reference: the inner checkpoint off (a plain layer), the outer not wrapped.
    auto options = block->inner->stash_options();
    auto plain = options;
    plain.checkpoint = !plain_inner_reference;
    block->inner->set_stash_options(plain);
    block(x).pow(2).sum().backward();
    auto ref = take_grads({x});
    auto ref_p = take_grads(*block);
    block->inner->set_stash_options(options);
    wrapped(x).pow(2).sum().backward();
    check_bitwise_equal(take_grads({x}), ref);
    check_bitwise_equal(take_grads(*block), ref_p);
    CHECK(iso.pool->stats().live_bytes == 0);
  };
  SUBCASE("non-reentrant in non-reentrant") { check(std::type_identity<Policy>{}, std::type_identity<Policy>{}); }
  SUBCASE("reentrant in non-reentrant") { check(std::type_identity<Policy>{}, std::type_identity<Reentrant<Base>>{}, false); }
  SUBCASE("non-reentrant in reentrant") { check(std::type_identity<Reentrant<Base>>{}, std::type_identity<Policy>{}); }
}
