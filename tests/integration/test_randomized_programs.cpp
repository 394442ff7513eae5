// Randomized parity, second generator (issue 21): random *programs* instead of random stacks of
// fixed blocks. A differential fuzz outside the project found five ways a checkpointed model
// diverged from the unwrapped one that test_randomized_parity.cpp never drew: a tensor used
// inside a layer and outside it (summation order), non-dense inputs restored dense, in-place
// changes of a layer's view output, in-place changes that autograd must refuse, and inputs a
// layer does not use. This generator draws exactly those shapes of code, every policy and every
// field of the run-time stash options, and counts a case where only one side raises as a
// failure unless the case has the documented shape of that error (checked, below).
//
// A case: 1-4 layers, each a random program of 2-9 ops on a square [n, n] tensor (matmuls with
// a weight or a transposed weight, transposes, tanh, a tensor multiplied by itself, in-place ops
// on intermediates and on views of them, a roll built from narrowed views, masks, seeded
// dropout, a use of the second argument, a broadcast (expanded) mean, a reshape round trip),
// ending in the result, a view of it, or the input itself; then a chain of 1-6 calls of those
// layers (a layer called again: repeated layers) whose second argument is the same tensor as the
// first, or a side tensor whose producer (exp) saved its output; around a call, a residual
// (`layer(h, .) + h`: input used inside and outside) and, after it, an in-place op on its output
// (relu_, mul_, +=); the side tensor sometimes changed in place before or after the calls. The model's
// input is contiguous, transposed, a slice of a wider tensor or an expanded row (stride 0), and
// requires grad or not. Each layer is unwrapped or wrapped with a policy (every one: NoOffload,
// SyncOffload, AsyncOffload, OffloadSaved, SyncOffloadSaved; sometimes StashOptions overridden
// at run time, every field drawn, the form among them, so both forms run in each ctest run).
//
// Compared bitwise (bytes, float32): loss, output, every parameter's gradient, the input's and
// the side leaf's gradients, the CPU generator's state after the step; and whether each side
// raised, and when both did, that they raised the same kind of error (error_kind). After each
// case the host pool and the stash stack must be empty.
//
// Ground truth: the unwrapped model runs twice; a program whose two unwrapped runs differ in a
// byte (chaotic magnitudes from repeated squaring, say) has none and is counted and listed
// apart, never compared.
//
// The two checkpoint forms (README "What is bitwise"): layers recomputing in the non-reentrant
// form (the default) must match on every case. The reentrant form is a custom autograd function
// and keeps documented divergences (docs/pitfalls.md#forms, numbers below); a case is judged by
// that form's contract only where it draws that divergence's shape around a layer that
// recomputes in the reentrant form (reentrant_shapes): (1) a tensor used inside and outside:
// gradients within a few roundings; (3) a view output changed in place: the wrapped side raises
// that a view is modified in place; (4) an output autograd saved changed in place: the unwrapped
// side alone raises; (5) an unused input whose producer's saved output was changed: the wrapped
// side alone raises autograd's in-place error; (6) a parameter added in place to a view: the
// wrapped side alone refuses the doubled gradient; (the table's "outputs that need no grad") an
// input that needs no grad: the unwrapped side alone may raise that its loss needs none, as the
// reentrant output comes back requiring grad. (7), both forms: an input changed in place
// after the forward (mutates_stashed_input). And any form: a throw_error layer that offloads into
// the small pool raises HostPoolExhausted. Any other one-sided error fails the case.
//
// Environment: see randomized_seeds (reliability_models.hpp): 240 fixed seeds and 60 per-run
// random ones by default; a failure prints the command that replays it in this form.

#include "reliability_models.hpp"

#include <cstdlib>
#include <limits>
#include <optional>
#include <random>
#include <sstream>
#include <string>

using namespace reliability;

