#pragma once
// Synthetic step profiles of issue 20's kind, shared by the planner's depth tests
// (tests/unit/planner/test_search_depth.cpp) and its Google Benchmark
// (benchmarks/planner_search_bench.cpp), so that the planning times docs/planner.md quotes come
// from the same chains the tests plan. Needs only the planner's search, no torch::nn.

#include <actckpt/planner/search.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace synthetic_chain {

constexpr double MiB = 1048576.0;

/// A chain as issue 20 describes one: per-layer bytes 1-64 MiB, times 0.5-8 ms, a GPU-like
/// 20 GB/s link, host memory separate. Unlike: every layer drawn anew (a CNN's stages, a U-Net);
/// uniform: the same bytes for every layer and times within 5%.
inline actckpt::StepProfile chain(std::uint64_t seed, std::size_t n, bool uniform) {
  std::mt19937_64 rng(seed);
  auto U = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  auto bytes = [](double mib) { return static_cast<std::int64_t>(mib * MiB); };
  actckpt::StepProfile p;
  p.start_bytes = bytes(U(100, 1000));  // weights, gradients, the batch
  p.head_peak_bytes = p.start_bytes + bytes(U(1, 64));
  p.tail_peak_bytes = bytes(U(1, 64));
  p.tail_ms = U(0.5, 8);
  p.d2h_bytes_per_s = p.h2d_bytes_per_s = 20e9;
  p.host_memory_separate = true;
  const double same_stash = U(1, 64), same_activations = U(1, 64), same_forward = U(0.5, 8);
  std::vector<double> stash(n + 1);  // layer k's input; layer k + 1's input is k's output
  for (auto& s : stash) s = uniform ? same_stash : U(1, 64);
  double kept_step = p.tail_ms;
  for (std::size_t k = 0; k < n; ++k) {
    actckpt::LayerProfile l;
    l.label = "layer " + std::to_string(k);
    l.module_index = k;
    l.stash_bytes = bytes(stash[k]);
    const double out = stash[k + 1], activations = uniform ? same_activations : 2 * U(1, 64);
    const double gradients = uniform ? same_stash : U(1, 64), scratch = uniform ? 8 : U(0, 16);
    l.held_bytes[0] = bytes(out + activations);                  // kept
    l.held_bytes[1] = bytes(out);                                // checkpointed
    l.held_bytes[2] = bytes(out - (k == 0 ? 0 : stash[k]));      // offloaded: its input left
    for (std::size_t m = 0; m < actckpt::profiled_modes; ++m) l.forward_peak_bytes[m] = l.held_bytes[m] + bytes(scratch);
    l.backward_peak_bytes[0] = l.held_bytes[0] + bytes(gradients);
    l.backward_peak_bytes[1] = l.held_bytes[1] + bytes(activations + gradients);
    l.backward_peak_bytes[2] = l.held_bytes[2] + bytes(activations + gradients) + (k == 0 ? 0 : bytes(stash[k]));
    const double jitter = uniform ? U(0.95, 1.05) : 1.0;
    const double forward = (uniform ? same_forward : U(0.5, 8)) * jitter;
    const double backward = forward * (uniform ? 2.0 : U(1.5, 2.5)) * jitter;
    for (std::size_t m = 0; m < actckpt::profiled_modes; ++m) {
      l.forward_ms[m] = forward;
      l.backward_ms[m] = backward + (m == 0 ? 0.0 : forward);
    }
    l.recompute_ms = forward * U(0.9, 1.1);
    // Saved activations (what offload saved moves): most of the activations and, past layer 0,
    // part of the input (the output of the layer below, which may or may not be saved again).
    l.saved_bytes = bytes(activations * (uniform ? 0.9 : U(0.5, 1.0)) + (k == 0 ? 0.0 : stash[k] * (uniform ? 1.0 : U(0, 1))));
    kept_step += forward + backward;
    p.layers.push_back(l);
  }
  for (auto& ms : p.step_ms) ms = kept_step;
  return p;
}

/// The predicted peak of keeping every layer: the top of the budgets worth planning for.
inline std::int64_t keep_all_peak(const actckpt::StepProfile& p, const actckpt::OffloadCosts& costs = {}) {
  return actckpt::evaluate_plan(p, std::vector<actckpt::LayerChoice>(p.layers.size(), actckpt::LayerChoice::keep), costs)
      .peak_bytes;
}

}  // namespace synthetic_chain
