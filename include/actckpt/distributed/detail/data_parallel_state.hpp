#pragma once
#if !defined(ACTCKPT_DISTRIBUTED_INTERNALS)
#error "actckpt/distributed/detail/data_parallel_state.hpp is internal: include <actckpt/distributed/distributed.hpp>"
#endif
/// \file distributed/detail/data_parallel_state.hpp
/// What a DistributedDataParallel handle (data_parallel.hpp) shares with its copies: the
/// c10d::Reducer and its logger, the buffers to broadcast, the sync flags; and the check that
/// every rank built the same model. Internal: its names may change in any release.

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/nn/module.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/distributed/data_parallel_options.hpp"
#include "actckpt/distributed/process_group.hpp"

namespace actckpt {

namespace detail {

inline void collect_tensors(const at::Tensor& tensor, std::vector<at::Tensor>& out) {
  if (tensor.defined()) out.push_back(tensor);
}
inline void collect_tensors(const std::vector<at::Tensor>& tensors, std::vector<at::Tensor>& out) {
  for (const auto& t : tensors) collect_tensors(t, out);
}
template <class T>
void collect_tensors(const std::optional<T>& value, std::vector<at::Tensor>& out) {
  if (value) collect_tensors(*value, out);
}
template <class... T>
void collect_tensors(const std::tuple<T...>& tuple, std::vector<at::Tensor>& out) {
  std::apply([&](const auto&... item) { (collect_tensors(item, out), ...); }, tuple);
}
template <class A, class B>
void collect_tensors(const std::pair<A, B>& pair, std::vector<at::Tensor>& out) {
  collect_tensors(pair.first, out);
  collect_tensors(pair.second, out);
}
template <class T>
void collect_tensors(const T&, std::vector<at::Tensor>&) {}  // a non-tensor output: nothing to trace

/// Each parameter's shape and dtype, flattened: [count, (dtype, ndim, sizes...) per parameter].
inline std::vector<int64_t> describe_parameters(const std::vector<at::Tensor>& params) {
  std::vector<int64_t> out{static_cast<int64_t>(params.size())};
  for (const auto& p : params) {
    out.push_back(static_cast<int64_t>(p.scalar_type()));
    out.push_back(p.dim());
    for (auto s : p.sizes()) out.push_back(s);
  }
  return out;
}

inline std::string shape_text(const std::vector<int64_t>& d, std::size_t& i) {
  std::ostringstream text;
  const auto dtype = static_cast<c10::ScalarType>(d[i]);
  const auto ndim = static_cast<std::size_t>(d[i + 1]);
  text << '[';
  for (std::size_t k = 0; k < ndim; ++k) text << (k ? ", " : "") << d[i + 2 + k];
  text << "] " << c10::toString(dtype);
  i += 2 + ndim;
  return text.str();
}

/// The first difference between rank 0's description and another rank's, or "".
inline std::string first_difference(const std::vector<int64_t>& mine, const std::vector<int64_t>& theirs,
                                    const std::vector<std::string>& names, int rank) {
  if (mine[0] != theirs[0]) {
    return "rank 0 has " + std::to_string(mine[0]) + " parameters, rank " + std::to_string(rank) + " has " +
           std::to_string(theirs[0]);
  }
  std::size_t a = 1, b = 1;
  for (int64_t p = 0; p < mine[0]; ++p) {
    const std::string on_zero = shape_text(mine, a), on_rank = shape_text(theirs, b);
    if (on_zero != on_rank) {
      return "parameter " + std::to_string(p) + " (\"" + names[static_cast<std::size_t>(p)] + "\") is " + on_zero +
             " on rank 0 but " + on_rank + " on rank " + std::to_string(rank);
    }
  }
  return {};
}

/// Every rank learns every rank's parameter shapes (two all-gathers), so all of them raise the
/// same actckpt::DistributedError together instead of some waiting in a collective for ever.
inline void check_same_parameters(const World& world, const std::vector<at::Tensor>& params,
                                  const std::vector<std::string>& names) {
  const auto mine = describe_parameters(params);
  const auto on = at::TensorOptions().dtype(at::kLong).device(world.device);
  auto gather = [&](const at::Tensor& local) {
    std::vector<std::vector<at::Tensor>> outputs(1);
    for (int r = 0; r < world.size; ++r) outputs[0].push_back(at::empty_like(local));
    std::vector<at::Tensor> inputs{local};
    world.group->allgather(outputs, inputs)->wait();
    return outputs[0];
  };
  int64_t longest = 0;
  for (const auto& n : gather(at::full({1}, static_cast<int64_t>(mine.size()), on))) {
    longest = std::max(longest, n.item<int64_t>());
  }
  auto padded = at::full({longest}, -1, on);
  padded.slice(0, 0, static_cast<int64_t>(mine.size()))
      .copy_(at::tensor(mine, at::TensorOptions().dtype(at::kLong)));
  const auto all = gather(padded);
  auto as_vector = [](const at::Tensor& t) {
    auto cpu = t.cpu().contiguous();
    return std::vector<int64_t>(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + cpu.numel());
  };
  const auto zero = as_vector(all[0]);
  for (int r = 1; r < world.size; ++r) {
    const auto difference = first_difference(zero, as_vector(all[static_cast<std::size_t>(r)]), names, r);
    if (!difference.empty()) {
      throw DistributedError("actckpt::DistributedDataParallel: the model differs across ranks: " + difference +
                             ". Every rank must build the same model (same sizes, same order).");
    }
  }
}

/// Everything a DistributedDataParallel handle shares with its copies and NoSync guards. Its
/// constructor throws actckpt::UsageError for a World without a group, a parameter on another
/// device than World::device or no parameter that requires grad; DistributedError (from
/// check_same_parameters) when the ranks' models differ.
struct DataParallelState {
  World world;
  DataParallelOptions options;
  std::vector<at::Tensor> buffers;
  std::shared_ptr<c10d::Reducer> reducer;
  std::shared_ptr<c10d::Logger> logger;  // after reducer: destroyed first, as its destructor reads the reducer
  bool require_backward_sync = true;
  bool require_forward_sync = true;  // false after a no_sync forward: buffers were not synced then

