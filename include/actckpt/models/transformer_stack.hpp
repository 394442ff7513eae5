#pragma once
/// \file models/transformer_stack.hpp
/// The benchmark model of actckpt, shared by benchmarks/ and examples/: a stack of pre-norm
/// transformer blocks (models/transformer.hpp) in one of four modes, its configuration under the
/// seed project's CLI names, and a small character-level GPT around the stack.
///
/// API at a glance:
/// \code
///   using namespace actckpt::models;
///   StackConfig cfg = StackConfig::cpu_default();        // or fill in the seed's flags
///   cfg.validate();
///   TransformerStack stack(cfg.block_options(), cfg.num_layers, StackMode::ckpt_async_offload);
///   stack->to(cfg.torch_device());
///   torch::Tensor x = torch::randn({cfg.batch_size, cfg.seq_len(), cfg.hidden_dim}, cfg.torch_device());
///   torch::Tensor loss;
///   {
///     AutocastScope autocast(cfg);                        // float32: does nothing
///     loss = stack(x).to(torch::kFloat).pow(2).mean();
///   }
///   loss.backward();
///
///   GptModel gpt(GptOptions(/*vocab_size=*/65, /*max_seq_len=*/256, cfg.block_options(), cfg.num_layers)
///                    .mode(StackMode::ckpt_classic));
///   torch::Tensor logits = gpt(tokens);                   // [batch, seq] int64 -> [batch, seq, vocab]
/// \endcode
/// Parameter names are the same in every mode (`blocks.3.attn.qkv.weight`; checkpointing keeps
/// names, see checkpointed.hpp), so a model saved in one mode loads into another.
///
/// Phases: layer i is labelled by its path, "blocks.i" (a derived label: `label_layers` on a model
/// holding the stack gives the full path). Checkpointed layers announce their forward and backward
/// through actckpt's observer events; in `baseline` mode the stack announces the same events for
/// its unwrapped blocks (forward_begin/forward_end around each block, backward_begin from a
/// gradient hook on its output) while an observer is installed, so memory timelines of every
/// mode show `fwd blocks.i` / `bwd blocks.i`. Without an observer it adds nothing.

#include <ATen/autocast_mode.h>
#include <c10/core/GradMode.h>
#include <torch/nn.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actckpt/replay/autocast_state.hpp"
#include "actckpt/policy/async_offload.hpp"
#include "actckpt/wrap/checkpointed.hpp"
#include "actckpt/policy/no_offload.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/policy/offload_saved.hpp"
#include "actckpt/policy/sync_offload.hpp"
#include "actckpt/models/transformer.hpp"

