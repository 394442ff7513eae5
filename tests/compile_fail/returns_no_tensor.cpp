// EXPECT: CheckpointableLayer
// A forward that returns no tensor has nothing to differentiate: rejected at compile time.
#include <actckpt/actckpt.hpp>

struct CountImpl : torch::nn::Module {
  int64_t forward(at::Tensor x) { return x.dim(); }
};
TORCH_MODULE(Count);

int main() {
  actckpt::Checkpointed<Count, actckpt::NoOffload> wrapped(Count{});
  (void)wrapped;
}