namespace {

constexpr uint64_t default_base_seed = 20261204;
constexpr int fixed_cases = 240;
constexpr int random_cases = 60;

/// The ops a layer's program is made of; each keeps the [n, n] shape.
enum Op : int {
  matmul_weight,       // h @ W
  matmul_transposed,   // V^T @ h: a transposed view of a parameter
  transpose,           // h.t(): a view
  tanh_op,             // saves its output
  square,              // h * h: one tensor saved twice
  add_bias_inplace,    // h.add_(bias) on an intermediate (or a view of one)
  relu_inplace,        // h.relu_()
  roll,                // cat(narrow(1, 1, n-1), narrow(1, 0, 1)): narrowed views
  mask,                // masked_fill where h > 0.3
  dropout_op,          // seeded dropout, p = 0.25
  use_second,          // h + b
  broadcast_mean,      // h + h.mean(0, keepdim).expand(n, n)
  reshape_round_trip,  // h.reshape(-1).view(n, n): copies when h is not contiguous
  op_kinds
};
const char* op_names[] = {"matmul_weight", "matmul_transposed", "transpose", "tanh", "square",
                          "add_bias_", "relu_", "roll", "mask", "dropout", "use_second", "broadcast_mean",
                          "reshape"};

enum Ending : int { result, view_of_result, input_unchanged };
const char* ending_names[] = {"result", "a view of the result (t)", "its first input unchanged"};

struct ProgramBlockImpl : torch::nn::Module {
  ProgramBlockImpl(int64_t n, std::vector<int> ops, int ending) : n(n), ops(std::move(ops)), ending(ending) {
    weight = register_parameter("weight", torch::randn({n, n}, test_device::options()) / std::sqrt(static_cast<double>(n)));
    other = register_parameter("other", torch::randn({n, n}, test_device::options()) / std::sqrt(static_cast<double>(n)));
    bias = register_parameter("bias", torch::randn({n}, test_device::options()) * 0.1);
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor a, torch::Tensor b) {
    torch::Tensor h = a;
    bool fresh = false;  // h (or what it views) was made inside this call: in-place ops allowed
    for (int op : ops) {
      switch (op) {
        case matmul_weight: h = h.matmul(weight), fresh = true; break;
        case matmul_transposed: h = other.t().matmul(h), fresh = true; break;
        case transpose: h = h.t(); break;
        case tanh_op: h = h.tanh(), fresh = true; break;
        case square: h = h * h, fresh = true; break;
        case add_bias_inplace:
          if (fresh) h.add_(bias);
          else h = h + bias, fresh = true;
          break;
        case relu_inplace:
          if (fresh) h.relu_();
          else h = h.relu(), fresh = true;
          break;
        case roll: h = torch::cat({h.narrow(1, 1, n - 1), h.narrow(1, 0, 1)}, 1), fresh = true; break;
        case mask: h = h.masked_fill(h.gt(0.3), 0.0), fresh = true; break;
        case dropout_op: h = torch::dropout(h, 0.25, is_training()), fresh = true; break;
        case use_second: h = h + b, fresh = true; break;
        case broadcast_mean: h = h + h.mean(0, /*keepdim=*/true).expand({n, n}), fresh = true; break;
        case reshape_round_trip: h = h.reshape({-1}).view({n, n}); break;
      }
    }
    if (ending == view_of_result) return h.t();
    if (ending == input_unchanged) return a;
    return h;
  }
  bool uses_second() const { return std::find(ops.begin(), ops.end(), use_second) != ops.end(); }
  int64_t n;
  std::vector<int> ops;
  int ending;
  torch::Tensor weight, other, bias;
};
TORCH_MODULE(ProgramBlock);

struct LayerSpec {
  std::vector<int> ops;
  int ending = result;
  bool wrapped = false;
  int policy = no_offload;  // DrawnPolicy
  bool override_options = false;
  actckpt::StashOptions options;
  actckpt::StashOptions effective() const { return override_options ? options : policy_options(policy); }
  /// Wrapped and recomputing in the reentrant form: where its documented divergences can show.
  bool reentrant() const { return wrapped && behaviour_of(effective()) == Behaviour::recompute_reentrant; }
};

enum After : int { nothing, relu_after, halve_after, add_input_after };
const char* after_names[] = {"", " then y.relu_()", " then y.mul_(0.5)", " then y += h"};

struct CallSpec {
  int layer = 0;
  bool second_is_side = false;  // else the same tensor as the first argument
  bool residual = false;        // y = layer(h, .) + h
  int after = nothing;
};

enum Layout : int { contiguous, transposed, slice, expanded_row };
const char* layout_names[] = {"contiguous", "transposed", "a slice of a wider tensor", "an expanded row (stride 0)"};

struct CaseSpec {
  uint64_t seed = 0;
  int64_t n = 4;
  std::vector<LayerSpec> layers;
  std::vector<CallSpec> calls;
  int layout = contiguous;
  bool input_requires_grad = true;
  int side_changed = 0;  // side.mul_(2): 0 never, 1 before the calls, 2 after them
  std::size_t pool_limit = std::size_t{1} << 30;

