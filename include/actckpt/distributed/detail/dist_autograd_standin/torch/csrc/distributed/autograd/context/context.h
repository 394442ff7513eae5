#pragma once
// Stand-in for LibTorch's torch/csrc/distributed/autograd/context/context.h, which Debian 12's
// libtorch-dev 1.13 does not ship although c10d/reducer.hpp includes it.
//
// It is reached only through `-idirafter` (the actckpt::distributed CMake target), so wherever
// LibTorch ships the real header (2.x, pip wheels) that one wins. It declares exactly what
// reducer.hpp uses: the GradCallback type (a static_assert compares it with the Reducer's own)
// and ContextPtr (a shared_ptr, whose size does not depend on its element type, so the Reducer's
// layout is the one libtorch_cpu was compiled with). actckpt never uses distributed autograd
// (RPC), the only place a real DistAutogradContext would be created.

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>

namespace torch::distributed::autograd {

class DistAutogradContext {
 public:
  using GradCallback = std::function<bool(at::Tensor&)>;
};

using ContextPtr = std::shared_ptr<DistAutogradContext>;

}  // namespace torch::distributed::autograd
