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

/// Bitwise equality (same definedness, shape, dtype, values; NaNs must match too).
inline bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (a.defined() != b.defined()) return false;
  if (!a.defined()) return true;
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) return false;
  if (a.numel() == 0) return true;
  if (a.is_floating_point()) {
    // Compare the bits, so that -0.0 vs 0.0 or differing NaN payloads count as differences.
    auto ai = a.contiguous().view({-1}).view(torch::kByte), bi = b.contiguous().view({-1}).view(torch::kByte);
    return torch::equal(ai, bi);
  }
  return torch::equal(a, b);
}

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

/// The seeds a randomized test runs, from the environment it shares with the other one:
///   ACTCKPT_PARITY_SEED=<seed>       one case (a replay)
///   ACTCKPT_PARITY_CASES=<n>         number of cases (default `default_cases`)
///   ACTCKPT_PARITY_BASE_SEED=<seed>  first seed (default `default_base`, so CI is reproducible;
///                                    "random" draws one)
/// The choice is reported (doctest MESSAGE), `what` naming the test.
inline std::vector<uint64_t> randomized_seeds(const char* what, uint64_t default_base, int default_cases) {
  auto env = [](const char* name) -> const char* {
    const char* v = std::getenv(name);
    return v != nullptr && *v != '\0' ? v : nullptr;
  };
  std::vector<uint64_t> seeds;
  if (const char* one = env("ACTCKPT_PARITY_SEED")) {
    seeds.push_back(std::stoull(one));
    MESSAGE(std::string(what), ": replaying one case, ACTCKPT_PARITY_SEED=", std::string(one));
    return seeds;
  }
  uint64_t base = default_base;
  if (const char* b = env("ACTCKPT_PARITY_BASE_SEED")) base = std::string(b) == "random" ? std::random_device{}() : std::stoull(b);
  const int cases = env("ACTCKPT_PARITY_CASES") ? std::stoi(env("ACTCKPT_PARITY_CASES")) : default_cases;
  for (int i = 0; i < cases; ++i) seeds.push_back(base + static_cast<uint64_t>(i));
  MESSAGE(std::string(what), ": ", cases, " cases, seeds ", base, "..", base + cases - 1);
  return seeds;
}

/// StashOptions a layer gets at run time in a random case: any mode, keep-N 0-2, one of
/// `thresholds` as the size threshold, the keep-on-device fallback. `pick(lo, hi)` draws an int;
/// the draws are made in that order, so a seed keeps drawing the same case.
template <class Pick>
actckpt::StashOptions draw_stash_options(Pick& pick, const std::array<std::size_t, 3>& thresholds) {
  static const actckpt::StashMode modes[] = {actckpt::StashMode::device, actckpt::StashMode::sync_host,
                                             actckpt::StashMode::async_host};
  actckpt::StashOptions o;
  o.mode = modes[pick(0, 2)];
  o.keep_on_device = static_cast<std::size_t>(pick(0, 2));
  o.min_offload_bytes = thresholds[static_cast<std::size_t>(pick(0, 2))];
  o.on_exhausted = actckpt::PoolExhaustion::keep_on_device;
  return o;
}

/// " options{async_host, keep 1, min 1024}": what a random case's description says of them.
inline std::string describe_stash_options(const actckpt::StashOptions& o) {
  std::ostringstream s;
  s << " options{" << actckpt::to_string(o.mode) << ", keep " << o.keep_on_device << ", min " << o.min_offload_bytes << "}";
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