  std::string describe() const {
    std::ostringstream s;
    s << "seed " << seed << ": n " << n << ", input " << layout_names[layout]
      << (input_requires_grad ? " (requires grad)" : " (no grad)") << ", pool " << pool_limit << " B"
      << (side_changed == 1 ? ", side tensor changed in place before the calls" : "")
      << (side_changed == 2 ? ", side tensor changed in place after the calls" : "") << "; layers:";
    for (std::size_t i = 0; i < layers.size(); ++i) {
      const auto& l = layers[i];
      s << "\n  l" << i << " [";
      for (std::size_t k = 0; k < l.ops.size(); ++k) s << (k ? " " : "") << op_names[l.ops[k]];
      s << "] returns " << ending_names[l.ending];
      if (l.wrapped) {
        s << ", wrapped " << policy_names[l.policy];
        if (l.override_options) s << describe_stash_options(l.options);
      } else {
        s << ", unwrapped";
      }
    }
    s << "\n  calls:";
    for (const auto& c : calls)
      s << "\n    h = " << (c.residual ? "(" : "") << "l" << c.layer << "(h, " << (c.second_is_side ? "side" : "h")
        << ")" << (c.residual ? " + h)" : "") << after_names[c.after];
    return s.str();
  }
};

CaseSpec draw_case(uint64_t seed) {
  std::mt19937_64 rng(seed);
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  CaseSpec c;
  c.seed = seed;
  c.n = pick(3, 20);
  const int layers = pick(1, 4);
  for (int i = 0; i < layers; ++i) {
    LayerSpec l;
    const int ops = pick(2, 9);
    for (int k = 0; k < ops; ++k) l.ops.push_back(pick(0, op_kinds - 1));
    const int e = pick(0, 9);
    l.ending = e < 6 ? result : e < 9 ? view_of_result : input_unchanged;
    l.wrapped = pick(0, 4) != 0;
    l.policy = pick(0, policy_kinds - 1);
    l.override_options = pick(0, 3) == 0;
    if (l.override_options) l.options = draw_stash_options(pick, {0, 64, 1024});
    c.layers.push_back(l);
  }
  const int calls = pick(1, 6);
  for (int i = 0; i < calls; ++i) {
    CallSpec call;
    call.layer = pick(0, layers - 1);
    call.second_is_side = pick(0, 1) == 1;
    call.residual = pick(0, 2) == 0;
    const int a = pick(0, 9);
    call.after = a < 7 ? nothing : a - 6;
    c.calls.push_back(call);
  }
  c.layout = pick(0, 3);
  c.input_requires_grad = pick(0, 3) != 0;
  c.side_changed = pick(0, 5) == 0 ? 1 : pick(0, 3) == 0 ? 2 : 0;
  c.pool_limit = pick(0, 5) == 0 ? 512 : std::size_t{1} << 30;
  return c;
}

/// True when the case changes, after a call, a tensor a recomputing layer took as input: the side
/// tensor (side.mul_) or the output of a layer that returned its input unchanged (shape 7).
bool mutates_stashed_input(const CaseSpec& c) {
  for (const auto& call : c.calls) {
    const auto& l = c.layers[call.layer];
    if (!l.wrapped) continue;
    const auto b = behaviour_of(l.effective());
    if (b != Behaviour::recompute_non_reentrant && b != Behaviour::recompute_reentrant) continue;
    if (call.second_is_side && c.side_changed == 2) return true;
    if (l.ending == input_unchanged && !call.residual && call.after != nothing) return true;
  }
  return false;
}

/// Which documented reentrant divergences (docs/pitfalls.md#forms, numbered as there) the case
/// draws the shape of, around a layer that recomputes in the reentrant form.
struct ReentrantShapes {
  bool shared_use = false;            // 1: a tensor used inside and outside, a layer applied twice
  bool output_changed_in_place = false;  // 3 and 4: a call's own output changed in place
  bool unused_input_changed = false;  // 5: the side tensor, unused by the layer, changed (before or after)
  bool parameter_on_view = false;     // 6: add_bias_ on an intermediate
  // (docs/pitfalls.md#forms, the table's "outputs that need no grad": come back requiring grad.)
  // An input that needs no grad: a layer that uses no parameter on it returns a tensor needing
  // none, so the unwrapped loss may need no grad (backward raises) where the reentrant one does.
  bool output_may_need_no_grad = false;
  bool any() const {
    return shared_use || output_changed_in_place || unused_input_changed || parameter_on_view || output_may_need_no_grad;
  }
};

ReentrantShapes reentrant_shapes(const CaseSpec& c) {
  ReentrantShapes r;
  std::vector<int> calls_of(c.layers.size(), 0);
  int side_uses = 0;
  for (const auto& call : c.calls) calls_of[call.layer] += 1, side_uses += call.second_is_side;
  for (const auto& call : c.calls) {
    const auto& l = c.layers[call.layer];
    if (!l.reentrant()) continue;
    const bool uses_second = std::find(l.ops.begin(), l.ops.end(), use_second) != l.ops.end();
    if (call.residual || call.after == add_input_after || !call.second_is_side || calls_of[call.layer] > 1 ||
        (call.second_is_side && side_uses > 1) || l.ending == input_unchanged)
      r.shared_use = true;
    // (An input whose use is thrown away, the layer returning its first input, counts as unused.)
    if (call.second_is_side && (!uses_second || l.ending == input_unchanged) && c.side_changed != 0)
      r.unused_input_changed = true;
    if (std::find(l.ops.begin(), l.ops.end(), add_bias_inplace) != l.ops.end()) r.parameter_on_view = true;
  }
  // 3 and 4: an in-place op on a reentrant call's output, or on it passed on unchanged by layers
  // that return their input (found by the per-run random seeds: seed 1102212115842).
  bool reentrant_output = false;  // h is (a view of) a reentrant call's output
  for (const auto& call : c.calls) {
    const auto& l = c.layers[call.layer];
    if (call.residual) reentrant_output = false;
    else if (l.reentrant()) reentrant_output = true;
    else if (l.ending != input_unchanged) reentrant_output = false;
    if (reentrant_output && call.after != nothing) r.output_changed_in_place = true;
  }
  if (!c.input_requires_grad)
    for (const auto& l : c.layers) r.output_may_need_no_grad = r.output_may_need_no_grad || l.reentrant();
  return r;
}

/// A layer asked for throw_error and offloads into the case's small pool.
bool may_exhaust_pool_with_error(const CaseSpec& c) {
  if (c.pool_limit >= (std::size_t{1} << 30)) return false;
  for (const auto& l : c.layers) {
    if (!l.wrapped) continue;
    const auto o = l.effective();
    if (o.on_exhausted == actckpt::PoolExhaustion::throw_error && o.mode != actckpt::StashMode::device &&
        behaviour_of(o) != Behaviour::not_checkpointed)
      return true;
  }
  return false;
}

/// The kind of error a step raised, so that "both raised" compares what was raised, not only
/// that something was: the kinds this generator's programs can raise, and "other: <message>"
/// for anything else (which then must match word for word).
std::string error_kind(const std::string& error) {
  auto has = [&](const char* s) { return error.find(s) != std::string::npos; };
  if (has("was modified in place after the forward stashed it")) return "a stashed input changed in place";
  if (has("its gradient twice")) return "a parameter's gradient given twice";
  if (has("host buffer pool exhausted")) return "host pool exhausted";
  if (has("is a view") && (has("modified inplace") || has("modified in-place") || has("being modified")))
    return "a view changed in place";
  if (has("modified by an inplace operation") || has("modified by an in-place operation"))
    return "a saved tensor changed in place";
  if (has("does not require grad and does not have a grad_fn")) return "nothing to differentiate";
  return "other: " + error;
}

/// Whether an error the wrapped side alone raised is documented for this case's shape.
bool wrapped_error_documented(const CaseSpec& c, const ReentrantShapes& r, const std::string& kind) {
  if (kind == "a stashed input changed in place") return mutates_stashed_input(c);
  if (kind == "host pool exhausted") return may_exhaust_pool_with_error(c);
  if (kind == "a view changed in place") return r.output_changed_in_place;                    // 3
  // 5; or an input that needed no grad: the reentrant recompute differentiates with respect to
  // every tensor input, so ops save what autograd did not save unwrapped, and an in-place op
  // inside the layer on such a tensor raises (found by this generator: 2 in 2,000 programs).
  if (kind == "a saved tensor changed in place") return r.unused_input_changed || r.output_may_need_no_grad;
  if (kind == "a parameter's gradient given twice") return r.parameter_on_view;               // 6
  return false;
}

struct Model {
  std::shared_ptr<torch::nn::Module> root = std::make_shared<torch::nn::Module>();
  std::vector<ProgramBlock> blocks;
  std::vector<std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&)>> wrapped_calls;
  std::vector<std::shared_ptr<torch::nn::Module>> keep_alive;
};