namespace actckpt::models {

/// How the stack's blocks keep their activations. Names as in the seed's results table.
enum class StackMode {
  baseline,            ///< unwrapped blocks: autograd keeps every activation
  ckpt_classic,        ///< Checkpointed<Block, NoOffload>
  ckpt_sync_offload,   ///< Checkpointed<Block, SyncOffload>
  ckpt_async_offload,  ///< Checkpointed<Block, AsyncOffload>
  ckpt_planned,        ///< Checkpointed<Block, NoOffload>, each layer's choice set by a MemoryPlan (planner.hpp)
  // The three checkpointed modes above in the other form (README "The two forms"): the modes
  // above use the process default (non-reentrant unless ACTCKPT_CHECKPOINT_FORM says otherwise).
  ckpt_classic_reentrant,        ///< Checkpointed<Block, Reentrant<NoOffload>>
  ckpt_sync_offload_reentrant,   ///< Checkpointed<Block, Reentrant<SyncOffload>>
  ckpt_async_offload_reentrant,  ///< Checkpointed<Block, Reentrant<AsyncOffload>>
  /// Checkpointed<Block, OffloadSaved>: no recompute; every activation autograd saves (weights
  /// aside) waits in the host pool, moved asynchronously and prefetched a layer ahead.
  offload_saved,
};

inline constexpr StackMode all_stack_modes[] = {StackMode::baseline, StackMode::ckpt_classic,
                                                StackMode::ckpt_sync_offload, StackMode::ckpt_async_offload,
                                                StackMode::offload_saved, StackMode::ckpt_planned, StackMode::ckpt_classic_reentrant,
                                                StackMode::ckpt_sync_offload_reentrant,
                                                StackMode::ckpt_async_offload_reentrant};

constexpr std::string_view to_string(StackMode mode) noexcept {
  switch (mode) {
    case StackMode::baseline: return "baseline";
    case StackMode::ckpt_classic: return "ckpt_classic";
    case StackMode::ckpt_sync_offload: return "ckpt_sync_offload";
    case StackMode::ckpt_async_offload: return "ckpt_async_offload";
    case StackMode::ckpt_planned: return "ckpt_planned";
    case StackMode::ckpt_classic_reentrant: return "ckpt_classic_reentrant";
    case StackMode::ckpt_sync_offload_reentrant: return "ckpt_sync_offload_reentrant";
    case StackMode::ckpt_async_offload_reentrant: return "ckpt_async_offload_reentrant";
    case StackMode::offload_saved: return "offload_saved";
  }
  return "unknown";
}

inline std::optional<StackMode> stack_mode_from_string(std::string_view name) {
  for (auto mode : all_stack_modes)
    if (to_string(mode) == name) return mode;
  return std::nullopt;
}

/// Stands for "no checkpointing" where a policy type is expected (benchmark fixtures templated
/// on the policy). Not an `OffloadPolicy`.
struct NoCheckpoint {
  static constexpr std::string_view name = "NoCheckpoint";
};

/// Stands for "checkpointed, each layer as a memory plan chooses" (benchmark fixtures): the stack
/// is built as ckpt_classic's and the plan sets each layer's StashOptions at run time.
struct PlannedCheckpoint {
  static constexpr std::string_view name = "PlannedCheckpoint";
};

/// True for the modes that run the reentrant form explicitly.
constexpr bool is_reentrant(StackMode mode) noexcept {
  return mode == StackMode::ckpt_classic_reentrant || mode == StackMode::ckpt_sync_offload_reentrant ||
         mode == StackMode::ckpt_async_offload_reentrant;
}

/// The mode that keeps stashes as `mode` does, in the process default form (itself for others).
constexpr StackMode default_form_of(StackMode mode) noexcept {
  switch (mode) {
    case StackMode::ckpt_classic_reentrant: return StackMode::ckpt_classic;
    case StackMode::ckpt_sync_offload_reentrant: return StackMode::ckpt_sync_offload;
    case StackMode::ckpt_async_offload_reentrant: return StackMode::ckpt_async_offload;
    default: return mode;
  }
}

/// The checkpoint form a mode runs ("none" for baseline and offload_saved, which recompute
/// nothing), for tables and results.json.
inline std::string_view form_name(StackMode mode) {
  if (mode == StackMode::baseline || mode == StackMode::offload_saved) return "none";
  return to_string(is_reentrant(mode) ? CheckpointForm::reentrant : resolve(CheckpointForm::process_default));
}

/// The mode a policy type gives: NoCheckpoint, NoOffload, SyncOffload, AsyncOffload, PlannedCheckpoint,
/// and Reentrant<> of the three offload policies.
template <class Policy>
constexpr StackMode stack_mode_of() {
  if constexpr (std::is_same_v<Policy, NoCheckpoint>) return StackMode::baseline;
  else if constexpr (std::is_same_v<Policy, Reentrant<NoOffload>>) return StackMode::ckpt_classic_reentrant;
  else if constexpr (std::is_same_v<Policy, Reentrant<SyncOffload>>) return StackMode::ckpt_sync_offload_reentrant;
  else if constexpr (std::is_same_v<Policy, Reentrant<AsyncOffload>>) return StackMode::ckpt_async_offload_reentrant;
  else if constexpr (std::is_same_v<Policy, PlannedCheckpoint>) return StackMode::ckpt_planned;
  else if constexpr (std::is_same_v<Policy, NoOffload>) return StackMode::ckpt_classic;
  else if constexpr (std::is_same_v<Policy, SyncOffload>) return StackMode::ckpt_sync_offload;
  else if constexpr (std::is_same_v<Policy, OffloadSaved>) return StackMode::offload_saved;
  else {
    static_assert(std::is_same_v<Policy, AsyncOffload>, "stack_mode_of: NoCheckpoint, NoOffload, SyncOffload, AsyncOffload or OffloadSaved");
    return StackMode::ckpt_async_offload;
  }
}

/// The benchmark's configuration, with the seed project's CLI names.
struct StackConfig {
  std::string device = "cpu";   ///< "cpu", "cuda", "cuda:1"
  int64_t total_tokens = 2048;  ///< tokens per step; seq_len = total_tokens / batch_size
  int64_t num_layers = 8;
  int64_t hidden_dim = 128;
  int64_t head_dim = 64;        ///< num_heads = hidden_dim / head_dim
  int64_t ff_dim = 512;
  int64_t batch_size = 8;
  int64_t steps = 3;            ///< measured training steps per mode
  std::string dtype = "float32";  ///< float32, or bf16 / fp16 autocast (weights stay float32)
  double dropout = 0.0;

