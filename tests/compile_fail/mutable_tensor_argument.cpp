// EXPECT: CheckpointableLayer
// A forward taking a tensor by non-const reference may write to its input, and the recompute
// would then read other data than the forward did: rejected at compile time.
#include <actckpt/actckpt.hpp>

struct WriterImpl : torch::nn::Module {
  at::Tensor forward(at::Tensor& x) { return x; }
};
TORCH_MODULE(Writer);

int main() {
  actckpt::Checkpointed<Writer, actckpt::SyncOffload> wrapped(Writer{});
  (void)wrapped;
}
