#pragma once
// Helpers of the measurement tests (split out of the former tests/test_memory.cpp into the
// memory meter, the memory timeline and the model stack): tensors of known size, a small
// checkpointed chain, and the phases a timeline went through.

#include "test_models.hpp"

#include <actckpt/measure/memory_timeline.hpp>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace memory_fixtures {

using actckpt::MemoryTimeline;
using test_models::IsolatedOffload;
using test_models::MlpBlock;

inline constexpr std::int64_t MiB = 1 << 20;

/// A float tensor of exactly `bytes` bytes (a multiple of 4).
inline torch::Tensor tensor_of_bytes(std::int64_t bytes) { return torch::empty({bytes / 4}, test_device::options(torch::kFloat)); }

/// Three checkpointed MLP blocks labelled "0", "1", "2" on an isolated offload context.
template <class Policy>
struct CheckpointedChain {
  IsolatedOffload iso;
  std::vector<actckpt::Checkpointed<MlpBlock, Policy>> layers;
  explicit CheckpointedChain(int depth = 3, int64_t dim = 64, int64_t hidden = 256) {
    for (int i = 0; i < depth; ++i) {
      layers.emplace_back(MlpBlock(dim, hidden));
      layers.back()->set_offload_context(iso.context);
      layers.back()->set_label(std::to_string(i));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& l : layers) x = l(x);
    return x;
  }
  void drain() {  // the CPU copy worker has finished every queued copy
    while (iso.context->engine().pending() > 0) std::this_thread::yield();
  }
};

inline std::vector<std::string> phases_of(const MemoryTimeline& t) {
  std::vector<std::string> seen;
  auto phases = t.phases();
  for (const auto& s : t.samples())
    if (seen.empty() || seen.back() != phases[s.phase]) seen.push_back(phases[s.phase]);
  return seen;
}

inline bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace memory_fixtures
