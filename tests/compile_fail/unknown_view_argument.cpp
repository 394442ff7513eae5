// EXPECT: looks like a non-owning view
// A type actckpt does not know that looks like a view (trivially copyable, with a data()
// pointer) is rejected at compile time, naming the customization point that would make it work.
#include <actckpt/actckpt.hpp>

struct FloatsView {
  const float* ptr;
  std::size_t count;
  const float* data() const { return ptr; }
};

struct WeighImpl : torch::nn::Module {
  at::Tensor forward(const at::Tensor& x, FloatsView w) { return x * w.data()[0]; }
};
TORCH_MODULE(Weigh);

int main() {
  actckpt::Checkpointed<Weigh, actckpt::AsyncOffload> wrapped(Weigh{});
  (void)wrapped;
}