template <class Policy>
void wrap(Model& m, std::size_t i, const LayerSpec& spec, const std::shared_ptr<actckpt::OffloadContext>& context) {
  actckpt::Checkpointed<ProgramBlock, Policy> w(m.blocks[i]);
  w->set_offload_context(context);
  w->set_label("l" + std::to_string(i));
  if (spec.override_options) w->set_stash_options(spec.options);
  m.keep_alive.push_back(w.ptr());
  m.wrapped_calls[i] = [w](const torch::Tensor& a, const torch::Tensor& b) mutable { return w(a, b); };
}

Model build(const CaseSpec& c, const std::shared_ptr<actckpt::OffloadContext>& context) {
  Model m;
  torch::manual_seed(c.seed);
  m.wrapped_calls.resize(c.layers.size());
  for (std::size_t i = 0; i < c.layers.size(); ++i) {
    const auto& l = c.layers[i];
    m.blocks.push_back(m.root->register_module("l" + std::to_string(i), ProgramBlock(c.n, l.ops, l.ending)));
    auto block = m.blocks.back();
    m.wrapped_calls[i] = [block](const torch::Tensor& a, const torch::Tensor& b) mutable { return block(a, b); };
    if (!l.wrapped) continue;
    if (l.policy == no_offload) wrap<actckpt::NoOffload>(m, i, l, context);
    if (l.policy == sync_offload) wrap<actckpt::SyncOffload>(m, i, l, context);
    if (l.policy == async_offload) wrap<actckpt::AsyncOffload>(m, i, l, context);
    if (l.policy == offload_saved) wrap<actckpt::OffloadSaved>(m, i, l, context);
    if (l.policy == sync_offload_saved) wrap<actckpt::SyncOffloadSaved>(m, i, l, context);
  }
  return m;
}

