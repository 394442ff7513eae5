#pragma once
/// \file models/transformer.hpp
/// The reference model of actckpt's tests, benchmarks and examples: a pre-norm transformer
/// block (RMSNorm, causal multi-head self-attention, residual, RMSNorm, GELU MLP, residual).
/// Not part of the checkpointing API (include it explicitly); it pulls in `torch/nn.h`.
/// \code
///   actckpt::models::TransformerBlock block(
///       actckpt::models::TransformerBlockOptions(1024, 64, 4096).dropout(0.1));
/// \endcode

#include <torch/nn.h>

#include <cmath>
#include <limits>

#include "actckpt/base/errors.hpp"

namespace actckpt::models {

/// Root-mean-square layer norm: x / rms(x) * weight, computed in float32 for stability.
class RMSNormImpl : public torch::nn::Module {
 public:
  explicit RMSNormImpl(int64_t dim, double eps = 1e-6) : eps_(eps) {
    weight = register_parameter("weight", torch::ones({dim}));
  }
  torch::Tensor forward(torch::Tensor x) {
    auto xf = x.to(torch::kFloat);
    auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps_);
    return (normed * weight).to(x.scalar_type());
  }
  torch::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

struct TransformerBlockOptions {
  TransformerBlockOptions(int64_t hidden_dim, int64_t head_dim, int64_t ff_dim)
      : hidden_dim_(hidden_dim), head_dim_(head_dim), ff_dim_(ff_dim) {}
  TORCH_ARG(int64_t, hidden_dim);
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(int64_t, ff_dim);
  /// Dropout after attention and after the MLP (0 disables).
  TORCH_ARG(double, dropout) = 0.0;
};

/// Causal multi-head self-attention with num_heads = hidden_dim / head_dim.
class CausalSelfAttentionImpl : public torch::nn::Module {
 public:
  CausalSelfAttentionImpl(int64_t hidden_dim, int64_t head_dim) : hidden_(hidden_dim), head_dim_(head_dim) {
    ACTCKPT_CHECK(head_dim > 0 && hidden_dim % head_dim == 0, UsageError, "head_dim (", head_dim,
                  ") must divide hidden_dim (", hidden_dim, "): choose hidden_dim = num_heads * head_dim");
    qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(hidden_dim, 3 * hidden_dim).bias(false)));
    proj = register_module("proj", torch::nn::Linear(torch::nn::LinearOptions(hidden_dim, hidden_dim).bias(false)));
  }
  torch::Tensor forward(torch::Tensor x) {
    const auto batch = x.size(0), tokens = x.size(1), heads = hidden_ / head_dim_;
    auto parts = qkv(x).chunk(3, -1);
    auto split = [&](const torch::Tensor& t) { return t.view({batch, tokens, heads, head_dim_}).transpose(1, 2); };
    auto q = split(parts[0]), k = split(parts[1]), v = split(parts[2]);
    auto scores = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(head_dim_)));
    auto future = torch::ones({tokens, tokens}, torch::TensorOptions().dtype(torch::kBool).device(x.device())).triu(1);
    scores = scores.masked_fill(future, -std::numeric_limits<double>::infinity());
    auto y = torch::matmul(torch::softmax(scores, -1), v).transpose(1, 2).reshape({batch, tokens, hidden_});
    return proj(y);
  }
  torch::nn::Linear qkv{nullptr}, proj{nullptr};

 private:
  int64_t hidden_, head_dim_;
};
TORCH_MODULE(CausalSelfAttention);

/// x + Attn(RMSNorm(x)), then h + MLP(RMSNorm(h)) with MLP = Linear, GELU, Linear.
class TransformerBlockImpl : public torch::nn::Module {
 public:
  explicit TransformerBlockImpl(const TransformerBlockOptions& options) : options_(options) {
    norm1 = register_module("norm1", RMSNorm(options.hidden_dim()));
    attn = register_module("attn", CausalSelfAttention(options.hidden_dim(), options.head_dim()));
    norm2 = register_module("norm2", RMSNorm(options.hidden_dim()));
    fc1 = register_module("fc1", torch::nn::Linear(torch::nn::LinearOptions(options.hidden_dim(), options.ff_dim()).bias(false)));
    fc2 = register_module("fc2", torch::nn::Linear(torch::nn::LinearOptions(options.ff_dim(), options.hidden_dim()).bias(false)));
    drop = register_module("drop", torch::nn::Dropout(options.dropout()));
  }
  TransformerBlockImpl(int64_t hidden_dim, int64_t head_dim, int64_t ff_dim)
      : TransformerBlockImpl(TransformerBlockOptions(hidden_dim, head_dim, ff_dim)) {}

  torch::Tensor forward(torch::Tensor x) {
    auto h = x + drop(attn(norm1(x)));
    return h + drop(fc2(torch::gelu(fc1(norm2(h)))));
  }

  const TransformerBlockOptions& options() const { return options_; }

  RMSNorm norm1{nullptr}, norm2{nullptr};
  CausalSelfAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout drop{nullptr};

 private:
  TransformerBlockOptions options_;
};
TORCH_MODULE(TransformerBlock);

}  // namespace actckpt::models