  /// The seed's GPU configuration (its README's table).
  static StackConfig seed() {
    StackConfig c;
    c.device = "cuda";
    c.total_tokens = 12000;
    c.num_layers = 12;
    c.hidden_dim = 1024;
    c.head_dim = 64;
    c.ff_dim = 4096;
    c.batch_size = 48;
    c.steps = 3;
    c.dtype = "fp16";
    return c;
  }
  /// The CPU default of the main job: small enough for 2 cores, attention-heavy enough that
  /// activations dominate weights, as they do at the seed's size.
  static StackConfig cpu_default() { return StackConfig{}; }

  int64_t seq_len() const { return total_tokens / batch_size; }
  int64_t num_heads() const { return hidden_dim / head_dim; }
  c10::Device torch_device() const { return c10::Device(device); }
  TransformerBlockOptions block_options() const {
    return TransformerBlockOptions(hidden_dim, head_dim, ff_dim).dropout(dropout);
  }
  /// The autocast dtype, or nullopt for float32.
  std::optional<c10::ScalarType> autocast_dtype() const {
    if (dtype == "float32" || dtype == "fp32") return std::nullopt;
    if (dtype == "bf16" || dtype == "bfloat16") return c10::kBFloat16;
    if (dtype == "fp16" || dtype == "float16") return c10::kHalf;
    TORCH_CHECK(false, "dtype must be float32, bf16 or fp16, not '", dtype, "'");
  }

  /// Raises a clear error for a configuration that cannot run.
  void validate() const {
    TORCH_CHECK(num_layers >= 1, "num_layers must be at least 1, got ", num_layers);
    TORCH_CHECK(batch_size >= 1, "batch_size must be at least 1, got ", batch_size);
    TORCH_CHECK(total_tokens >= batch_size, "total_tokens (", total_tokens, ") must be at least batch_size (",
                batch_size, "): seq_len = total_tokens / batch_size");
    TORCH_CHECK(head_dim >= 1 && hidden_dim >= head_dim && hidden_dim % head_dim == 0, "head_dim (", head_dim,
                ") must divide hidden_dim (", hidden_dim, ")");
    TORCH_CHECK(ff_dim >= 1, "ff_dim must be positive, got ", ff_dim);
    TORCH_CHECK(steps >= 0, "steps must not be negative, got ", steps);
    const auto d = torch_device();
    TORCH_CHECK(d.is_cpu() || d.is_cuda(), "device must be cpu or cuda[:N], not '", device, "'");
    const auto low = autocast_dtype();
    TORCH_CHECK(!(d.is_cpu() && low == c10::kHalf), "fp16 autocast is a CUDA feature; on CPU use bf16 or float32");
  }
};

/// Runs its scope under autocast to the configuration's dtype on its device type (float32: no
/// autocast). Like Python's `torch.autocast`, the cast cache is dropped when the scope ends.
class AutocastScope {
 public:
  explicit AutocastScope(const StackConfig& config) : AutocastScope(config.torch_device(), config.autocast_dtype()) {}
  AutocastScope(c10::Device device, std::optional<c10::ScalarType> dtype) {
    if (!dtype) return;
    AutocastState state = AutocastState::current();
    if (device.is_cuda()) {
      state.cuda_enabled = true;
      state.cuda_dtype = *dtype;
    } else {
      state.cpu_enabled = true;
      state.cpu_dtype = *dtype;
    }
    guard_.emplace(state);
  }

 private:
  std::optional<AutocastReplayGuard> guard_;
};

/// The stack. Layer i is registered as `blocks.i` in every mode.
class TransformerStackImpl : public torch::nn::Module {
 public:
  TransformerStackImpl(const TransformerBlockOptions& block, int64_t num_layers, StackMode mode) : mode_(mode) {
    TORCH_CHECK(num_layers >= 1, "TransformerStack needs at least one layer, got ", num_layers);
    blocks_list_ = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < num_layers; ++i) {
      TransformerBlock b(block);
      labels_.push_back("blocks." + std::to_string(i));
      switch (mode) {
        case StackMode::baseline:
          blocks_list_->push_back(b.ptr());
          calls_.emplace_back([b](const torch::Tensor& x) mutable { return b(x); });
          break;
        case StackMode::ckpt_classic:
        case StackMode::ckpt_planned: add_checkpointed<NoOffload>(b); break;
        case StackMode::ckpt_sync_offload: add_checkpointed<SyncOffload>(b); break;
        case StackMode::ckpt_async_offload: add_checkpointed<AsyncOffload>(b); break;
        case StackMode::ckpt_classic_reentrant: add_checkpointed<Reentrant<NoOffload>>(b); break;
        case StackMode::ckpt_sync_offload_reentrant: add_checkpointed<Reentrant<SyncOffload>>(b); break;
        case StackMode::ckpt_async_offload_reentrant: add_checkpointed<Reentrant<AsyncOffload>>(b); break;
        case StackMode::offload_saved: add_checkpointed<OffloadSaved>(b); break;
      }
      blocks_.push_back(std::move(b));
    }
  }

