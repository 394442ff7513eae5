#pragma once
/// \file distributed/process_group.hpp
/// Joining the ranks of a data-parallel run: ProcessGroupOptions (what torchrun's environment
/// says, or the caller), World (this rank's place and the c10d process group) and
/// init_process_group, which reaches the rendezvous store, waits for every rank and builds the
/// Gloo (CPU) or NCCL (CUDA) group. Included by <actckpt/distributed/distributed.hpp>.
///
/// Across hosts (torchrun --nnodes=N on each), name the interface that joins them:
/// GLOO_SOCKET_IFNAME for Gloo (read here, in init_process_group), NCCL_SOCKET_IFNAME for NCCL
/// (read by NCCL itself). Unset, Gloo binds to the address this host's name resolves to, which on
/// a host with several networks may be one the others cannot reach. The store is reached at
/// MASTER_ADDR regardless. ProcessGroupOptions::timeout bounds every wait for another host.

#include <actckpt/base/config.hpp>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <torch/arg.h>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#if ACTCKPT_WITH_CUDA && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define ACTCKPT_WITH_NCCL 1
#else
#define ACTCKPT_WITH_NCCL 0
#endif

#include <chrono>
#include <exception>
#include <optional>
#include <string>
#include <vector>

#include "actckpt/base/errors.hpp"

// The rendezvous helpers are internal to this room (detail/rendezvous.hpp refuses other includers).
#define ACTCKPT_DISTRIBUTED_INTERNALS
#include "actckpt/distributed/detail/rendezvous.hpp"

namespace actckpt {

/// How to join the process group. Every field left unset is read from the environment that
/// torchrun gives each worker (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT,
/// TORCHELASTIC_USE_AGENT_STORE, TORCHELASTIC_RESTART_COUNT); set them to launch by hand.
struct ProcessGroupOptions {
  /// kCPU: Gloo. kCUDA: NCCL, on the GPU numbered LOCAL_RANK (made the current device first).
  TORCH_ARG(c10::DeviceType, device_type) = c10::kCPU;
  /// Limit for the rendezvous (reaching the store and waiting there for every rank, together) and
  /// for every collective: a rank that died, never came or lost its link makes the others fail
  /// with an error after this long instead of waiting for ever. Across hosts, choose it above
  /// the longest pause a healthy run has between collectives (a checkpoint save, an evaluation).
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
  TORCH_ARG(std::optional<int>, rank) = std::nullopt;
  TORCH_ARG(std::optional<int>, world_size) = std::nullopt;
  TORCH_ARG(std::optional<int>, local_rank) = std::nullopt;
  TORCH_ARG(std::optional<std::string>, master_addr) = std::nullopt;
  TORCH_ARG(std::optional<int>, master_port) = std::nullopt;
};

/// This process's place in the group, and the group itself (a c10d::ProcessGroup).
struct World {
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  c10::intrusive_ptr<c10d::Store> store;
  int rank = 0;
  int size = 1;
  int local_rank = 0;
  /// Where this rank's model and the tensors it communicates live (cpu, or cuda:LOCAL_RANK).
  c10::Device device = c10::kCPU;
  std::string backend;  // "gloo" or "nccl"

