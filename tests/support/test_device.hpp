#pragma once
// The one place a test case takes its device from: ACTCKPT_TEST_DEVICE (cpu, the default, or
// cuda). Every unit and integration case that makes tensors or modules makes them on
// test_device::device() (or with test_device::options()), so one switch runs the whole suite on a
// GPU. Cases that need a particular device regardless of the switch say so in their name ("[cuda]").

#include <torch/torch.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace test_device {

/// The device named by ACTCKPT_TEST_DEVICE, read once. An unknown name, or cuda where no CUDA
/// device is available, throws: a suite asked to run on a device must not run elsewhere.
inline torch::Device device() {
  static const torch::Device chosen = [] {
    const char* env = std::getenv("ACTCKPT_TEST_DEVICE");
    const std::string name = env == nullptr || *env == '\0' ? "cpu" : env;
    if (name == "cpu") return torch::Device(torch::kCPU);
    if (name == "cuda") {
      if (!torch::cuda::is_available()) {
        throw std::runtime_error("ACTCKPT_TEST_DEVICE=cuda but no CUDA device is available to this process");
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

}  // namespace test_device
