// EXPECT: whose elements are views or pointers
// A container is copied for the recompute, but views inside it would still refer to the caller's
// memory: a std::vector of at::IntArrayRef is rejected at compile time.
#include <actckpt/actckpt.hpp>

#include <vector>

struct MultiReshapeImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, std::vector<at::IntArrayRef> shapes) { return x.reshape(shapes[0]); }
};
TORCH_MODULE(MultiReshape);

int main() {
  actckpt::Checkpointed<MultiReshape, actckpt::NoOffload> wrapped(MultiReshape{});
  (void)wrapped;
}
