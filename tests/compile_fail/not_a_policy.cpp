// EXPECT: OffloadPolicy
// The second argument must satisfy actckpt::OffloadPolicy (a name and static options()).
#include <actckpt/actckpt.hpp>

struct IdentityImpl : torch::nn::Module {
  at::Tensor forward(at::Tensor x) { return x; }
};
TORCH_MODULE(Identity);

struct NotAPolicy {};

int main() {
  actckpt::Checkpointed<Identity, NotAPolicy> wrapped(Identity{});
  (void)wrapped;
}
