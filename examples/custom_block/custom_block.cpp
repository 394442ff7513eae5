// custom_block: checkpointing your own block, one whose forward takes two tensors (x and a
// padding mask) and a non-tensor flag, in a model that mixes checkpointed and plain layers:
// actckpt::wrap_every<Policy>(blocks, k) checkpoints blocks 0, k, 2k, ... and leaves the rest.
//
// The task: for each position of a padded sequence of random tokens, tell whether the "needle"
// token has appeared so far (causal attention can learn it; padding must be ignored).
//
// It checks what the library promises (same parameter names and bit-identical gradients as the
// unwrapped model), then trains a few steps and prints "custom_block OK".

#include <actckpt/actckpt.hpp>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <vector>

/// Your block: x [batch, tokens, dim], mask [batch, tokens] (1 = token, 0 = padding), and a flag.
/// Any module with one non-template forward taking tensors and copyable values can be wrapped.
class MaskedMixerImpl : public torch::nn::Module {
 public:
  explicit MaskedMixerImpl(int64_t dim)
      : norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
        qkv(register_module("qkv", torch::nn::Linear(dim, 3 * dim))),
        fc1(register_module("fc1", torch::nn::Linear(dim, 4 * dim))),
        fc2(register_module("fc2", torch::nn::Linear(4 * dim, dim))) {}

  torch::Tensor forward(torch::Tensor x, torch::Tensor mask, bool causal) {
    auto parts = qkv(norm(x)).chunk(3, -1);
    auto scores = torch::matmul(parts[0], parts[1].transpose(1, 2)) / std::sqrt(static_cast<double>(x.size(-1)));
    auto hidden = (mask.unsqueeze(1) == 0);  // padding keys are never attended to
    if (causal) hidden = hidden | torch::ones({x.size(1), x.size(1)}, mask.options().dtype(torch::kBool)).triu(1);
    auto attended = torch::matmul(torch::softmax(scores.masked_fill(hidden, -1e9), -1), parts[2]);
    auto h = x + attended;
    return (h + fc2(torch::gelu(fc1(h)))) * mask.unsqueeze(-1);  // padding stays zero
  }

  torch::nn::LayerNorm norm;
  torch::nn::Linear qkv, fc1, fc2;
};
TORCH_MODULE(MaskedMixer);

/// Embedding (plain) -> blocks (every k-th checkpointed) -> per-position logit (plain).
class NeedleModelImpl : public torch::nn::Module {
 public:
  NeedleModelImpl(int64_t vocab, int64_t dim, int64_t layers, int64_t every) {
    embed = register_module("embed", torch::nn::Embedding(vocab, dim));
    std::vector<MaskedMixer> mixers;
    for (int64_t i = 0; i < layers; ++i) mixers.emplace_back(dim);
    if (every > 0) {
      blocks = actckpt::wrap_every<actckpt::AsyncOffload>(mixers, static_cast<std::size_t>(every));
    } else {  // the unwrapped reference model
      blocks = torch::nn::Sequential();
      for (auto& m : mixers) blocks->push_back(m);
    }
    register_module("blocks", blocks);
    head = register_module("head", torch::nn::Linear(dim, 1));
  }

  torch::Tensor forward(torch::Tensor tokens, torch::Tensor mask) {
    auto x = embed(tokens);
    // A Sequential chains one tensor only: call multi-input layers one by one, through AnyModule.
    for (auto& layer : *blocks) x = layer.forward<torch::Tensor>(x, mask, /*causal=*/true);
    return head(x).squeeze(-1);
  }