  /// x: [batch, seq, hidden] -> [batch, seq, hidden].
  torch::Tensor forward(torch::Tensor x) {
    const bool announce = mode_ == StackMode::baseline && is_training() && c10::GradMode::is_enabled() &&
                          actckpt::observing();
    for (std::size_t i = 0; i < calls_.size(); ++i) {
      if (announce) emit(EventKind::forward_begin, labels_[i]);
      x = calls_[i](x);
      if (announce) {
        emit(EventKind::forward_end, labels_[i]);
        // The gradient of block i's output is complete exactly when block i's backward starts.
        if (x.requires_grad()) x.register_hook([label = labels_[i]](const torch::Tensor&) {
          emit(EventKind::backward_begin, label);
        });
      }
    }
    return x;
  }

  StackMode mode() const { return mode_; }
  int64_t num_layers() const { return static_cast<int64_t>(blocks_.size()); }
  /// The unwrapped block of layer i (shared with its wrapper, if any).
  TransformerBlock& block(int64_t i) { return blocks_.at(static_cast<std::size_t>(i)); }
  /// The observer label of layer i ("i").
  const std::string& label(int64_t i) const { return labels_.at(static_cast<std::size_t>(i)); }

  void pretty_print(std::ostream& stream) const override {
    stream << "actckpt::models::TransformerStack(mode=" << to_string(mode_) << ", layers=" << blocks_.size() << ")";
  }

 private:
  template <class Policy>
  void add_checkpointed(const TransformerBlock& b) {
    Checkpointed<TransformerBlock, Policy> layer(b);
    layer->set_derived_label(labels_.back());
    blocks_list_->push_back(layer.ptr());
    calls_.emplace_back([layer](const torch::Tensor& x) mutable { return layer(x); });
  }

  StackMode mode_;
  torch::nn::ModuleList blocks_list_{nullptr};
  std::vector<TransformerBlock> blocks_;
  std::vector<std::function<torch::Tensor(const torch::Tensor&)>> calls_;
  std::vector<std::string> labels_;
};
TORCH_MODULE(TransformerStack);

/// A character-level GPT: token + position embeddings, the stack, a final RMSNorm, an LM head.
struct GptOptions {
  GptOptions(int64_t vocab_size, int64_t max_seq_len, TransformerBlockOptions block, int64_t num_layers)
      : vocab_size_(vocab_size), max_seq_len_(max_seq_len), block_(std::move(block)), num_layers_(num_layers) {}
  TORCH_ARG(int64_t, vocab_size);
  TORCH_ARG(int64_t, max_seq_len);
  TORCH_ARG(TransformerBlockOptions, block);
  TORCH_ARG(int64_t, num_layers);
  TORCH_ARG(StackMode, mode) = StackMode::baseline;
};

class GptModelImpl : public torch::nn::Module {
 public:
  explicit GptModelImpl(const GptOptions& options) : options_(options) {
    const auto hidden = options.block().hidden_dim();
    tok_emb = register_module("tok_emb", torch::nn::Embedding(options.vocab_size(), hidden));
    pos_emb = register_module("pos_emb", torch::nn::Embedding(options.max_seq_len(), hidden));
    stack = register_module("stack", TransformerStack(options.block(), options.num_layers(), options.mode()));
    norm = register_module("norm", RMSNorm(hidden));
    head = register_module("head", torch::nn::Linear(torch::nn::LinearOptions(hidden, options.vocab_size()).bias(false)));
  }

  /// tokens: [batch, seq] int64 (seq <= max_seq_len) -> logits [batch, seq, vocab_size].
  torch::Tensor forward(torch::Tensor tokens) {
    const auto seq = tokens.size(1);
    TORCH_CHECK(seq <= options_.max_seq_len(), "GptModel: sequence of ", seq, " tokens exceeds max_seq_len ",
                options_.max_seq_len());
    auto positions = torch::arange(seq, torch::TensorOptions().dtype(torch::kLong).device(tokens.device()));
    auto x = tok_emb(tokens) + pos_emb(positions);
    return head(norm(stack(x)));
  }

  const GptOptions& options() const { return options_; }

  torch::nn::Embedding tok_emb{nullptr}, pos_emb{nullptr};
  TransformerStack stack{nullptr};
  RMSNorm norm{nullptr};
  torch::nn::Linear head{nullptr};

 private:
  GptOptions options_;
};
TORCH_MODULE(GptModel);

}  // namespace actckpt::models
