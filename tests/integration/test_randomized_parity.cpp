// Randomized parity (issue 5): random stacks, each drawn from a logged seed, trained one step
// wrapped and unwrapped; gradients must agree (bitwise in float32, within a stated tolerance
// under bf16 CPU autocast).
//
// What a seed draws: depth 1-6; per layer its kind (residual MLP, projection, norm + linear),
// widths 4-48, dropout off / 0.1 / 0.5, wrapped or not, policy type (NoOffload, SyncOffload,
// AsyncOffload), and sometimes StashOptions overridden at run time (any mode, keep-N 0-2, size
// threshold 0 / 1 KiB / 1 MiB); batch 1-24, sometimes an extra leading dimension; input
// contiguous, transposed or a slice of a wider tensor; input requiring grad or not; float32 or
// bf16 autocast, with backward inside or outside the autocast region; a host pool large or too
// small (the keep-on-device fallback).
//
// Environment:
//   ACTCKPT_PARITY_SEED=<seed>       replay one case (a failure prints its seed)
//   ACTCKPT_PARITY_CASES=<n>         number of cases (default 400)
//   ACTCKPT_PARITY_BASE_SEED=<seed>  first seed (default fixed, so CI is reproducible;
//                                    "random" draws one, printed)

#include "reliability_models.hpp"

#include <cstdlib>
#include <random>
#include <sstream>
#include <string>

using namespace reliability;

namespace {

constexpr uint64_t default_base_seed = 20261129;
constexpr int default_cases = 400;

// Under bf16 autocast both models run the same bf16 kernels on the same values, so they agree
// bitwise today. The assertion allows what bf16 itself could make of a reordering: relative
// 2^-7 (one bf16 ulp at 1.0 is 2^-7) of the gradient's largest magnitude, plus 1e-6 absolute
// for near-zero gradients. The largest difference seen is reported.
constexpr double autocast_relative_tolerance = 1.0 / 128;
constexpr double autocast_absolute_tolerance = 1e-6;

struct LayerSpec {
  int kind = 0;  // see StackBlockImpl
  int64_t in = 0, out = 0, hidden = 0;
  double dropout = 0.0;
  bool wrapped = false;
  int policy = 0;  // 0 NoOffload, 1 SyncOffload, 2 AsyncOffload
  bool override_options = false;
  actckpt::StashOptions options;
};

struct CaseSpec {
  uint64_t seed = 0;
  std::vector<LayerSpec> layers;
  int64_t batch = 1;
  bool leading_dim = false;   // input [2, batch, width] instead of [batch, width]
  int layout = 0;             // 0 contiguous, 1 transposed, 2 slice of a wider tensor
  bool input_requires_grad = false;
  bool autocast = false;
  bool backward_in_autocast = false;
  std::size_t pool_limit = std::size_t{1} << 30;

  std::string describe() const {
    static const char* policies[] = {"NoOffload", "SyncOffload", "AsyncOffload"};
    static const char* kinds[] = {"residual-mlp", "projection", "norm-linear"};
    static const char* layouts[] = {"contiguous", "transposed", "slice"};
    std::ostringstream s;
    s << "seed " << seed << ": batch " << batch << (leading_dim ? " (x2 leading)" : "") << ", input "
      << layouts[layout] << (input_requires_grad ? ", requires grad" : ", no grad")
      << (autocast ? (backward_in_autocast ? ", bf16 autocast (backward inside)" : ", bf16 autocast") : ", float32")
      << ", pool " << pool_limit << " B; layers:";
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& l = layers[i];
      s << "\n  l" << i << " " << kinds[l.kind] << " " << l.in << "->" << l.out;
      if (l.kind == 0) s << " (hidden " << l.hidden << ")";
      if (l.dropout > 0) s << " dropout " << l.dropout;
      if (l.wrapped) {
        s << " wrapped " << policies[l.policy];
        if (l.override_options) s << describe_stash_options(l.options);
      }
    }
    return s.str();
  }
};

CaseSpec draw_case(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  CaseSpec c;
  c.seed = seed;
  const int depth = pick(1, 6);
  int64_t width = pick(4, 48);
  for (int i = 0; i < depth; ++i) {
    LayerSpec l;
    l.kind = pick(0, 2);
    l.in = width;
    l.out = l.kind == 0 ? width : pick(4, 48);
    l.hidden = pick(4, 64);
    const int drop = pick(0, 5);
    l.dropout = drop == 0 ? 0.5 : drop == 1 ? 0.1 : 0.0;
    l.wrapped = pick(0, 3) != 0;
    l.policy = pick(0, 2);
    l.override_options = pick(0, 2) == 0;
    if (l.override_options) l.options = draw_stash_options(pick, {0, 1024, std::size_t{1} << 20});
    c.layers.push_back(l);
    width = l.out;
  }
  c.batch = pick(0, 4) == 0 ? 1 : pick(2, 24);
  c.leading_dim = pick(0, 4) == 0;
  c.layout = pick(0, 2);
  c.input_requires_grad = pick(0, 1) == 1;
  c.autocast = pick(0, 2) == 0;
  c.backward_in_autocast = c.autocast && pick(0, 1) == 1;
  c.pool_limit = pick(0, 4) == 0 ? 4096 : std::size_t{1} << 30;
  return c;
}

