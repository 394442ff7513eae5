#pragma once
/// \file rng_state.hpp
/// Random number generator snapshots, so that a recompute draws the same dropout masks as the
/// forward did (docs/pitfalls.md#p1), and the caller's generators are left as they were.

#include <ATen/Context.h>
#include <ATen/core/Generator.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/Device.h>

#include <mutex>
#include <utility>
#include <vector>

namespace actckpt {

/// The states of the CPU generator and of the default generators of some accelerator devices.
class RngSnapshot {
 public:
  RngSnapshot() = default;

  /// Captures the CPU generator and the generators of `devices` (non-CPU entries only). Only
  /// pass devices already in use: touching a CUDA generator initializes CUDA on that device.
  static RngSnapshot capture(const std::vector<c10::Device>& devices) {
    RngSnapshot s;
    s.cpu_ = read(at::detail::getDefaultCPUGenerator());
    for (const auto& d : devices) {
      if (d.is_cpu() || s.has(d)) continue;
      s.devices_.emplace_back(d, read(at::globalContext().defaultGenerator(d)));
    }
    return s;
  }

  /// Makes every captured generator produce what it produced when captured.
  void apply() const {
    if (!cpu_.defined()) return;
    write(at::detail::getDefaultCPUGenerator(), cpu_);
    for (const auto& [device, state] : devices_) write(at::globalContext().defaultGenerator(device), state);
  }

  const std::vector<std::pair<c10::Device, at::Tensor>>& device_states() const { return devices_; }

 private:
  bool has(const c10::Device& d) const {
    for (const auto& e : devices_)
      if (e.first == d) return true;
    return false;
  }
  static at::Tensor read(at::Generator gen) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    return gen.get_state();
  }
  static void write(at::Generator gen, const at::Tensor& state) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(state);
  }

  at::Tensor cpu_;
  std::vector<std::pair<c10::Device, at::Tensor>> devices_;
};

/// For its lifetime, the generators replay `forked`; on exit the caller's states come back.
class RngReplayGuard {
 public:
  explicit RngReplayGuard(const RngSnapshot& forked, const std::vector<c10::Device>& devices)
      : callers_(RngSnapshot::capture(devices)) {
    forked.apply();
  }
  ~RngReplayGuard() { callers_.apply(); }
  RngReplayGuard(const RngReplayGuard&) = delete;
  RngReplayGuard& operator=(const RngReplayGuard&) = delete;

 private:
  RngSnapshot callers_;
};

}  // namespace actckpt