  torch::nn::Embedding embed{nullptr};
  torch::nn::Sequential blocks{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(NeedleModel);

struct Batch {
  torch::Tensor tokens, mask, labels;
};

Batch make_batch(int64_t batch, int64_t length, int64_t vocab) {
  auto tokens = torch::randint(1, vocab, {batch, length});
  tokens.masked_fill_(torch::rand({batch, length}) < 0.04, 0);  // token 0 is the needle
  auto lengths = torch::randint(length / 2, length + 1, {batch, 1});
  auto mask = (torch::arange(length).unsqueeze(0) < lengths).to(torch::kFloat);
  auto labels = ((tokens == 0).cumsum(1) > 0).to(torch::kFloat);
  return {tokens, mask, labels};
}

torch::Tensor masked_loss(const torch::Tensor& logits, const Batch& b) {
  auto per_token = torch::binary_cross_entropy_with_logits(logits, b.labels, {}, {}, at::Reduction::None);
  return (per_token * b.mask).sum() / b.mask.sum();
}

int main(int argc, char** argv) {
  int64_t layers = 6, every = 2, steps = 40, dim = 32;
  CLI::App app{
      "Wraps a user-written block with two tensor inputs (x, padding mask) and a bool flag, checkpointing\n"
      "every k-th block with actckpt::wrap_every<actckpt::AsyncOffload>(blocks, k). Checks that the\n"
      "checkpointed model has the unwrapped model's parameter names and gradients, then trains it.",
      "custom_block"};
  app.option_defaults()->always_capture_default();
  app.add_option("--layers", layers, "blocks in the model")->check(CLI::Range(1, 64));
  app.add_option("--every", every, "checkpoint blocks 0, k, 2k, ...")->check(CLI::Range(1, 64));
  app.add_option("--steps", steps, "training steps")->check(CLI::Range(1, 100000));
  app.add_option("--dim", dim, "model width")->check(CLI::Range(1, 4096));
  CLI11_PARSE(app, argc, argv);

  try {
    const int64_t vocab = 16, batch = 32, length = 24;
    torch::manual_seed(0);
    NeedleModel reference(vocab, dim, layers, /*every=*/0);
    torch::manual_seed(0);
    NeedleModel model(vocab, dim, layers, every);  // same weights: same seed, same order
    std::cout << "blocks: " << *model->blocks << "\n";

    // 1. The wrapper changes no names: state dicts move between the two models.
    if (model->named_parameters().keys() != reference->named_parameters().keys()) {
      std::cerr << "custom_block: parameter names differ\n";
      return 1;
    }
    // 2. The same gradients, bit for bit (CPU, float32).
    const Batch probe = make_batch(batch, length, vocab);
    masked_loss(reference(probe.tokens, probe.mask), probe).backward();
    masked_loss(model(probe.tokens, probe.mask), probe).backward();
    const auto ref_params = reference->parameters(), params = model->parameters();
    for (std::size_t i = 0; i < params.size(); ++i) {
      if (!torch::equal(params[i].grad(), ref_params[i].grad())) {
        std::cerr << "custom_block: gradient of " << model->named_parameters().keys()[i] << " differs\n";
        return 1;
      }
    }
    std::printf("%zu parameter tensors: same names and bit-identical gradients with and without checkpointing\n",
                params.size());

    // 3. Train the checkpointed model.
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
    double first = 0, last = 0;
    for (int64_t step = 1; step <= steps; ++step) {
      const Batch b = make_batch(batch, length, vocab);
      optimizer.zero_grad();
      auto loss = masked_loss(model(b.tokens, b.mask), b);
      loss.backward();
      optimizer.step();
      last = loss.item<double>();
      if (step == 1) first = last;
      if (step % 10 == 0 || step == steps) std::printf("step %lld/%lld loss %.3g\n", static_cast<long long>(step),
                                                      static_cast<long long>(steps), last);
    }
    std::printf("loss %.3g -> %.3g\n", first, last);
    if (!(last < first)) {
      std::cerr << "custom_block: the loss did not fall\n";
      return 1;
    }
    std::printf("custom_block OK\n");
    return 0;
  } catch (const c10::Error& e) {  // LibTorch's own errors
    std::cerr << "custom_block: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {  // actckpt::Error and the others: the message alone
    std::cerr << "custom_block: " << e.what() << "\n";
    return 1;
  }
}