template <class Policy>
void add_wrapped(Stack& model, StackBlock block, const LayerSpec& spec, const std::shared_ptr<actckpt::OffloadContext>& context) {
  auto wrapped = model->add_wrapped<Policy>(block, context);
  if (spec.override_options) wrapped->set_stash_options(spec.options);
}

Stack build(const CaseSpec& c, bool wrap, const std::shared_ptr<actckpt::OffloadContext>& context) {
  Stack model;
  for (const auto& l : c.layers) {
    StackBlock block(l.in, l.out, l.hidden, l.dropout, l.kind);
    if (!wrap || !l.wrapped) {
      model->add_plain(block);
    } else if (l.policy == 0) {
      add_wrapped<actckpt::NoOffload>(model, block, l, context);
    } else if (l.policy == 1) {
      add_wrapped<actckpt::SyncOffload>(model, block, l, context);
    } else {
      add_wrapped<actckpt::AsyncOffload>(model, block, l, context);
    }
  }
  return model;
}

/// The input's leaf (which gets the input gradient) and the tensor fed to the model.
std::pair<torch::Tensor, torch::Tensor> make_input(const CaseSpec& c, const torch::Tensor& values) {
  auto leaf = values.detach().clone().requires_grad_(c.input_requires_grad);
  torch::Tensor x;
  if (c.layout == 0) x = leaf;
  if (c.layout == 1) x = leaf.transpose(-1, -2);                       // leaf is [.., width, batch]
  if (c.layout == 2) x = leaf.narrow(-1, 1, leaf.size(-1) - 3);        // leaf is [.., batch, width + 3]
  return {leaf, x};
}

struct Outcome {
  std::map<std::string, torch::Tensor> tensors;  // parameter grads, "<input>", "<output>", "<loss>"
  torch::Tensor rng_after;                       // the CPU generator's state after the step
};

Outcome run_step(const CaseSpec& c, Stack& model, const torch::Tensor& input_values) {
  for (auto& p : model->parameters()) p.mutable_grad().reset();
  auto [leaf, x] = make_input(c, input_values);
  torch::manual_seed(c.seed ^ 0x5bd1e995ULL);  // dropout masks
  torch::Tensor out, loss;
  {
    // Enter/exit like Python's torch.autocast (nesting count, cache cleared on the last exit).
    auto state = actckpt::AutocastState::current();
    state.cpu_enabled = c.autocast;
    state.cpu_dtype = torch::kBFloat16;
    actckpt::AutocastReplayGuard region(state);
    out = model(x);
    loss = weighted_loss(out);
    if (c.backward_in_autocast) loss.backward();
  }
  if (!c.backward_in_autocast) loss.backward();
  Outcome o;
  o.tensors = take_grads(*model);
  if (c.input_requires_grad) o.tensors["<input>"] = leaf.grad().defined() ? leaf.grad().clone() : torch::Tensor();
  o.tensors["<output>"] = out.detach().clone();
  o.tensors["<loss>"] = loss.detach().clone();
  o.rng_after = at::detail::getDefaultCPUGenerator().get_state();
  return o;
}

/// Runs one case; returns an empty string when it passes, else what differed. `worst` gets the
/// largest relative gradient difference seen (autocast cases).
std::string run_case(const CaseSpec& c, double& worst) {
  IsolatedOffload offload(c.pool_limit);
  torch::manual_seed(c.seed);
  Stack reference = build(c, /*wrap=*/false, nullptr);
  Stack model = build(c, /*wrap=*/true, offload.context);
  copy_state(*reference, *model);

  const int64_t width = c.layers.front().in;
  std::vector<int64_t> shape;
  if (c.leading_dim) shape.push_back(2);
  if (c.layout == 1) {
    shape.push_back(width);
    shape.push_back(c.batch);
  } else {
    shape.push_back(c.batch);
    shape.push_back(c.layout == 2 ? width + 3 : width);
  }
  const auto input_values = torch::randn(shape, test_device::options());

  Outcome expected, actual;
  try {
    expected = run_step(c, reference, input_values);
  } catch (const std::exception&) {
    MESSAGE("the unwrapped reference threw (not actckpt's doing)");
    throw;
  }
  actual = run_step(c, model, input_values);

  std::ostringstream why;
  if (!torch::equal(actual.rng_after, expected.rng_after)) why << "\n  the CPU generator's state after the step differs";
  compare_named_tensors(actual.tensors, expected.tensors, why,
                        [&](const std::string& name, const torch::Tensor& a, const torch::Tensor& e, std::ostream& out) {
    if (!c.autocast) {
      if (!bitwise_equal(a, e)) out << "\n  " << name << ": not bitwise equal, max |diff| " << max_abs_diff(a, e);
      return;
    }
    const double diff = max_abs_diff(a, e);
    const double scale = e.numel() == 0 ? 0.0 : e.to(torch::kDouble).abs().max().item<double>();
    if (scale > 0) worst = std::max(worst, diff / scale);
    if (diff > autocast_relative_tolerance * scale + autocast_absolute_tolerance)
      out << "\n  " << name << ": max |diff| " << diff << " exceeds the tolerance (max |value| " << scale << ")";
  });
  if (!wait_until_idle(*offload.context)) why << "\n  the copy worker did not finish";
  if (offload.pool->stats().live_bytes != 0) why << "\n  host pool bytes left live: " << offload.pool->stats().live_bytes;
  if (offload.context->stack().size() != 0) why << "\n  stashes left on the stack: " << offload.context->stack().size();
  return why.str();
}

}  // namespace

