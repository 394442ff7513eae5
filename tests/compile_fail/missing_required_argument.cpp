// EXPECT: accepts_leading_arguments
// A short call compiles only where the layer's own forward accepts it: leaving out an argument
// that has no default is a compile-time error, not a run-time one.
#include <actckpt/actckpt.hpp>

struct MaskedImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, const at::Tensor& mask) { return x * mask; }
};
TORCH_MODULE(Masked);

int main() {
  actckpt::Checkpointed<Masked> wrapped(Masked{});
  auto y = wrapped(at::ones({2}));  // the mask has no default
  (void)y;
}
