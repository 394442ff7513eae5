// EXPECT: CheckpointableLayer
// Checkpointed only wraps a torch::nn module holder with one forward; anything else must be
// rejected by the actckpt::CheckpointableLayer concept, not by an error deep in the template.
#include <actckpt/actckpt.hpp>

int main() {
  actckpt::Checkpointed<int, actckpt::NoOffload> wrapped;
  (void)wrapped;
}