TEST_CASE("randomized parity: random stacks, policies and options match the unwrapped model") {
  const auto seeds = randomized_seeds("randomized parity", default_base_seed, default_cases);

  SingleIntraOpThread one_thread;
  int failures = 0, cases_run = 0, autocast_cases = 0, wrapped_layers = 0, layers = 0;
  double worst = 0.0;
  for (uint64_t seed : seeds) {
    const auto c = draw_case(seed);
    ++cases_run;
    autocast_cases += c.autocast;
    for (const auto& l : c.layers) {
      wrapped_layers += l.wrapped;
      ++layers;
    }
    std::string why;
    try {
      why = run_case(c, worst);
    } catch (const c10::Error& e) {
      why = std::string("\n  threw: ") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      why = std::string("\n  threw: ") + e.what();
    }
    if (!why.empty()) {
      ++failures;
      FAIL_CHECK("case failed: ", c.describe(), why, "\n  replay: ACTCKPT_PARITY_SEED=", seed,
                     " actckpt_tests -tc='randomized parity*'");
      if (failures >= 5) break;  // enough to go on
    }
  }
  MESSAGE("randomized parity: ", cases_run, " cases run (", autocast_cases, " under bf16 autocast), ", layers,
          " layers of which ", wrapped_layers, " wrapped; largest relative gradient difference under autocast: ",
          worst);
  CHECK(failures == 0);
}

// Found by the randomized test (backward inside the autocast region) and pinned down here: a
// checkpointed forward runs with grad mode off, and autocast used to cache the casts it made of
// the layer's parameters there. Those casts have no autograd history, so a later use of the same
// parameter in the region (here: the same layer again, unwrapped, as with tied weights; or the
// recompute when backward runs inside the region) took them and the parameter lost that part of
// its gradient without any error (bias gradient 0.62 instead of 1.92).
TEST_CASE_TEMPLATE("autocast: a checkpointed layer's parameters used again outside it keep their whole gradient", Policy,
                   actckpt::NoOffload, actckpt::SyncOffload, actckpt::AsyncOffload) {
  SingleIntraOpThread one_thread;
  for (bool backward_inside : {false, true}) {
    CAPTURE(backward_inside);
    IsolatedOffload offload;
    torch::manual_seed(3);
    StackBlock block(16, 16, 0, 0.0, /*kind=*/1);  // dropout(tanh(fc(x))): a 2-D input goes through addmm
    actckpt::Checkpointed<StackBlock, Policy> wrapped(block);
    wrapped->set_offload_context(offload.context);
    const auto x = torch::randn({8, 16}, test_device::options());
    auto run = [&](bool wrap) {
      for (auto& p : block->parameters()) p.mutable_grad().reset();
      torch::Tensor loss;
      {
        auto state = actckpt::AutocastState::current();
        state.cpu_enabled = true;
        state.cpu_dtype = torch::kBFloat16;
        actckpt::AutocastReplayGuard region(state);
        auto y = wrap ? wrapped(x) : block(x);
        loss = weighted_loss(block(y));  // the same parameters again, unwrapped
        if (backward_inside) loss.backward();
      }
      if (!backward_inside) loss.backward();
      return take_grads(*block);
    };
    const auto expected = run(false);
    const auto actual = run(true);
    for (const auto& [name, e] : expected) {
      CAPTURE(name);
      const auto& a = actual.at(name);
      REQUIRE(a.defined());
      // The unwrapped model sums the two uses' gradients in bf16 before casting to float32 (one
      // shared cast); the wrapped one casts each, then sums in float32: a rounding apart.
      const double scale = e.abs().max().template item<double>();
      CHECK(max_abs_diff(a, e) <= autocast_relative_tolerance * scale + autocast_absolute_tolerance);
    }
  }
}
