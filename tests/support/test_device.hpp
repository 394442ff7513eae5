#pragma once
// The one place a test case takes its device from: ACTCKPT_TEST_DEVICE (cpu, the default, or
// cuda). Every unit and integration case that makes tensors or modules makes them on
// test_device::device() (or with test_device::options()), so one switch runs the whole suite on a
// GPU. A case that cannot take its device from the switch says why with a decorator:
//   TEST_CASE("[cuda] ..." * test_device::needs_cuda())   a CUDA device whatever the switch says;
//                                                         its body starts with require_cuda()
//   TEST_CASE("..." * test_device::cpu_only("why"))       CPU behaviour itself is under test
//   TEST_CASE("..." * test_device::no_tensors())          makes no tensor at all
// A case skipped by them is reported skipped by doctest, ctest and scripts/test.sh, never passed;
// a case that runs without reading the switch and without a decorator fails the run (the doctest
// main's listener, tests/doctest_main.cpp, checks it in every run).

#include <actckpt/base/config.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include "device_switch_ledger.hpp"

#include <stdexcept>
#include <string>

namespace test_device {

/// True when this build has actckpt's CUDA path and a CUDA device is visible; read once.
inline bool cuda_present() {
  static const bool present = ACTCKPT_WITH_CUDA && torch::cuda::is_available();
  return present;
}

/// The device named by ACTCKPT_TEST_DEVICE, read once. An unknown name, or cuda where no CUDA
/// device is available, throws: a suite asked to run on a device must not run elsewhere.
inline torch::Device device() {
  ++device_switch::reads();  // first: a case whose switch throws did take its device from here
  static const torch::Device chosen = [] {
    const std::string name = device_switch::named();
    if (name == "cpu") return torch::Device(torch::kCPU);
    if (name == "cuda") {
      if (!cuda_present()) {
        throw std::runtime_error(
            "ACTCKPT_TEST_DEVICE=cuda but no CUDA device is available to this process (or actckpt was built "
            "without its CUDA path, ACTCKPT_WITH_CUDA=0)");
      }
      return torch::Device(torch::kCUDA, 0);
    }
    throw std::runtime_error("ACTCKPT_TEST_DEVICE must be cpu or cuda, not '" + name + "'");
  }();
  return chosen;
}

/// True when the suite runs on a CUDA device.
inline bool on_cuda() { return device().is_cuda(); }

/// Tensor options on the test device (float32 unless given another dtype).
inline torch::TensorOptions options(torch::ScalarType dtype = torch::kFloat) {
  return torch::TensorOptions().dtype(dtype).device(device());
}

/// `module`, moved onto the test device (a LibTorch module holder: Linear, Sequential, ...).
template <class Module>
Module on_device(Module module) {
  module->to(device());
  return module;
}

/// Decorator: the case needs a CUDA device whatever the switch says (its name carries "[cuda]").
/// Where there is none it is skipped, unless ACTCKPT_REQUIRE_CUDA=1: then it runs and fails.
struct needs_cuda {
  void fill(doctest::detail::TestCase& tc) const {
    device_switch::declare(tc.m_file.c_str(), tc.m_line, device_switch::Declared::needs_cuda);
    if (!cuda_present() && !device_switch::cuda_required()) tc.m_skip = true;
  }
};

/// The first statement of a needs_cuda case: fails it (never passes it) where CUDA is missing.
inline void require_cuda() {
  if (!ACTCKPT_WITH_CUDA) {
    FAIL("this case needs CUDA, but actckpt was built without its CUDA path (ACTCKPT_WITH_CUDA=0: the LibTorch "
         "found has no torch_cuda)");
  }
  if (!cuda_present()) FAIL("this case needs CUDA, but no CUDA device is available to this process");
}

/// Decorator: the case tests CPU behaviour itself (`why` says which); skipped when the switch
/// says cuda.
struct cpu_only {
  const char* why;
  void fill(doctest::detail::TestCase& tc) const {
    device_switch::declare(tc.m_file.c_str(), tc.m_line, device_switch::Declared::cpu_only);
    tc.m_description = why;
    if (device_switch::named() != "cpu") tc.m_skip = true;
  }
};

/// Decorator: the case makes no tensor (it checks types, options or arithmetic), so it runs the
/// same whatever the switch says.
struct no_tensors {
  void fill(doctest::detail::TestCase& tc) const {
    device_switch::declare(tc.m_file.c_str(), tc.m_line, device_switch::Declared::no_tensors);
  }
};

}  // namespace test_device
