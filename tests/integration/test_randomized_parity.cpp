// Randomized parity (issue 5): random stacks, each drawn from a logged seed, trained one step
// wrapped and unwrapped; gradients must agree (bitwise in float32, within a stated tolerance
// under bf16 CPU autocast).
//
// What a seed draws: depth 1-6; per layer its kind (residual MLP, projection, norm + linear),
// widths 4-48, dropout off / 0.1 / 0.5, wrapped or not, policy type (every one: NoOffload,
// SyncOffload, AsyncOffload, OffloadSaved, SyncOffloadSaved), and sometimes StashOptions
// overridden at run time, every field drawn (any mode, keep-N 0-2, size threshold 0 / 1 KiB /
// 1 MiB, either pool-exhaustion rule, not checkpointed, offload-saved, checksums, any form: the
// reentrant form is drawn per layer in both ctest runs); batch 1-24, sometimes an extra leading dimension; input
// contiguous, transposed or a slice of a wider tensor; input requiring grad or not; float32 or
// bf16 autocast, with backward inside or outside the autocast region; a host pool large or too
// small (the keep-on-device fallback, or the error a layer asked for with throw_error).
//
// Judged: float32 cases bitwise (bytes: the sign of zero and NaN payloads count); bf16 autocast
// cases bitwise too unless a layer recomputes in the reentrant form (its cast cache is off,
// docs/pitfalls.md#forms), which is held to the tolerance below. The one error accepted on the
// wrapped side alone is the documented one of its shape: a layer with
// on_exhausted = throw_error that offloads into the small pool raises HostPoolExhausted. Every
// async offload-saved layer drawn is also run alone to check keep-N through what stays on the
// device (keep_n_probe). The summary counts every policy, form and StashOptions value drawn, and
// the test fails if one was never drawn.
//
// Environment: see randomized_seeds (reliability_models.hpp): 320 fixed seeds and 80 per-run
// random ones by default; a failure prints the command that replays it in this form.

#include "reliability_models.hpp"

#include <cstdlib>
#include <random>
#include <sstream>
#include <string>

using namespace reliability;