struct Outcome {
  std::map<std::string, torch::Tensor> tensors;
  torch::Tensor rng_after;
  std::optional<std::string> error;  // what the step raised, if it did
};

std::string first_line(std::string s) {
  const auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

Outcome run_step(const CaseSpec& c, Model& m, bool wrapped, const torch::Tensor& values, const torch::Tensor& side_values) {
  Outcome o;
  for (auto& p : m.root->parameters()) p.mutable_grad().reset();
  try {
    auto leaf = values.detach().clone().requires_grad_(c.input_requires_grad);
    torch::Tensor h;
    if (c.layout == contiguous) h = leaf;
    if (c.layout == transposed) h = leaf.t();                        // leaf is [n, n]
    if (c.layout == slice) h = leaf.narrow(1, 2, c.n);               // leaf is [n, n + 3]
    if (c.layout == expanded_row) h = leaf.expand({c.n, c.n});       // leaf is [1, n]
    auto side_leaf = side_values.detach().clone().requires_grad_(true);
    auto side = side_leaf.exp();  // exp saves its output
    if (c.side_changed == 1) side.mul_(2.0);
    torch::manual_seed(c.seed ^ 0x5bd1e995ULL);  // dropout masks
    for (const auto& call : c.calls) {
      const torch::Tensor second = call.second_is_side ? side : h;
      torch::Tensor y = wrapped ? m.wrapped_calls[call.layer](h, second) : m.blocks[call.layer](h, second);
      if (call.residual) y = y + h;
      if (call.after == relu_after) y.relu_();
      if (call.after == halve_after) y.mul_(0.5);
      if (call.after == add_input_after) y += h;
      h = y;
    }
    if (c.side_changed == 2) side.mul_(2.0);
    auto loss = weighted_loss(h);
    loss.backward();
    o.tensors = take_grads(*m.root);
    o.tensors["<input>"] = c.input_requires_grad && leaf.grad().defined() ? leaf.grad().clone() : torch::Tensor();
    o.tensors["<side>"] = side_leaf.grad().defined() ? side_leaf.grad().clone() : torch::Tensor();
    o.tensors["<output>"] = h.detach().clone();
    o.tensors["<loss>"] = loss.detach().clone();
  } catch (const c10::Error& e) {
    o.error = first_line(e.what_without_backtrace());
  } catch (const std::exception& e) {
    o.error = first_line(e.what());
  }
  for (auto& p : m.root->parameters()) p.mutable_grad().reset();
  o.rng_after = at::detail::getDefaultCPUGenerator().get_state();
  return o;
}

/// How far `a` is from `e`, in float32 roundings of e's largest finite magnitude (a sum that
/// cancels to near zero is many of its own ulps away after a regrouping, few of its terms').
/// Non-finite elements must sit at the same places with the same values; else infinity.
double in_scale_ulps(const torch::Tensor& a, const torch::Tensor& e) {
  if (a.numel() == 0) return 0.0;
  auto ad = a.to(torch::kDouble), ed = e.to(torch::kDouble);
  auto finite = torch::isfinite(ed);
  if (!torch::equal(torch::isfinite(ad), finite)) return std::numeric_limits<double>::infinity();
  auto odd = finite.logical_not();
  if (odd.any().item<bool>() &&
      !torch::equal(torch::isnan(ad.masked_select(odd)), torch::isnan(ed.masked_select(odd))))
    return std::numeric_limits<double>::infinity();
  auto af = ad.masked_select(finite), ef = ed.masked_select(finite);
  if (af.numel() == 0) return 0.0;
  if (!torch::equal(torch::isinf(ad.masked_select(odd)), torch::isinf(ed.masked_select(odd))) ||
      !torch::equal(ad.masked_select(torch::isinf(ed)), ed.masked_select(torch::isinf(ed))))
    return std::numeric_limits<double>::infinity();
  const double scale = ef.abs().max().item<double>();
  return (af - ef).abs().max().item<double>() / std::max(scale * std::ldexp(1.0, -23), std::ldexp(1.0, -126));
}

/// The reentrant form's contract on random programs (README "What is bitwise"): no silent wrong
/// gradient. Where a case has the shape of divergence 1 (sums grouped otherwise), its tensors
/// may differ from the unwrapped ones by this many roundings of each tensor's largest value
/// (largest seen: 4.9 in 3,000 programs before offload-saved and per-layer forms were drawn, 13.3
/// in 2,277 since; it applied to every case before, now only where that shape is drawn).
constexpr double reentrant_rounding_allowance = 64;

struct Tally {
  Exercised drawn;
  int cases = 0, both_raised = 0, compared = 0, wrapped_layers = 0, layers = 0;
  std::map<std::string, int> accepted_one_sided;  // by documented shape
  int reentrant_rounded = 0;
  double worst_ulps = 0;
  std::vector<uint64_t> no_ground_truth;  // seeds whose unwrapped run does not reproduce itself
};

/// Two runs of the same side agree byte for byte: the same error or none, the same tensors and
/// generator state.
bool same_outcome(const Outcome& a, const Outcome& b) {
  if (a.error != b.error) return false;
  if (!bitwise_equal(a.rng_after, b.rng_after) || a.tensors.size() != b.tensors.size()) return false;
  for (const auto& [name, t] : a.tensors) {
    auto it = b.tensors.find(name);
    if (it == b.tensors.end() || !bitwise_equal(t, it->second)) return false;
  }
  return true;
}

std::string run_case(const CaseSpec& c, Tally& tally) {
  IsolatedOffload offload(c.pool_limit);
  Model m = build(c, offload.context);
  torch::Tensor values;
  if (c.layout == contiguous || c.layout == transposed) values = torch::randn({c.n, c.n}, test_device::options());
  if (c.layout == slice) values = torch::randn({c.n, c.n + 3}, test_device::options());
  if (c.layout == expanded_row) values = torch::randn({1, c.n}, test_device::options());
  const auto side_values = torch::randn({c.n, c.n}, test_device::options()) * 0.5;

  const Outcome expected = run_step(c, m, /*wrapped=*/false, values, side_values);
  // No ground truth where the unwrapped program does not reproduce itself in this process.
  if (!same_outcome(expected, run_step(c, m, /*wrapped=*/false, values, side_values))) {
    tally.no_ground_truth.push_back(c.seed);
    return {};
  }
  const Outcome actual = run_step(c, m, /*wrapped=*/true, values, side_values);
  const auto shapes = reentrant_shapes(c);

  std::ostringstream why;
  auto accept = [&](const std::string& what) { ++tally.accepted_one_sided[what]; };
  if (expected.error && actual.error) {
    ++tally.both_raised;
    const auto e_kind = error_kind(*expected.error), a_kind = error_kind(*actual.error);
    if (e_kind != a_kind) {
      // A documented refusal of the wrapped side may come first where the unwrapped side raises
      // for the same change (its own in-place check, later in backward); any other pair differs.
      if (wrapped_error_documented(c, shapes, a_kind)) {
        accept("both raised, the wrapped side its documented " + a_kind);
      } else {
        why << "\n  both raised, but different errors: wrapped " << a_kind << ", unwrapped " << e_kind;
      }
    }
  } else if (actual.error) {
    const auto kind = error_kind(*actual.error);
    if (wrapped_error_documented(c, shapes, kind)) {
      accept("wrapped alone raised: " + kind);
    } else {
      why << "\n  only the wrapped model raised (" << kind << ", not documented for this case's shape): "
          << *actual.error;
    }
  } else if (expected.error) {
    const auto kind = error_kind(*expected.error);
    if (shapes.output_changed_in_place && kind == "a saved tensor changed in place") {
      accept("unwrapped alone raised (reentrant divergence 4)");  // the recompute makes its own output
    } else if (shapes.output_may_need_no_grad && kind == "nothing to differentiate") {
      accept("unwrapped alone raised: the reentrant output requires grad where the unwrapped one needs none");
    } else {
      why << "\n  only the unwrapped model raised (" << kind << "): " << *expected.error;
    }
  } else {
    ++tally.compared;
    if (!bitwise_equal(actual.rng_after, expected.rng_after)) why << "\n  the CPU generator's state after the step differs";
    bool rounded = false;
    compare_named_tensors(actual.tensors, expected.tensors, why,
                          [&](const std::string& name, const torch::Tensor& a, const torch::Tensor& e, std::ostream& out) {
      if (bitwise_equal(a, e)) return;
      if (a.sizes() != e.sizes()) {
        out << "\n  " << name << ": sizes " << a.sizes() << " wrapped, " << e.sizes() << " unwrapped";
        return;
      }
      const double ulps = in_scale_ulps(a, e);
      if (shapes.shared_use && ulps <= reentrant_rounding_allowance) {
        rounded = true;
        tally.worst_ulps = std::max(tally.worst_ulps, ulps);
        return;
      }
      out << "\n  " << name << ": not bitwise equal, max |diff| " << max_abs_diff(a, e) << " (" << ulps
          << " roundings of its largest value)" << (shapes.shared_use ? "" : "; no reentrant shared-use shape here");
    });
    tally.reentrant_rounded += rounded;
  }
  if (!wait_until_idle(*offload.context)) why << "\n  the copy worker did not finish";
  if (offload.context->stack().size() != 0) why << "\n  stashes left on the stack: " << offload.context->stack().size();
  if (offload.pool->stats().live_bytes != 0) why << "\n  host pool bytes left live: " << offload.pool->stats().live_bytes;
  return why.str();
}

}  // namespace

