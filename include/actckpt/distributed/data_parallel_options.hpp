#pragma once
/// \file distributed/data_parallel_options.hpp
/// What DistributedDataParallel (data_parallel.hpp) is told (DataParallelOptions) and what it
/// reports (CommStats): apart from the wrapper, so that its internal state (detail/) can read the
/// options without the wrapper. Included by <actckpt/distributed/distributed.hpp>.

#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace actckpt {

/// What DistributedDataParallel does besides averaging gradients.
struct DataParallelOptions {
  /// Parameters that take no part in a step (a branch not taken) get no gradient, so their
  /// bucket never completes: off, the Reducer stops the next step with an error naming them
  /// (the Reducer's own c10::Error);
  /// on, it searches the graph after every forward and marks them ready itself (costs a graph
  /// walk per step).
  TORCH_ARG(bool, find_unused_parameters) = false;
  /// Gradients become views into the communication buckets (saves one copy and one gradient's
  /// memory). Then zero them in place (`p.grad().zero_()`): 1.13's Optimizer::zero_grad()
  /// throws "Can't detach views in-place" on them.
  TORCH_ARG(bool, gradient_as_bucket_view) = false;
  /// Before each synced forward, rank 0's buffers (BatchNorm statistics) are sent to all ranks.
  TORCH_ARG(bool, broadcast_buffers) = true;
  TORCH_ARG(int64_t, bucket_cap_bytes) = c10d::kDefaultBucketBytesCap;              // 25 MiB
  TORCH_ARG(int64_t, first_bucket_cap_bytes) = c10d::kDefaultFirstBucketBytes;  // 1 MiB
  /// The Reducer times forward, backward and communication on its first 10 steps and then every
  /// N-th (Python's default is 100); 1 times every step.
  TORCH_ARG(int, stats_sample_rate) = c10d::kDDPRuntimeLoggingSampleRate;
};

/// The Reducer's own figures, averaged over the steps it sampled (nanoseconds, as c10d reports).
struct CommStats {
  int64_t last_sampled_step = 0;  // the step the Reducer last timed (0: none yet)
  int64_t forward_compute_ns = 0;
  int64_t backward_compute_ns = 0;
  int64_t backward_comm_ns = 0;      // first bucket's all-reduce start to last one's end
  int64_t backward_overlap_ns = 0;   // first all-reduce start to the end of backward compute
  int64_t bytes_per_step = 0;        // gradient bytes all-reduced in one synced step
  std::vector<int64_t> bucket_bytes;
  /// Share of the communication that ran while backward was still computing (0..1).
  double hidden_fraction() const {
    if (backward_comm_ns <= 0) return 0.0;
    return std::clamp(static_cast<double>(backward_overlap_ns) / static_cast<double>(backward_comm_ns), 0.0, 1.0);
  }
};

}  // namespace actckpt
