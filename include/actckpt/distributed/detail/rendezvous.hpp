#pragma once
#if !defined(ACTCKPT_DISTRIBUTED_INTERNALS)
#error "actckpt/distributed/detail/rendezvous.hpp is internal: include <actckpt/distributed/distributed.hpp>"
#endif
/// \file distributed/detail/rendezvous.hpp
/// How init_process_group (process_group.hpp) meets the other ranks: the settings read from
/// torchrun's environment, the TCP store, the wait for every rank, Gloo's network interface and
/// the group object of each LibTorch version. Internal: its names may change in any release.

#include <actckpt/base/config.hpp>

#include <c10/core/Device.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

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
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "actckpt/base/errors.hpp"

namespace actckpt {

namespace detail {

/// A setting init_process_group cannot use: actckpt::UsageError, saying how to launch instead.
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
/// error when there is none); anything that is not a whole number in range is refused by name
/// (actckpt::UsageError, from bad_environment).
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
/// use". Launched by hand, rank 0 hosts it. Throws actckpt::DistributedError when the store
/// cannot be hosted or reached by `deadline`.
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
      // Caught just below, and reported as the DistributedError every other failure here is.
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
/// with an actckpt::DistributedError naming the missing ranks, by `deadline`, before Gloo or
/// NCCL waits for them (also a DistributedError when the store itself is lost meanwhile).
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

}  // namespace actckpt
