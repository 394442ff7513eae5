#pragma once
/// \file distributed/data_parallel.hpp
/// DistributedDataParallel: any module holder, its gradients averaged across the ranks of a World
/// by c10d::Reducer, bucket by bucket during backward. Included by
/// <actckpt/distributed/distributed.hpp>.

#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "actckpt/distributed/data_parallel_options.hpp"
#include "actckpt/distributed/process_group.hpp"

// The shared state is internal to this room (detail/data_parallel_state.hpp refuses other includers).
#define ACTCKPT_DISTRIBUTED_INTERNALS
#include "actckpt/distributed/detail/data_parallel_state.hpp"

namespace actckpt {

/// Data parallelism for any module holder (`Checkpointed` layers inside, any policy): call it
/// like the module; backward then averages the gradients across the ranks of `world`.
///
/// At construction every rank checks that all ranks hold the same parameter shapes (otherwise an
/// actckpt::DistributedError naming the first difference, on every rank) and takes rank 0's
/// parameters and buffers. A World without a group, a parameter on another device than
/// World::device, or a module with no parameter that requires grad is an actckpt::UsageError. Every rank
/// must run the same number of synced forward/backward steps. Copies share one state (like
/// module holders). Each process has its own offload context (one per training thread, as
/// without data parallelism).
template <class ModuleHolder>
class DistributedDataParallel {
 public:
  DistributedDataParallel(ModuleHolder module, World world, DataParallelOptions options = {})
      : module_(std::move(module)),
        state_(std::make_shared<detail::DataParallelState>(*module_.ptr(), std::move(world), std::move(options))) {}

  /// The module's forward, with the Reducer told that a backward is coming (unless no_sync).
  template <class... Args>
  decltype(auto) operator()(Args&&... args) {
    const bool sync = state_->before_forward();
    auto output = module_(std::forward<Args>(args)...);
    std::vector<at::Tensor> tensors;
    if (sync && state_->options.find_unused_parameters()) detail::collect_tensors(output, tensors);
    state_->after_forward(sync, std::move(tensors));
    return output;
  }

  /// While it lives, forward/backward only accumulate gradients locally (no communication); the
  /// first step after it averages everything accumulated. For gradient accumulation:
  ///   { auto guard = ddp.no_sync(); loss(ddp(micro1)).backward(); }  loss(ddp(micro2)).backward();
  class NoSync {
   public:
    explicit NoSync(std::shared_ptr<detail::DataParallelState> state)
        : state_(std::move(state)), previous_(state_->require_backward_sync) {
      state_->require_backward_sync = false;
    }
    ~NoSync() { state_->require_backward_sync = previous_; }
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    std::shared_ptr<detail::DataParallelState> state_;
    bool previous_;
  };
  [[nodiscard]] NoSync no_sync() { return NoSync(state_); }

  ModuleHolder& module() { return module_; }
  ModuleHolder& operator*() { return module_; }
  auto* operator->() { return module_.get(); }
  const World& world() const { return state_->world; }
  /// The engine itself, for what this wrapper does not expose (comm hooks, static graph).
  c10d::Reducer& reducer() { return *state_->reducer; }

  /// The Reducer's timings (see DataParallelOptions::stats_sample_rate) and the bytes all-reduced.
  CommStats comm_stats() const {
    auto data = state_->logger->get_ddp_logging_data();
    auto value = [&](const char* key) {
      auto it = data.ints_map.find(key);
      return it == data.ints_map.end() ? int64_t{0} : it->second;
    };
    CommStats stats;
    stats.last_sampled_step = value("iteration");
    stats.forward_compute_ns = value("avg_forward_compute_time");
    stats.backward_compute_ns = value("avg_backward_compute_time");
    stats.backward_comm_ns = value("avg_backward_comm_time");
    stats.backward_overlap_ns = value("avg_backward_compute_comm_overlap_time");
    stats.bucket_bytes = state_->logger->get_bucket_sizes();
    for (auto b : stats.bucket_bytes) stats.bytes_per_step += b;
    return stats;
  }

 private:
  ModuleHolder module_;
  std::shared_ptr<detail::DataParallelState> state_;
};

}  // namespace actckpt