TEST_CASE("randomized parity: random programs (views, in-place ops, inputs used twice, one-sided errors)") {
  const auto seeds = randomized_seeds("randomized programs", default_base_seed, fixed_cases, random_cases);
  const std::string pattern = "randomized parity: random programs*";

  SingleIntraOpThread one_thread;
  Tally tally;
  int failures = 0;
  for (uint64_t seed : seeds.all()) {
    const auto c = draw_case(seed);
    ++tally.cases;
    for (const auto& l : c.layers) {
      ++tally.layers;
      if (!l.wrapped) continue;
      ++tally.wrapped_layers;
      count_wrapped_layer(tally.drawn, l.policy, l.override_options, l.effective());
    }
    std::string why;
    try {
      why = run_case(c, tally);
    } catch (const c10::Error& e) {
      why = std::string("\n  the harness caught: ") + e.what_without_backtrace();
    } catch (const std::exception& e) {
      why = std::string("\n  the harness caught: ") + e.what();
    }
    if (!why.empty()) {
      ++failures;
      FAIL_CHECK("case failed: ", c.describe(), why, "\n  replay: ", replay_command(seed, pattern));
      if (failures >= 8) break;
    }
  }
  std::ostringstream accepted, unreproducible;
  for (const auto& [what, n] : tally.accepted_one_sided) accepted << "\n  " << what << ": " << n;
  for (uint64_t seed : tally.no_ground_truth) unreproducible << " " << seed;
  MESSAGE("randomized programs (", std::string(process_form_name()), " process form): ", tally.cases, " cases, ", tally.layers,
          " layers of which ", tally.wrapped_layers, " wrapped; ", tally.compared, " compared, ", tally.both_raised,
          " raised on both sides; ", tally.no_ground_truth.size(),
          " without ground truth (the unwrapped run does not reproduce itself; not compared), seeds:",
          unreproducible.str(), "; ", tally.reentrant_rounded,
          " within roundings under a reentrant shared-use shape (largest ", tally.worst_ulps,
          "); accepted by documented shape:", accepted.str(), "\ndrawn:", tally.drawn.summary());
  CHECK(failures == 0);
  if (!seeds.replay) {
    check_exercised_everything(tally.drawn, static_cast<std::size_t>(tally.cases));
    // The generator must keep drawing what it exists for: raised-on-both cases and compared ones,
    // and programs with a ground truth.
    CHECK(tally.both_raised > 0);
    // (In the reentrant process form about half the cases draw a shape whose documented outcome is
    // an error; the rest must still be compared.)
    CHECK(tally.compared > tally.cases / 3);
    CHECK(tally.no_ground_truth.size() * 20 < static_cast<std::size_t>(tally.cases));
  }
}
