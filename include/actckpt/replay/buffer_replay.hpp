#pragma once
/// \file replay/buffer_replay.hpp
/// Buffers (BatchNorm's running statistics) change once per step: a recompute runs the layer's
/// forward again, and whatever it does to the buffers is undone when it ends.

#include <ATen/core/Tensor.h>
#include <c10/core/GradMode.h>

#include <cstddef>
#include <utility>
#include <vector>

namespace actckpt::detail {

/// For the lifetime of the guard nothing the recompute does to the layer's buffers sticks:
/// BatchNorm's running statistics change once per step, in the forward (docs/pitfalls.md#p7).
class BufferRestoreGuard {
 public:
  explicit BufferRestoreGuard(std::vector<at::Tensor> buffers) : buffers_(std::move(buffers)) {
    c10::NoGradGuard no_grad;
    saved_.reserve(buffers_.size());
    for (const auto& b : buffers_) saved_.push_back(b.defined() ? b.clone() : b);
  }
  ~BufferRestoreGuard() {
    c10::NoGradGuard no_grad;
    for (std::size_t i = 0; i < buffers_.size(); ++i)
      if (buffers_[i].defined()) buffers_[i].copy_(saved_[i]);
  }
  BufferRestoreGuard(const BufferRestoreGuard&) = delete;
  BufferRestoreGuard& operator=(const BufferRestoreGuard&) = delete;

 private:
  std::vector<at::Tensor> buffers_;
  std::vector<at::Tensor> saved_;
};

}  // namespace actckpt::detail
