// EXPECT: std::span of mutable elements
// A span of mutable elements lets the layer write to the caller's memory in the forward and to
// actckpt's copy in the recompute: rejected at compile time.
#include <actckpt/actckpt.hpp>

#include <span>

struct RecordMaxImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, std::span<float> out) {
    out[0] = x.max().item<float>();
    return x * 2;
  }
};
TORCH_MODULE(RecordMax);

int main() {
  actckpt::Checkpointed<RecordMax, actckpt::NoOffload> wrapped(RecordMax{});
  (void)wrapped;
}
