#pragma once
/// \file distributed.hpp
/// Data-parallel training across processes on PyTorch's own distributed engine (c10d): Gloo on
/// CPU, NCCL on CUDA, started by torchrun. Not part of <actckpt/actckpt.hpp>: it pulls in c10d
/// and needs the Gloo headers (Debian: libgloo-dev); link the `actckpt::distributed` CMake target.
///
///   actckpt::World world = actckpt::init_process_group();     // reads torchrun's variables
///   actckpt::DistributedDataParallel<Gpt> ddp(model, world);  // broadcasts rank 0's weights
///   auto loss = criterion(ddp(inputs), targets);              // forward through the wrapper
///   loss.backward();                                          // gradients averaged across ranks,
///   optimizer.step();                                         // bucket by bucket, during backward
///
/// The gradient averaging is c10d::Reducer's, the engine under Python's DistributedDataParallel:
/// parameters are grouped into buckets, each bucket is all-reduced as soon as backward has
/// produced all its gradients (hooks on the parameters' gradient-accumulation nodes, which a
/// Checkpointed layer fires exactly once per backward because its parameters are explicit inputs
/// of its autograd function), and the Reducer's own timer measures how much of the communication
/// hides behind backward (DistributedDataParallel::comm_stats).
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
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#include <torch/nn/module.h>

#if ACTCKPT_WITH_CUDA && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#define ACTCKPT_WITH_NCCL 1
#else
#define ACTCKPT_WITH_NCCL 0
#endif

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"

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
  /// Waits until every rank has reached this call (or the timeout has passed: throws).
  void barrier() const { group->barrier()->wait(); }
};

