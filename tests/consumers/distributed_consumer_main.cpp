// What a user of an installed actckpt's `distributed` component writes: the header compiles and
// links against c10d and Gloo through actckpt::distributed alone, a bad launch is an
// actckpt::UsageError, and a one-rank data-parallel step over Gloo gives the gradients of the
// same model trained without it.
#include <actckpt/actckpt.hpp>
#include <actckpt/distributed/distributed.hpp>
#include <actckpt/distributed.hpp>  // the old flat path: a deprecated forwarding header
#include <torch/torch.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <string>

namespace {

struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t dim) : fc(register_module("fc", torch::nn::Linear(dim, dim))) {}
  torch::Tensor forward(torch::Tensor x) { return torch::tanh(fc(x)) + x; }
  torch::nn::Linear fc;
};
TORCH_MODULE(Block);

/// Three blocks in a chain, each checkpointed (DistributedDataParallel needs a holder whose forward
/// is not a template, which Sequential's is).
struct NetImpl : torch::nn::Module {
  NetImpl() {
    for (int i = 0; i < 3; ++i) blocks->push_back(actckpt::Checkpointed<Block, actckpt::NoOffload>(8));
    register_module("blocks", blocks);
  }
  torch::Tensor forward(torch::Tensor x) { return blocks->forward(x); }
  torch::nn::Sequential blocks;
};
TORCH_MODULE(Net);

/// A port nobody listens on now (the kernel's choice for a socket bound to port 0).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t size = sizeof(address);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), size) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) {
    std::fprintf(stderr, "cannot find a free port\n");
    std::exit(1);
  }
  ::close(fd);
  return ntohs(address.sin_port);
}

int fail(const std::string& why) {
  std::fprintf(stderr, "FAILED: %s\n", why.c_str());
  return 1;
}

}  // namespace

int main() {
  try {
    actckpt::init_process_group(actckpt::ProcessGroupOptions().world_size(0).rank(0).master_addr("127.0.0.1").master_port(1));
    return fail("WORLD_SIZE=0 was accepted");
  } catch (const actckpt::UsageError& e) {
    if (std::string(e.what()).find("WORLD_SIZE=0") == std::string::npos) return fail(e.what());
  }

  const auto world = actckpt::init_process_group(actckpt::ProcessGroupOptions()
                                                     .world_size(1)
                                                     .rank(0)
                                                     .master_addr("127.0.0.1")
                                                     .master_port(free_port())
                                                     .timeout(std::chrono::seconds(30)));
  torch::manual_seed(0);
  Net model;
  actckpt::label_layers(*model);
  torch::nn::Sequential reference;
  for (int i = 0; i < 3; ++i) reference->push_back(Block(8));
  {
    torch::NoGradGuard no_grad;
    auto from = model->parameters();
    auto to = reference->parameters();
    for (std::size_t i = 0; i < from.size(); ++i) to[i].copy_(from[i]);
  }
  actckpt::DistributedDataParallel<Net> ddp(model, world);
  const auto x = torch::randn({4, 8});
  ddp(x).pow(2).sum().backward();
  reference->forward(x).pow(2).sum().backward();
  auto got = model->parameters();
  auto want = reference->parameters();
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (!torch::allclose(got[i].grad(), want[i].grad())) return fail("gradient " + std::to_string(i) + " differs");
  }
  std::printf("consumer OK (one rank over %s)\n", world.backend.c_str());
  return 0;
}
