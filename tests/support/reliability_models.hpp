#pragma once
// Shared by tests/test_reliability.cpp and tests/test_randomized_parity.cpp (issue 5): layers a
// stack is built from, a stack whose layers are each wrapped (with a policy of their own) or not,
// the process RSS, and gradient comparison by parameter name. Built on test_models.hpp.

#include <actckpt/actckpt.hpp>
#include <actckpt/measure/memory_meter.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>
#include <unistd.h>

#include "test_models.hpp"

#include <atomic>
#include <sstream>
#include <array>
#include <ostream>
#include <random>
#include <cstdlib>
#include <chrono>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace reliability {

// ---------------------------------------------------------------------------------------------
// Measuring

// The shared test helpers this file builds on (one FaultyBlock, one private offload context,
// one event log); device bytes are measured with actckpt::MemoryMeter itself.
using test_models::EventLog;
using test_models::FaultyBlock;
using test_models::IsolatedOffload;
using test_models::wait_until_idle;

/// Resident set size of this process (/proc/self/statm), in bytes.
inline std::int64_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::int64_t size_pages = 0, resident_pages = 0;
  statm >> size_pages >> resident_pages;
  return resident_pages * static_cast<std::int64_t>(sysconf(_SC_PAGESIZE));
}

/// LibTorch on one intra-op thread for the guard's lifetime. The tensors of these tests are tiny,
/// and ctest runs two test processes at once on a 2-core machine, where OpenMP workers waiting
/// for a core turn a 2 ms step into a 30 ms one (measured: the 1000-step soak took 2 s per policy
/// on one thread, 30-45 s on two while other builds ran).
struct SingleIntraOpThread {
  int before = at::get_num_threads();
  SingleIntraOpThread() { at::set_num_threads(1); }
  ~SingleIntraOpThread() { at::set_num_threads(before); }
  SingleIntraOpThread(const SingleIntraOpThread&) = delete;
  SingleIntraOpThread& operator=(const SingleIntraOpThread&) = delete;
};

// ---------------------------------------------------------------------------------------------
// Layers

/// The layers random and soak stacks are made of. `kind`:
///  0 residual MLP  x + fc2(dropout(gelu(fc1(x))))      (in == out)
///  1 projection    dropout(tanh(fc(x)))                (in -> out)
///  2 norm + linear fc(layer_norm(float(x)))            (in -> out)
/// (LibTorch 1.13's CPU layer_norm rejects a bf16 input with float32 weights, which is what a
/// bf16 autocast region hands it after a linear layer; hence the explicit float.)
struct StackBlockImpl : torch::nn::Module {
  StackBlockImpl(int64_t in, int64_t out, int64_t hidden, double dropout, int kind) : kind(kind) {
    TORCH_CHECK(kind != 0 || in == out, "residual block needs in == out");
    if (kind == 0) {
      fc = register_module("fc", torch::nn::Linear(in, hidden));
      fc2 = register_module("fc2", torch::nn::Linear(hidden, out));
    } else {
      fc = register_module("fc", torch::nn::Linear(in, out));
    }
    if (kind == 2) norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({in})));
    drop = register_module("drop", torch::nn::Dropout(dropout));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) {
    switch (kind) {
      case 0: return x + fc2(drop(torch::gelu(fc(x))));
      case 1: return drop(torch::tanh(fc(x)));
      default: return fc(norm(x.to(torch::kFloat)));
    }
  }
  int kind;
  torch::nn::Linear fc{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Dropout drop{nullptr};
};
TORCH_MODULE(StackBlock);