namespace detail {

[[noreturn]] inline void bad_environment(const std::string& what) {
  throw UsageError(
      "actckpt::init_process_group: " + what +
      ". Launch with `torchrun --no_python --nproc_per_node=N <program> ...`, or set RANK, WORLD_SIZE, "
      "MASTER_ADDR and MASTER_PORT for each process by hand (or in actckpt::ProcessGroupOptions)");
}

inline std::optional<std::string> environment(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

/// An integer option: the given value, else the environment variable, else `fallback` (or an
/// error when there is none); anything that is not a whole number in range is refused by name.
inline int integer_setting(const std::optional<int>& given, const char* name, std::optional<int> fallback,
                           int64_t low, int64_t high) {
  int64_t value = 0;
  if (given) {
    value = *given;
  } else if (auto text = environment(name)) {
    std::size_t used = 0;
    try {
      value = std::stoll(*text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != text->size()) bad_environment(std::string(name) + "=" + *text + " is not a whole number");
  } else if (fallback) {
    return *fallback;
  } else {
    bad_environment(std::string(name) + " is not set");
  }
  if (value < low || value > high) {
    bad_environment(std::string(name) + "=" + std::to_string(value) + " must be between " + std::to_string(low) +
                    " and " + std::to_string(high));
  }
  return static_cast<int>(value);
}

/// Waits until something accepts TCP connections at addr:port; false once `deadline` passes.
/// c10d's own client retries with a growing back-off that overshoots a short timeout by seconds
/// (LibTorch 2.15, nobody listening, 3 s timeout: 5.3-7.5 s); polling every 50 ms here keeps the
/// rendezvous within the timeout. The probe connection is closed unused, which the store ignores.
inline bool wait_until_listening(const std::string& addr, int port, std::chrono::steady_clock::time_point deadline) {
  using namespace std::chrono;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const std::string service = std::to_string(port);
  for (;;) {
    addrinfo* found = nullptr;
    if (::getaddrinfo(addr.c_str(), service.c_str(), &hints, &found) == 0) {
      bool accepted = false;
      for (const addrinfo* a = found; a != nullptr && !accepted; a = a->ai_next) {
        const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (::connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
          accepted = true;
        } else if (errno == EINPROGRESS) {
          const auto left = duration_cast<milliseconds>(deadline - steady_clock::now()).count();
          pollfd writable{fd, POLLOUT, 0};
          if (::poll(&writable, 1, static_cast<int>(std::clamp<int64_t>(left, 0, 200))) == 1) {
            int error = 0;
            socklen_t length = sizeof error;
            accepted = ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0;
          }
        }
        ::close(fd);
      }
      ::freeaddrinfo(found);
      if (accepted) return true;
    }
    const auto now = steady_clock::now();
    if (now >= deadline) return false;
    std::this_thread::sleep_for(std::min<steady_clock::duration>(milliseconds(50), deadline - now));
  }
}

/// The store every rank meets in. Under torchrun the agent already hosts it
/// (TORCHELASTIC_USE_AGENT_STORE=True): workers connect as clients, under the prefix torchrun's
/// Python workers use, and a rank 0 binding the port itself would fail with "Address already in
/// use". Launched by hand, rank 0 hosts it.
inline c10::intrusive_ptr<c10d::Store> rendezvous_store(const std::string& addr, int port, int rank, int world_size,
                                                        std::chrono::milliseconds timeout,
                                                        std::chrono::steady_clock::time_point deadline) {
  const bool agent_store = environment("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(port);
  options.isServer = !agent_store && rank == 0;
  if (!agent_store) options.numWorkers = static_cast<std::size_t>(world_size);  // c10::optional in 1.13, std:: in 2.x
  // Not the store's own wait for the other ranks: 1.13's gives up silently after the timeout
  // (Gloo then waits as long again) and 2.x's error does not say who is missing;
  // wait_for_every_rank does both versions' waiting, within what is left of the timeout.
  options.waitWorkers = false;
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> store;
  try {
    if (!options.isServer && !wait_until_listening(addr, port, deadline)) {
      throw std::runtime_error("nothing accepted a connection there");
    }
    store = c10::make_intrusive<c10d::TCPStore>(addr, options);
  } catch (const std::exception& e) {
    const std::string what = e.what();
    throw DistributedError(
        "actckpt::init_process_group: rank " + std::to_string(rank) + " could not " +
        (options.isServer ? "host" : "reach") + " the rendezvous store at MASTER_ADDR=" + addr +
        " MASTER_PORT=" + std::to_string(port) + " within " + std::to_string(timeout.count()) +
        " ms (is the address right, the port free, and every rank started?): " + what.substr(0, what.find('\n')));
  }
  if (agent_store) {
    const int attempt = integer_setting(std::nullopt, "TORCHELASTIC_RESTART_COUNT", 0, 0, 1 << 30);
    store = c10::make_intrusive<c10d::PrefixStore>("/worker/attempt_" + std::to_string(attempt), store);
  }
  // As torch.distributed.init_process_group: the default group's keys live under their own
  // prefix, so other users of a shared store (RPC, the elastic agent) cannot collide with them.
  return c10::make_intrusive<c10d::PrefixStore>("default_pg", store);
}

/// Every rank announces itself in the store and waits for all the others, so that a rank that
/// never comes (not started, another MASTER_ADDR, a host unreachable) fails every waiting rank
/// with an error naming the missing ranks, by `deadline`, before Gloo or NCCL waits for them.
inline void wait_for_every_rank(c10d::Store& store, int rank, int world_size,
                                std::chrono::steady_clock::time_point deadline, std::chrono::milliseconds timeout,
                                const std::string& where) {
  auto key = [](int r) { return "actckpt_arrived/" + std::to_string(r); };
  store.set(key(rank), std::vector<uint8_t>{1});
  std::vector<std::string> keys;
  for (int r = 0; r < world_size; ++r) keys.push_back(key(r));
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
  try {
    store.wait(keys, std::max(left, std::chrono::milliseconds(1)));
    return;
  } catch (const std::exception&) {  // the store's timeout (c10::Error; DistStoreError in 2.x)
  }
  std::string missing;
  int count = 0;
  try {
    for (int r = 0; r < world_size; ++r) {
      if (store.check({key(r)})) continue;
      if (++count <= 8) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
  } catch (const std::exception& e) {  // the store itself is gone (its host died)
    const std::string what = e.what();
    throw DistributedError("actckpt::init_process_group: rank " + std::to_string(rank) + " of " +
                             std::to_string(world_size) + " lost the rendezvous store " + where +
                             " while waiting for the other ranks (did its host, rank 0 or torchrun's agent, exit?): " +
                             what.substr(0, what.find('\n')));
  }
  if (count == 0) return;  // the last one came just as the time ran out
  if (count > 8) missing += " and " + std::to_string(count - 8) + " more";
  throw DistributedError("actckpt::init_process_group: rank " + std::to_string(rank) + " of " +
                           std::to_string(world_size) + ": rank" + (count > 1 ? "s " : " ") + missing +
                           " did not arrive at the rendezvous store " + where + " within " +
                           std::to_string(timeout.count()) +
                           " ms (the timeout; did every rank start, with the same MASTER_ADDR and MASTER_PORT?)");
}

/// Gloo's network interface: GLOO_SOCKET_IFNAME names it (as for Python's Gloo groups; one name,
/// e.g. `eth1`, or `lo` on one machine); else Gloo takes the interface of the address this host's
/// name resolves to, which on a multi-homed host may not be the one that reaches the others.
inline std::shared_ptr<::gloo::transport::Device> gloo_device() {
  if (auto interface = environment("GLOO_SOCKET_IFNAME"); interface && !interface->empty()) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(*interface);
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

/// LibTorch 2.x splits the group (c10d::ProcessGroup) from its per-device backends.
template <class Backend>
c10::intrusive_ptr<c10d::ProcessGroup> group_of(c10::intrusive_ptr<Backend> backend,
                                                const c10::intrusive_ptr<c10d::Store>& store, int rank,
                                                int world_size, c10::DeviceType device_type,
                                                [[maybe_unused]] bool nccl) {
#if ACTCKPT_TORCH_AT_LEAST(2, 0)
  auto group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, world_size);
  const auto type = nccl ? c10d::ProcessGroup::BackendType::NCCL : c10d::ProcessGroup::BackendType::GLOO;
  group->setDefaultBackend(type);
  group->setBackend(device_type, type, backend);
  return group;
#else
  (void)store, (void)rank, (void)world_size, (void)device_type;
  return backend;
#endif
}

}  // namespace detail

/// Joins the process group that torchrun (or the caller) describes. Each process calls it once,
/// before building its model. Throws std::invalid_argument naming the variable for a missing or
/// invalid setting, std::runtime_error when the store or the other ranks cannot be reached
/// within the timeout.
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
/// no AVG reduction, so this is SUM then a division, for every backend alike.)
inline at::Tensor average_across_ranks(const World& world, at::Tensor tensor) {
  std::vector<at::Tensor> tensors{tensor};
  world.group->allreduce(tensors)->wait();
  return tensor.div_(world.size);
}

/// What DistributedDataParallel does besides averaging gradients.
struct DataParallelOptions {
  /// Parameters that take no part in a step (a branch not taken) get no gradient, so their
  /// bucket never completes: off, the Reducer stops the next step with an error naming them;
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
/// same error together instead of some waiting in a collective for ever.
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

/// Everything a DistributedDataParallel handle shares with its copies and NoSync guards.
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

/// Data parallelism for any module holder (`Checkpointed` layers inside, any policy): call it
/// like the module; backward then averages the gradients across the ranks of `world`.
///
/// At construction every rank checks that all ranks hold the same parameter shapes (an error
/// naming the first difference otherwise) and takes rank 0's parameters and buffers. Every rank
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
