// EXPECT: takes a list of tensors
// at::TensorList views the caller's array and its tensors would not be autograd inputs of the
// checkpoint: rejected at compile time, with what to pass instead.
#include <actckpt/actckpt.hpp>

struct ConcatImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, at::TensorList others) { return at::cat(others).sum() + x; }
};
TORCH_MODULE(Concat);

int main() {
  actckpt::Checkpointed<Concat, actckpt::SyncOffload> wrapped(Concat{});
  (void)wrapped;
}