  bool is_main() const { return rank == 0; }
  /// Waits until every rank has reached this call. After the timeout, or when a rank is gone, it
  /// throws c10d's own error (c10::Error, or Gloo's IoException): a failure of the group, not of
  /// the caller, so not an actckpt::Error.
  void barrier() const { group->barrier()->wait(); }
};

/// Joins the process group that torchrun (or the caller) describes. Each process calls it once,
/// before building its model. Throws actckpt::UsageError naming the variable for a missing or
/// invalid setting (or a bad timeout, a device type other than CPU/CUDA, CUDA without NCCL, a
/// LOCAL_RANK without a GPU), actckpt::DistributedError when the store or the other ranks cannot
/// be reached within the timeout (both are std::runtime_errors).
inline World init_process_group(const ProcessGroupOptions& options = {}) {
  World world;
  world.size = detail::integer_setting(options.world_size(), "WORLD_SIZE", std::nullopt, 1, 1 << 20);
  world.rank = detail::integer_setting(options.rank(), "RANK", std::nullopt, 0, 1 << 20);
  if (world.rank >= world.size) {
    detail::bad_environment("RANK=" + std::to_string(world.rank) + " must be below WORLD_SIZE=" +
                            std::to_string(world.size));
  }
  world.local_rank = detail::integer_setting(options.local_rank(), "LOCAL_RANK", world.rank, 0, 1 << 20);
  const std::string addr = options.master_addr() ? *options.master_addr()
                                                 : detail::environment("MASTER_ADDR").value_or("");
  if (addr.empty()) detail::bad_environment("MASTER_ADDR is not set");
  const int port = detail::integer_setting(options.master_port(), "MASTER_PORT", std::nullopt, 1, 65535);
  if (options.timeout().count() <= 0) {
    throw UsageError("actckpt::init_process_group: the timeout must be positive");
  }

  const bool nccl = options.device_type() == c10::kCUDA;
  if (!nccl && options.device_type() != c10::kCPU) {
    throw UsageError("actckpt::init_process_group: the device type must be CPU (Gloo) or CUDA (NCCL)");
  }
#if ACTCKPT_WITH_NCCL
  if (nccl) {
    if (world.local_rank >= static_cast<int>(c10::cuda::device_count())) {
      detail::bad_environment("LOCAL_RANK=" + std::to_string(world.local_rank) + " has no GPU (this machine has " +
                              std::to_string(c10::cuda::device_count()) + ")");
    }
    // Before NCCL creates its communicator, which binds to the current device.
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(world.local_rank));
    world.device = c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(world.local_rank));
  }
#else
  if (nccl) {
    throw UsageError(
        "actckpt::init_process_group: NCCL (CUDA) was asked for, but this LibTorch has no NCCL process "
        "group (a CPU build, or ACTCKPT_WITH_CUDA is off); use the CPU device type (Gloo)");
  }
#endif

  const auto deadline = std::chrono::steady_clock::now() + options.timeout();
  world.store = detail::rendezvous_store(addr, port, world.rank, world.size, options.timeout(), deadline);
  detail::wait_for_every_rank(*world.store, world.rank, world.size, deadline, options.timeout(),
                              "MASTER_ADDR=" + addr + " MASTER_PORT=" + std::to_string(port));
  try {
    if (nccl) {
#if ACTCKPT_WITH_NCCL
      auto nccl_options = c10d::ProcessGroupNCCL::Options::create();
      nccl_options->timeout = options.timeout();
      auto backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(world.store, world.rank, world.size, nccl_options);
      world.group = detail::group_of(backend, world.store, world.rank, world.size, c10::kCUDA, true);
      world.backend = "nccl";
#endif
    } else {
      auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
      gloo_options->devices.push_back(detail::gloo_device());
      auto backend = c10::make_intrusive<c10d::ProcessGroupGloo>(world.store, world.rank, world.size, gloo_options);
      world.group = detail::group_of(backend, world.store, world.rank, world.size, c10::kCPU, false);
      world.backend = "gloo";
    }
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw DistributedError("actckpt::init_process_group: rank " + std::to_string(world.rank) + " of " +
                             std::to_string(world.size) + " could not connect to the other ranks within " +
                             std::to_string(options.timeout().count()) +
                             " ms (did every rank start?): " + what.substr(0, what.find('\n')));
  }
  return world;
}

/// `tensor` summed over all ranks and divided by their number, in place; returns it. (Gloo has
/// no AVG reduction, so this is SUM then a division, for every backend alike.) A failed or
/// timed-out all-reduce throws c10d's own error, as World::barrier.
inline at::Tensor average_across_ranks(const World& world, at::Tensor tensor) {
  std::vector<at::Tensor> tensors{tensor};
  world.group->allreduce(tensors)->wait();
  return tensor.div_(world.size);
}

}  // namespace actckpt
