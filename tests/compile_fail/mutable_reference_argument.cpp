// EXPECT: by non-const reference
// A non-tensor argument taken by non-const reference is an output parameter: the layer's writes
// would land in the copy actckpt keeps for the recompute, not in the caller's object. Rejected.
#include <actckpt/actckpt.hpp>

struct CountingImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, int64_t& calls) {
    ++calls;
    return x * 2;
  }
};
TORCH_MODULE(Counting);

int main() {
  actckpt::Checkpointed<Counting, actckpt::NoOffload> wrapped(Counting{});
  (void)wrapped;
}