namespace {

constexpr uint64_t default_base_seed = 20261129;
constexpr int fixed_cases = 320;
constexpr int random_cases = 80;

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
  int policy = no_offload;  // DrawnPolicy
  bool override_options = false;
  actckpt::StashOptions options;
  /// What the layer runs with: its policy's options or those set at run time.
  actckpt::StashOptions effective() const { return override_options ? options : policy_options(policy); }
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
        s << " wrapped " << policy_names[l.policy];
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
    l.policy = pick(0, policy_kinds - 1);
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
  // Too small: one 4 KiB page (some stashes fit), or nothing at all (every offload refused).
  c.pool_limit = pick(0, 4) == 0 ? (pick(0, 1) == 0 ? 4096 : 0) : std::size_t{1} << 30;
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
    } else if (l.policy == no_offload) {
      add_wrapped<actckpt::NoOffload>(model, block, l, context);
    } else if (l.policy == sync_offload) {
      add_wrapped<actckpt::SyncOffload>(model, block, l, context);
    } else if (l.policy == async_offload) {
      add_wrapped<actckpt::AsyncOffload>(model, block, l, context);
    } else if (l.policy == offload_saved) {
      add_wrapped<actckpt::OffloadSaved>(model, block, l, context);
    } else {
      add_wrapped<actckpt::SyncOffloadSaved>(model, block, l, context);
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

/// True when a layer of the case recomputes in the reentrant form (its own options or the
/// process default): under autocast its cast cache is off and it may differ in the last bits.
bool has_reentrant_recompute(const CaseSpec& c) {
  for (const auto& l : c.layers)
    if (l.wrapped && behaviour_of(l.effective()) == Behaviour::recompute_reentrant) return true;
  return false;
}

/// The documented shape of the one error only the wrapped model may raise: a layer that asked
/// for throw_error offloads (sync or async host mode) into the small pool.
bool may_exhaust_pool_with_error(const CaseSpec& c) {
  if (c.pool_limit >= (std::size_t{1} << 30)) return false;
  for (const auto& l : c.layers) {
    if (!l.wrapped) continue;
    const auto o = l.effective();
    const auto b = behaviour_of(o);
    if (o.on_exhausted == actckpt::PoolExhaustion::throw_error && o.mode != actckpt::StashMode::device &&
        (b == Behaviour::offload_saved || b == Behaviour::recompute_non_reentrant || b == Behaviour::recompute_reentrant))
      return true;
  }
  return false;
}

struct Tally {
  Exercised drawn;
  int cases = 0, autocast_cases = 0, layers = 0, wrapped_layers = 0;
  int pool_exhausted_errors = 0, autocast_reentrant = 0, autocast_within_tolerance = 0, keep_n_probes = 0;
  double worst_autocast = 0.0;  // largest |diff| / max |value| over reentrant autocast cases
};

/// Runs one case; returns an empty string when it passes, else what differed.
std::string run_case(const CaseSpec& c, Tally& tally) {
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
  std::ostringstream why;
  bool wrapped_raised = false;
  try {
    actual = run_step(c, model, input_values);
  } catch (const actckpt::HostPoolExhausted& e) {
    wrapped_raised = true;
    if (may_exhaust_pool_with_error(c)) {
      ++tally.pool_exhausted_errors;
    } else {
      why << "\n  only the wrapped model raised (no layer of this case asked for throw_error into a small pool): "
          << e.what();
    }
  }

  const bool tolerant = c.autocast && has_reentrant_recompute(c);
  tally.autocast_reentrant += tolerant;
  bool needed_tolerance = false;
  if (!wrapped_raised) {
    if (!bitwise_equal(actual.rng_after, expected.rng_after)) why << "\n  the CPU generator's state after the step differs";
    compare_named_tensors(actual.tensors, expected.tensors, why,
                          [&](const std::string& name, const torch::Tensor& a, const torch::Tensor& e, std::ostream& out) {
      if (bitwise_equal(a, e)) return;
      if (!tolerant) {
        out << "\n  " << name << ": not bitwise equal, max |diff| " << max_abs_diff(a, e);
        return;
      }
      const double diff = max_abs_diff(a, e);
      const double scale = e.numel() == 0 ? 0.0 : e.to(torch::kDouble).abs().max().item<double>();
      if (scale > 0) tally.worst_autocast = std::max(tally.worst_autocast, diff / scale);
      needed_tolerance = true;
      if (diff > autocast_relative_tolerance * scale + autocast_absolute_tolerance)
        out << "\n  " << name << ": max |diff| " << diff << " exceeds the tolerance (max |value| " << scale << ")";
    });
  }
  tally.autocast_within_tolerance += needed_tolerance;
  if (!wait_until_idle(*offload.context)) why << "\n  the copy worker did not finish";
  if (offload.pool->stats().live_bytes != 0) why << "\n  host pool bytes left live: " << offload.pool->stats().live_bytes;
  if (offload.context->stack().size() != 0) why << "\n  stashes left on the stack: " << offload.context->stack().size();
  return why.str();
}

/// keep-N of an async offload-saved layer, checked through what stays on the device rather than
/// through gradients (which are the same wherever a saved tensor waits): the layer alone, every
/// saved tensor large enough to move (threshold 1 byte), a large pool; after its forward (copies
/// finished) the stashes not moved to the host are exactly the newest `keep`, and the pool holds
/// bytes exactly when something moved. Returns what differed.
std::string keep_n_probe(const LayerSpec& l, uint64_t seed) {
  IsolatedOffload offload;
  torch::manual_seed(seed);
  StackBlock block(l.in, l.out, l.hidden, 0.0, l.kind);
  actckpt::Checkpointed<StackBlock, actckpt::OffloadSaved> wrapped(block);
  wrapped->set_offload_context(offload.context);
  auto o = l.effective();
  o.min_offload_bytes = 1;
  o.on_exhausted = actckpt::PoolExhaustion::keep_on_device;
  wrapped->set_stash_options(o);
  auto log = std::make_shared<EventLog>();
  std::ostringstream why;
  {
    actckpt::ObserverScope observing(log);
    auto x = torch::randn({5, l.in}, torch::requires_grad());
    auto y = wrapped(x);
    if (!wait_until_idle(*offload.context)) why << "\n  keep-N probe: the copy worker did not finish";
    const std::size_t stashes = offload.context->stack().size();
    const std::size_t moved = log->of(actckpt::EventKind::offload_begin).size();
    const std::size_t expected_kept = std::min<std::size_t>(o.keep_on_device, stashes);
    if (stashes < moved || stashes - moved != expected_kept)
      why << "\n  keep-N probe (keep " << o.keep_on_device << "): " << stashes << " saved-tensor stashes after the forward, "
          << moved << " moved to the host, so " << (stashes - std::min(stashes, moved)) << " on the device instead of "
          << expected_kept;
    if ((offload.pool->stats().live_bytes > 0) != (moved > 0))
      why << "\n  keep-N probe: " << moved << " stashes moved but the pool holds " << offload.pool->stats().live_bytes << " B";
    if (stashes == 0) why << "\n  keep-N probe: the layer stashed nothing (nothing was tested)";
    weighted_loss(y).backward();
  }
  if (!wait_until_idle(*offload.context)) why << "\n  keep-N probe: the copy worker did not finish after backward";
  if (offload.pool->stats().live_bytes != 0) why << "\n  keep-N probe: host pool bytes left live";
  if (offload.context->stack().size() != 0) why << "\n  keep-N probe: stashes left on the stack";
  return why.str();
}

}  // namespace

