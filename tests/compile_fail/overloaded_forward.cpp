// EXPECT: CheckpointableLayer
// A layer with an overloaded forward has no single signature to wrap: the concept rejects it
// (the fix, specializing actckpt::forward_signature<Impl>, is named in layer_traits.hpp).
#include <actckpt/actckpt.hpp>

struct TwoForwardsImpl : torch::nn::Module {
  at::Tensor forward(at::Tensor x) { return x; }
  at::Tensor forward(at::Tensor x, at::Tensor) { return x; }
};
TORCH_MODULE(TwoForwards);

int main() {
  actckpt::Checkpointed<TwoForwards, actckpt::AsyncOffload> wrapped(TwoForwards{});
  (void)wrapped;
}