  static constexpr std::size_t broadcast_bucket_bytes = 250u << 20;  // Python DDP's

  DataParallelState(torch::nn::Module& module, World w, DataParallelOptions o)
      : world(std::move(w)), options(std::move(o)) {
    ACTCKPT_CHECK(world.group, UsageError, "actckpt::DistributedDataParallel: the World has no process group "
                             "(create it with actckpt::init_process_group)");
    std::vector<at::Tensor> params;
    std::vector<std::string> names;
    for (const auto& item : module.named_parameters()) {
      if (!item.value().requires_grad()) continue;
      if (item.value().device() != world.device) {
        throw UsageError("actckpt::DistributedDataParallel: parameter \"" + item.key() + "\" is on " +
                                    item.value().device().str() + ", but this rank communicates on " +
                                    world.device.str() + ": move the model to World::device first");
      }
      names.push_back(item.key());
      params.push_back(item.value());
    }
    if (params.empty()) {
      throw UsageError("actckpt::DistributedDataParallel: the module has no parameter that requires grad");
    }
    for (const auto& b : module.buffers()) buffers.push_back(b);

    check_same_parameters(world, params, names);
    {
      // All ranks start from rank 0's weights and buffers.
      torch::NoGradGuard no_grad;
      std::vector<at::Tensor> states = params;
      states.insert(states.end(), buffers.begin(), buffers.end());
      c10d::broadcast_coalesced(world.group, states, broadcast_bucket_bytes, 0);
    }

    // Python DDP's bucketing: by size, in reverse registration order (the order backward produces
    // gradients in, roughly); after the first step the Reducer rebuilds them in the order seen.
    auto [bucket_indices, bucket_limits] = c10d::compute_bucket_assignment_by_size(
        params, {static_cast<std::size_t>(options.first_bucket_cap_bytes()), static_cast<std::size_t>(options.bucket_cap_bytes())},
        std::vector<bool>(params.size(), false));
    std::reverse(bucket_indices.begin(), bucket_indices.end());
    std::reverse(bucket_limits.begin(), bucket_limits.end());
    std::unordered_map<std::size_t, std::string> name_of;
    for (std::size_t i = 0; i < names.size(); ++i) name_of[i] = names[i];
    // The Reducer's constructor changed three times in 2.x (read from each release's reducer.hpp):
    // 2.7 dropped the per-bucket size limits (the Reducer derives them itself), 2.8 added
    // skip_all_reduce_unused_params and use_python_reducer, 2.11 a per-bucket cap list (empty:
    // bucket_bytes_cap and first_bucket_bytes_cap as before). Built and run here: 1.13 and 2.15.
    std::vector<bool> sparse(params.size(), false);
    const auto cap = options.bucket_cap_bytes(), first_cap = options.first_bucket_cap_bytes();
    const bool unused = options.find_unused_parameters(), as_view = options.gradient_as_bucket_view();
#if ACTCKPT_TORCH_AT_LEAST(2, 11)
    reducer = std::make_shared<c10d::Reducer>(params, std::move(bucket_indices), world.group, std::move(sparse), cap,
                                              unused, as_view, std::move(name_of), first_cap,
                                              /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false,
                                              /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
#elif ACTCKPT_TORCH_AT_LEAST(2, 8)
    reducer = std::make_shared<c10d::Reducer>(params, std::move(bucket_indices), world.group, std::move(sparse), cap,
                                              unused, as_view, std::move(name_of), first_cap,
                                              /*skip_all_reduce_unused_params=*/false, /*use_python_reducer=*/false);
#elif ACTCKPT_TORCH_AT_LEAST(2, 7)
    reducer = std::make_shared<c10d::Reducer>(params, std::move(bucket_indices), world.group, std::move(sparse), cap,
                                              unused, as_view, std::move(name_of), first_cap);
#else
    reducer = std::make_shared<c10d::Reducer>(params, std::move(bucket_indices), std::move(bucket_limits), world.group,
                                              std::move(sparse), cap, unused, as_view, std::move(name_of), first_cap);
#endif
#if ACTCKPT_TORCH_AT_LEAST(2, 7)
    (void)bucket_limits;
#endif
    logger = std::make_shared<c10d::Logger>(reducer);
    reducer->set_logger(logger);
    logger->set_construction_data_and_log("actckpt::DistributedDataParallel", {}, -1, options.broadcast_buffers(),
                                          /*has_sync_bn=*/false, /*static_graph=*/false);
    reducer->set_ddp_runtime_logging_sample_rate(std::max(1, options.stats_sample_rate()));
  }

  /// Python DDP's pre-forward, step for step.
  bool before_forward() {
    const bool sync = torch::GradMode::is_enabled() && require_backward_sync;
    if (sync) {
      logger->set_runtime_stats_and_log();  // the previous sampled step's timings
      reducer->prepare_for_forward();
    }
    if (torch::GradMode::is_enabled()) reducer->rebuild_buckets();  // once, after the first step
    if (require_forward_sync && options.broadcast_buffers() && !buffers.empty()) {
      torch::NoGradGuard no_grad;
      c10d::broadcast_coalesced(world.group, buffers, broadcast_bucket_bytes, 0);
    }
    return sync;
  }

  void after_forward(bool sync, std::vector<at::Tensor> outputs) {
    require_forward_sync = sync;
    if (!sync) return;
    // The Reducer walks the graph from the outputs only to find unused parameters.
    reducer->prepare_for_backward(options.find_unused_parameters() ? outputs : std::vector<at::Tensor>{});
  }
};

}  // namespace detail

}  // namespace actckpt
