#pragma once
// What the doctest main needs to know about the device switch (tests/support/test_device.hpp),
// without LibTorch: how often a case read the switch, and which cases declared that they run on
// one device only or make no tensors. The main's listener (tests/doctest_main.cpp) uses it to
// count the cases run per device, to report the cases that cannot run here as skipped (never
// passed), and to fail a run in which a case ran without taking its device from the switch.

#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <utility>

namespace device_switch {

/// How a case relates to the switch, as its decorator declared it (none: it must read the switch).
enum class Declared { none, needs_cuda, cpu_only, no_tensors };

/// Times test_device::device() was called, process-wide: a case that made tensors on the switch's
/// device raised it while it ran.
inline std::atomic<unsigned long>& reads() {
  static std::atomic<unsigned long> n{0};
  return n;
}

/// The declarations, by the case's file and line (template cases share one).
inline std::map<std::pair<std::string, int>, Declared>& declarations() {
  static std::map<std::pair<std::string, int>, Declared> d;
  return d;
}

inline void declare(const char* file, int line, Declared what) { declarations()[{file, line}] = what; }

inline Declared declared(const char* file, int line) {
  const auto& d = declarations();
  const auto it = d.find({file, line});
  return it == d.end() ? Declared::none : it->second;
}

/// The switch's value as named by ACTCKPT_TEST_DEVICE ("cpu" when unset or empty), read without
/// touching CUDA: decorators evaluate it while cases register (static initialization).
inline std::string named() {
  const char* env = std::getenv("ACTCKPT_TEST_DEVICE");
  return env == nullptr || *env == '\0' ? "cpu" : env;
}

/// ACTCKPT_REQUIRE_CUDA=1 (the GPU check sets it): a case that needs CUDA runs, and fails, where
/// CUDA is missing instead of being skipped.
inline bool cuda_required() {
  const char* env = std::getenv("ACTCKPT_REQUIRE_CUDA");
  return env != nullptr && std::string(env) == "1";
}

}  // namespace device_switch