TEST_CASE("randomized parity: random stacks, every policy, form and StashOptions field match the unwrapped model") {
  const auto seeds = randomized_seeds("randomized parity (random stacks)", default_base_seed, fixed_cases, random_cases);
  const std::string pattern = "randomized parity: random stacks*";

  SingleIntraOpThread one_thread;
  Tally tally;
  int failures = 0;
  for (uint64_t seed : seeds.all()) {
    const auto c = draw_case(seed);
    ++tally.cases;
    tally.autocast_cases += c.autocast;
    for (const auto& l : c.layers) {
      ++tally.layers;
      if (!l.wrapped) continue;
      ++tally.wrapped_layers;
      count_wrapped_layer(tally.drawn, l.policy, l.override_options, l.effective());
    }
    std::string why;
    try {
      why = run_case(c, tally);
      for (const auto& l : c.layers) {
        if (!l.wrapped || behaviour_of(l.effective()) != Behaviour::offload_saved ||
            l.effective().mode != actckpt::StashMode::async_host)
          continue;
        ++tally.keep_n_probes;
        tally.drawn.add("keep-N probe of async offload-saved, keep " + std::to_string(l.effective().keep_on_device));
        why += keep_n_probe(l, seed);
      }
    } catch (const c10::Error& e) {
      why = std::string("\n  threw: ") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      why = std::string("\n  threw: ") + e.what();
    }
    if (!why.empty()) {
      ++failures;
      FAIL_CHECK("case failed: ", c.describe(), why, "\n  replay: ", replay_command(seed, pattern));
      if (failures >= 5) break;  // enough to go on
    }
  }
  MESSAGE("randomized parity (random stacks, ", std::string(process_form_name()), " process form): ", tally.cases, " cases (",
          tally.autocast_cases, " under bf16 autocast), ", tally.layers, " layers of which ", tally.wrapped_layers,
          " wrapped; ", tally.pool_exhausted_errors, " raised HostPoolExhausted as their throw_error layer asked; ",
          tally.autocast_reentrant, " autocast cases with a reentrant recompute, of which ", tally.autocast_within_tolerance,
          " not bitwise but within tolerance (largest |diff| / max |value|: ", tally.worst_autocast, "); ", tally.keep_n_probes,
          " keep-N probes; drawn:", tally.drawn.summary());
  CHECK(failures == 0);
  if (!seeds.replay) {
    check_exercised_everything(tally.drawn, tally.cases);
    for (std::size_t keep : {0, 1, 2})
      CHECK_MESSAGE(tally.drawn["keep-N probe of async offload-saved, keep " + std::to_string(keep)] > 0,
                    "no keep-N probe with keep ", keep);
  }
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
