// EXPECT: takes a raw pointer
// A raw pointer argument may point at memory that is gone when the recompute in backward calls
// the layer again: rejected at compile time, with what to pass instead.
#include <actckpt/actckpt.hpp>

struct ScaleByImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, const float* scale) { return x * *scale; }
};
TORCH_MODULE(ScaleBy);

int main() {
  actckpt::Checkpointed<ScaleBy, actckpt::NoOffload> wrapped(ScaleBy{});
  (void)wrapped;
}