/// Embedding of integer indices (which cannot require grad) into a linear layer.
struct EmbedBlockImpl : torch::nn::Module {
  EmbedBlockImpl(int64_t vocab, int64_t dim) {
    emb = register_module("emb", torch::nn::Embedding(vocab, dim));
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor idx) { return torch::gelu(fc(emb(idx))); }
  torch::nn::Embedding emb{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(EmbedBlock);

/// A float input plus integer indices: x + emb(idx), then a linear layer.
struct MixedInputBlockImpl : torch::nn::Module {
  MixedInputBlockImpl(int64_t vocab, int64_t dim) {
    emb = register_module("emb", torch::nn::Embedding(vocab, dim));
    fc = register_module("fc", torch::nn::Linear(dim, dim));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x, torch::Tensor idx) { return torch::tanh(fc(x + emb(idx))); }
  torch::nn::Embedding emb{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(MixedInputBlock);

// ---------------------------------------------------------------------------------------------
// Stacks

/// A sequence of tensor-to-tensor layers, each added plain or checkpointed with a policy of its
/// own. Parameter names (`l0.fc.weight`, ...) are the same whichever way a layer is added, so a
/// wrapped stack and its unwrapped reference can be compared name by name.
struct StackImpl : torch::nn::Module {
  template <class Layer>
  void add_plain(Layer layer) {
    register_module(layer_name(), layer);
    calls.push_back([layer](const torch::Tensor& x) mutable { return layer(x); });
  }

  /// Wraps `layer` with `Policy`; the wrapper is labelled `prefix` + "l<i>" and uses `context`
  /// (null: the calling thread's current one).
  template <class Policy, class Layer>
  actckpt::Checkpointed<Layer, Policy> add_wrapped(Layer layer, std::shared_ptr<actckpt::OffloadContext> context,
                                                   const std::string& prefix = "") {
    const std::string name = layer_name();
    actckpt::Checkpointed<Layer, Policy> wrapped(layer);
    wrapped->set_label(prefix + name);
    wrapped->set_offload_context(std::move(context));
    register_module(name, wrapped);
    calls.push_back([wrapped](const torch::Tensor& x) mutable { return wrapped(x); });
    wrappers.push_back(wrapped.ptr());
    return wrapped;
  }

  /// "l<i>" for the next layer. (Built by appending: GCC 12 warns falsely, -Wstringop-overflow,
  /// on "l" + std::to_string(i), its bug 105329.)
  std::string layer_name() const {
    std::string name = "l";
    name += std::to_string(calls.size());
    return name;
  }

  torch::Tensor forward(torch::Tensor x) {
    for (auto& call : calls) x = call(x);
    return x;
  }

  std::vector<std::function<torch::Tensor(const torch::Tensor&)>> calls;
  std::vector<std::shared_ptr<torch::nn::Module>> wrappers;
};
TORCH_MODULE(Stack);

// ---------------------------------------------------------------------------------------------
// Gradients

/// Copies parameters and buffers of `from` into `to`, by name.
inline void copy_state(torch::nn::Module& from, torch::nn::Module& to) {
  torch::NoGradGuard no_grad;
  auto source = from.named_parameters();
  for (auto& p : to.named_parameters()) p.value().copy_(source[p.key()]);
  auto source_buffers = from.named_buffers();
  for (auto& b : to.named_buffers()) b.value().copy_(source_buffers[b.key()]);
}

/// Parameter gradients by name (cloned; undefined where none), then cleared.
inline std::map<std::string, torch::Tensor> take_grads(torch::nn::Module& m) {
  std::map<std::string, torch::Tensor> grads;
  for (auto& p : m.named_parameters()) {
    grads[p.key()] = p.value().grad().defined() ? p.value().grad().clone() : torch::Tensor();
    p.value().mutable_grad().reset();
  }
  return grads;
}

/// Largest absolute difference between two tensors, as double (0 when equal, inf when the
/// shapes, dtypes or definedness differ).
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return std::numeric_limits<double>::infinity();
  if (!a.defined()) return 0.0;
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return std::numeric_limits<double>::infinity();
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).abs().max().item<double>();
}

/// Bitwise equality: the one helper of test_models.hpp (bytes, so -0.0 is not +0.0).
using test_models::bitwise_equal;

/// Checks every gradient of `actual` against `expected` bitwise, naming the first mismatches.
inline void check_grads_bitwise(const std::map<std::string, torch::Tensor>& actual,
                                const std::map<std::string, torch::Tensor>& expected) {
  REQUIRE(actual.size() == expected.size());
  for (const auto& [name, g] : expected) {
    CAPTURE(name);
    auto it = actual.find(name);
    REQUIRE(it != actual.end());
    CHECK(it->second.defined() == g.defined());
    CHECK_MESSAGE(bitwise_equal(it->second, g), "max |diff| = ", max_abs_diff(it->second, g));
  }
}

/// A fixed, non-trivial loss of an output: every element gets its own weight.
inline torch::Tensor weighted_loss(const torch::Tensor& out) {
  auto w = torch::linspace(-1.0, 1.0, out.numel(), out.options().dtype(torch::kFloat)).view(out.sizes());
  return (out.to(torch::kFloat) * w).sum();
}

/// One forward + backward of `model` on `input` from RNG seed `seed`; returns the parameter
/// gradients (by name) and, when `input` requires grad, its gradient under the key "<input>".
inline std::map<std::string, torch::Tensor> gradients_of(torch::nn::Module& model,
                                                         const std::function<torch::Tensor(torch::Tensor)>& forward,
                                                         const torch::Tensor& input, uint64_t seed) {
  for (auto& p : model.parameters()) p.mutable_grad().reset();
  auto x = input.detach().clone().requires_grad_(input.requires_grad());
  torch::manual_seed(seed);
  weighted_loss(forward(x)).backward();
  auto grads = take_grads(model);
  if (x.requires_grad()) grads["<input>"] = x.grad().defined() ? x.grad().clone() : torch::Tensor();
  return grads;
}

// ---------------------------------------------------------------------------------------------
// Randomized tests (test_randomized_parity.cpp, test_randomized_programs.cpp)

/// The seeds a randomized test runs: a fixed range (the same cases every run, so a change that
/// breaks one is seen at once) and a per-run random range beside it (new cases every run, so CI
/// does not repeat the same cases forever). From the environment both generators share:
///   ACTCKPT_PARITY_SEED=<seed>          one case (a replay); nothing else runs
///   ACTCKPT_PARITY_CASES=<n>            fixed cases (default `fixed_cases`)
///   ACTCKPT_PARITY_BASE_SEED=<seed>     first fixed seed (default `default_base`)
///   ACTCKPT_PARITY_RANDOM_SEED=<seed>   first seed of the per-run random range (default: drawn
///                                       from std::random_device; .ci/run sets and prints one)
///   ACTCKPT_PARITY_RANDOM_CASES=<n>     cases in the random range (default `random_cases`)
/// Both ranges are printed (doctest MESSAGE and stdout, so a passing ctest log shows them too).
struct Seeds {
  std::vector<uint64_t> fixed, random;
  uint64_t fixed_base = 0, random_base = 0;
  bool replay = false;
  std::vector<uint64_t> all() const {
    auto out = fixed;
    out.insert(out.end(), random.begin(), random.end());
    return out;
  }
};

inline const char* nonempty_env(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : nullptr;
}

inline Seeds randomized_seeds(const char* what, uint64_t default_base, int fixed_cases, int random_cases) {
  Seeds s;
  if (const char* one = nonempty_env("ACTCKPT_PARITY_SEED")) {
    s.replay = true;
    s.fixed.push_back(std::stoull(one));
    MESSAGE(std::string(what), ": replaying one case, ACTCKPT_PARITY_SEED=", std::string(one));
    return s;
  }
  s.fixed_base = default_base;
  if (const char* b = nonempty_env("ACTCKPT_PARITY_BASE_SEED"))
    s.fixed_base = std::string(b) == "random" ? std::random_device{}() : std::stoull(b);
  if (const char* n = nonempty_env("ACTCKPT_PARITY_CASES")) fixed_cases = std::stoi(n);
  // 32 random bits from the device, shifted clear of the fixed bases (all below 2^32).
  s.random_base = (uint64_t{1} << 40) + std::random_device{}();
  if (const char* r = nonempty_env("ACTCKPT_PARITY_RANDOM_SEED")) s.random_base = std::stoull(r);
  if (const char* n = nonempty_env("ACTCKPT_PARITY_RANDOM_CASES")) random_cases = std::stoi(n);
  for (int i = 0; i < fixed_cases; ++i) s.fixed.push_back(s.fixed_base + static_cast<uint64_t>(i));
  for (int i = 0; i < random_cases; ++i) s.random.push_back(s.random_base + static_cast<uint64_t>(i));
  std::ostringstream line;
  line << what << ": " << fixed_cases << " fixed cases, seeds " << s.fixed_base << ".." << s.fixed_base + fixed_cases - 1
       << "; " << random_cases << " per-run random cases, seeds " << s.random_base << ".."
       << s.random_base + random_cases - 1 << " (replay this run's: ACTCKPT_PARITY_RANDOM_SEED=" << s.random_base << ")";
  MESSAGE(line.str());
  std::cout << line.str() << std::endl;
  return s;
}

/// The process's checkpoint form, as its environment variable names it.
inline const char* process_form_name() {
  return actckpt::resolve(actckpt::CheckpointForm::process_default) == actckpt::CheckpointForm::reentrant
             ? "reentrant"
             : "non_reentrant";
}

/// The command that replays `seed` in this process's checkpoint form (a failure in the
/// `.reentrant` ctest run must replay in that form, else it passes).
inline std::string replay_command(uint64_t seed, const std::string& test_pattern) {
  std::ostringstream s;
  s << "ACTCKPT_PARITY_SEED=" << seed << " ACTCKPT_CHECKPOINT_FORM=" << process_form_name()
    << " <build>/tests/actckpt_tests -tc='" << test_pattern << "'";
  return s.str();
}

/// Every policy the library has, as the generators draw them.
enum DrawnPolicy : int { no_offload, sync_offload, async_offload, offload_saved, sync_offload_saved, policy_kinds };
inline const char* const policy_names[] = {"NoOffload", "SyncOffload", "AsyncOffload", "OffloadSaved", "SyncOffloadSaved"};

/// What a wrapped layer does with its options resolved (a policy's options, or StashOptions set
/// at run time, may turn a NoOffload layer into an offload-saved one and the other way round).
enum class Behaviour { not_checkpointed, recompute_non_reentrant, recompute_reentrant, offload_saved };

inline Behaviour behaviour_of(const actckpt::StashOptions& o) {
  if (o.offload_saved) return Behaviour::offload_saved;  // no recompute: the form does not matter
  if (!o.checkpoint) return Behaviour::not_checkpointed;
  return actckpt::resolve(o.form) == actckpt::CheckpointForm::reentrant ? Behaviour::recompute_reentrant
                                                                           : Behaviour::recompute_non_reentrant;
}

/// The options a wrapped layer runs with: its policy's, or those drawn for it at run time.
inline actckpt::StashOptions policy_options(int policy) {
  switch (policy) {
    case no_offload: return actckpt::NoOffload::options();
    case sync_offload: return actckpt::SyncOffload::options();
    case async_offload: return actckpt::AsyncOffload::options();
    case offload_saved: return actckpt::OffloadSaved::options();
    default: return actckpt::SyncOffloadSaved::options();
  }
}

/// Counts of what a generator exercised, by name ("policy OffloadSaved", "form reentrant",
/// "on_exhausted throw_error", ...), printed at the end and checked: a generator that stops
/// drawing something it claims to cover fails instead of passing without testing it.
struct Exercised {
  std::map<std::string, int> counts;
  void add(const std::string& what, int n = 1) { counts[what] += n; }
  int operator[](const std::string& what) const {
    auto it = counts.find(what);
    return it == counts.end() ? 0 : it->second;
  }
  std::string summary() const {
    std::ostringstream s;
    for (const auto& [what, n] : counts) s << "\n  " << what << ": " << n;
    return s.str();
  }
};

/// Counts one wrapped layer: its policy, its form, its resolved behaviour, and each StashOptions
/// field's value.
inline void count_wrapped_layer(Exercised& e, int policy, bool overridden, const actckpt::StashOptions& o) {
  const std::string form = actckpt::resolve(o.form) == actckpt::CheckpointForm::reentrant ? "reentrant" : "non_reentrant";
  e.add(std::string("policy ") + policy_names[policy]);
  e.add(std::string("policy ") + policy_names[policy] + ", form " + form);
  e.add("form " + form);
  static const char* behaviours[] = {"not checkpointed", "recompute, non-reentrant", "recompute, reentrant", "offload-saved"};
  e.add(std::string("runs as ") + behaviours[static_cast<int>(behaviour_of(o))]);
  if (overridden) e.add("StashOptions set at run time");
  e.add("mode " + std::string(actckpt::to_string(o.mode)));
  e.add("keep_on_device " + std::to_string(o.keep_on_device));
  e.add("min_offload_bytes " + std::to_string(o.min_offload_bytes));
  e.add(o.on_exhausted == actckpt::PoolExhaustion::throw_error ? "on_exhausted throw_error" : "on_exhausted keep_on_device");
  e.add(o.checkpoint ? "checkpoint true" : "checkpoint false");
  e.add(o.offload_saved ? "offload_saved true" : "offload_saved false");
  e.add(o.verify_checksums ? "verify_checksums true" : "verify_checksums false");
  e.add("form field " + std::string(actckpt::to_string(o.form)));
}

/// The generator's claim (every policy in every form, every value of every StashOptions field),
/// checked over a run of `cases` cases; a replay of one seed checks nothing here.
inline void check_exercised_everything(const Exercised& e, std::size_t cases) {
  if (cases < 100) return;
  for (const char* policy : policy_names) {
    CHECK_MESSAGE(e[std::string("policy ") + policy] > 0, policy, " never drawn");
    for (const char* form : {"non_reentrant", "reentrant"})
      CHECK_MESSAGE(e[std::string("policy ") + policy + ", form " + form] > 0, policy, " never drawn in the ", form,
                    " form");
  }
  for (const char* what :
       {"runs as not checkpointed", "runs as recompute, non-reentrant", "runs as recompute, reentrant",
        "runs as offload-saved", "StashOptions set at run time", "mode device", "mode sync_host", "mode async_host",
        "keep_on_device 0", "keep_on_device 1", "keep_on_device 2", "on_exhausted throw_error",
        "on_exhausted keep_on_device", "checkpoint false", "offload_saved true", "verify_checksums true",
        "form field process_default", "form field non_reentrant", "form field reentrant"})
    CHECK_MESSAGE(e[what] > 0, what, " never drawn");
}

/// StashOptions a layer gets at run time in a random case, every field drawn: any mode, keep-N
/// 0-2, one of `thresholds` as the size threshold, either pool-exhaustion rule, sometimes not
/// checkpointed or offload-saved instead, checksums on or off, any form field. `pick(lo, hi)`
/// draws an int; the draws are made in that order, so a seed keeps drawing the same case.
template <class Pick>
actckpt::StashOptions draw_stash_options(Pick& pick, const std::array<std::size_t, 3>& thresholds) {
  static const actckpt::StashMode modes[] = {actckpt::StashMode::device, actckpt::StashMode::sync_host,
                                             actckpt::StashMode::async_host};
  static const actckpt::CheckpointForm forms[] = {actckpt::CheckpointForm::process_default,
                                                  actckpt::CheckpointForm::non_reentrant,
                                                  actckpt::CheckpointForm::reentrant};
  actckpt::StashOptions o;
  o.mode = modes[pick(0, 2)];
  o.keep_on_device = static_cast<std::size_t>(pick(0, 2));
  o.min_offload_bytes = thresholds[static_cast<std::size_t>(pick(0, 2))];
  o.on_exhausted = pick(0, 4) == 0 ? actckpt::PoolExhaustion::throw_error : actckpt::PoolExhaustion::keep_on_device;
  const int how = pick(0, 7);
  o.checkpoint = how != 0;
  o.offload_saved = how == 1;
  o.verify_checksums = pick(0, 3) == 0;
  o.form = forms[pick(0, 2)];
  return o;
}

/// " options{async_host, keep 1, min 1024}": what a random case's description says of them.
inline std::string describe_stash_options(const actckpt::StashOptions& o) {
  std::ostringstream s;
  s << " options{" << actckpt::to_string(o.mode) << ", keep " << o.keep_on_device << ", min " << o.min_offload_bytes
    << (o.on_exhausted == actckpt::PoolExhaustion::throw_error ? ", throw when the pool is exhausted" : "")
    << (o.checkpoint ? "" : ", not checkpointed") << (o.offload_saved ? ", offload_saved" : "")
    << (o.verify_checksums ? ", checksums" : "") << ", form " << actckpt::to_string(o.form) << "}";
  return s.str();
}

/// Compares a wrapped step's named tensors with the unwrapped step's: a tensor missing, or
/// defined on one side only, is described in `why`; for each pair defined on both sides,
/// `compare(name, actual, expected, why)` judges the values.
inline void compare_named_tensors(
    const std::map<std::string, torch::Tensor>& actual, const std::map<std::string, torch::Tensor>& expected,
    std::ostream& why,
    const std::function<void(const std::string&, const torch::Tensor&, const torch::Tensor&, std::ostream&)>& compare) {
  for (const auto& [name, e] : expected) {
    auto it = actual.find(name);
    if (it == actual.end()) {
      why << "\n  " << name << ": missing";
      continue;
    }
    const auto& a = it->second;
    if (a.defined() != e.defined()) {
      why << "\n  " << name << ": " << (a.defined() ? "defined" : "undefined") << " wrapped, "
          << (e.defined() ? "defined" : "undefined") << " unwrapped";
      continue;
    }
    if (a.defined()) compare(name, a, e, why);
  }
}

}  // namespace reliability
