#pragma once
/// \file hooks/frame_slot_hooks.hpp
/// The saved-tensor hooks both hook-based modes use: while the scope is open, each tensor
/// autograd saves becomes a slot of a frame, and the frame decides what a slot holds (nothing
/// until a recompute fills it, in the non-reentrant form; a host copy, in offload-saved). The
/// template knows frames only through the `SlotFrame` concept, so neither mode depends on the
/// other's insides.

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <concepts>
#include <cstddef>
#include <memory>
#include <utility>

#include "actckpt/hooks/saved_tensor_hooks.hpp"

namespace actckpt::detail {

/// What a frame offers its slots. `add_slot` runs on pack (the thread saving the tensor) and
/// returns the slot's index; `unpack` hands back the slot's tensor when autograd needs it;
/// `release` runs when autograd drops the saved tensor (its node ran, or the graph went) and
/// must not throw (it runs in a destructor).
template <class Frame>
concept SlotFrame = requires(Frame& frame, const at::Tensor& tensor, std::size_t index) {
  { frame.add_slot(tensor) } -> std::same_as<std::size_t>;
  { frame.unpack(index) } -> std::same_as<at::Tensor>;
  { frame.release(index) } noexcept;
};

/// A hooks scope that turns each tensor saved while it is open into a slot of `frame`:
/// `frame->add_slot(t)` on pack, `frame->unpack(i)` on unpack, `frame->release(i)` when autograd
/// drops the saved tensor. The slots' hooks keep the frame alive.
template <SlotFrame Frame>
class FrameSlotHooks final : public SavedTensorHooksFactory {
 public:
  explicit FrameSlotHooks(std::shared_ptr<Frame> frame) : frame_(std::move(frame)) { push_saved_tensor_hooks(this); }
  ~FrameSlotHooks() override { pop_saved_tensor_hooks(this); }
  FrameSlotHooks(const FrameSlotHooks&) = delete;
  FrameSlotHooks& operator=(const FrameSlotHooks&) = delete;

  std::unique_ptr<torch::autograd::SavedVariableHooks> make() override { return std::make_unique<Handle>(frame_); }

 private:
  struct Handle final : torch::autograd::SavedVariableHooks {
    explicit Handle(std::shared_ptr<Frame> frame) : frame(std::move(frame)) {}
    ~Handle() override {
      if (packed) frame->release(index);
    }
    void call_pack_hook(const at::Tensor& t) override {
      index = frame->add_slot(t);
      packed = true;
    }
    at::Tensor call_unpack_hook() override { return frame->unpack(index); }
    std::shared_ptr<Frame> frame;
    std::size_t index = 0;
    bool packed = false;
  };
  std::shared_ptr<Frame> frame_;
};

}  // namespace actckpt::detail
