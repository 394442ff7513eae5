#pragma once
/// \file models/transformer_stack.hpp
/// The benchmark model of actckpt, shared by benchmarks/ and examples/: a stack of pre-norm
/// transformer blocks (models/transformer.hpp) in one of its modes, and a small character-level
/// GPT around the stack. The benchmark's own configuration (StackConfig, the seed project's CLI
/// names) and its autocast scope live with the benchmark, in benchmarks/stack_config.hpp: they
/// are not part of the installed library.
///
/// API at a glance:
/// \code
///   using namespace actckpt::models;
///   TransformerStack stack(TransformerBlockOptions(/*hidden=*/128, /*head=*/64, /*ff=*/512),
///                          /*num_layers=*/8, StackMode::ckpt_async_offload);
///   torch::Tensor x = torch::randn({/*batch=*/8, /*seq=*/256, 128});
///   stack(x).pow(2).mean().backward();
///
///   GptModel gpt(GptOptions(/*vocab_size=*/65, /*max_seq_len=*/256, TransformerBlockOptions(128, 64, 512), 8)
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
///
/// Errors: a stack without layers and a token sequence longer than GptOptions::max_seq_len are
/// actckpt::UsageErrors (the caller's mistake, see base/errors.hpp), as is a head_dim that does
/// not divide hidden_dim (models/transformer.hpp).

#include <c10/core/GradMode.h>
#include <torch/nn.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "actckpt/base/errors.hpp"
#include "actckpt/policy/async_offload.hpp"
#include "actckpt/wrap/checkpointed.hpp"
#include "actckpt/policy/no_offload.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/policy/offload_saved.hpp"
#include "actckpt/policy/sync_offload.hpp"
#include "actckpt/policy/disk_offload.hpp"
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
  /// Checkpointed<Block, DiskOffload>: inputs written to the offload context's disk store
  /// (offload/disk_store.hpp) on the copy worker, read back a layer ahead in backward.
  ckpt_disk_offload,
  /// Checkpointed<Block, DiskSpill>: async offload whose host pool has a budget; what does not
  /// fit spills to the context's disk store (PoolExhaustion::spill_to_disk).
  ckpt_disk_spill,
};

/// Async offload that spills to the disk tier when the host pool is full (ckpt_disk_spill).
using DiskSpill = BasicAsyncOffload<1, 1024, PoolExhaustion::spill_to_disk>;

/// True for the modes whose offload context needs a disk store.
constexpr bool uses_disk(StackMode mode) noexcept {
  return mode == StackMode::ckpt_disk_offload || mode == StackMode::ckpt_disk_spill;
}

inline constexpr StackMode all_stack_modes[] = {StackMode::baseline, StackMode::ckpt_classic,
                                                StackMode::ckpt_sync_offload, StackMode::ckpt_async_offload,
                                                StackMode::offload_saved, StackMode::ckpt_planned, StackMode::ckpt_classic_reentrant,
                                                StackMode::ckpt_sync_offload_reentrant,
                                                StackMode::ckpt_async_offload_reentrant,
                                                StackMode::ckpt_disk_offload, StackMode::ckpt_disk_spill};

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
    case StackMode::ckpt_disk_offload: return "ckpt_disk_offload";
    case StackMode::ckpt_disk_spill: return "ckpt_disk_spill";
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
  else if constexpr (std::is_same_v<Policy, DiskOffload>) return StackMode::ckpt_disk_offload;
  else if constexpr (std::is_same_v<Policy, DiskSpill>) return StackMode::ckpt_disk_spill;
  else {
    static_assert(std::is_same_v<Policy, AsyncOffload>, "stack_mode_of: NoCheckpoint, NoOffload, SyncOffload, AsyncOffload or OffloadSaved");
    return StackMode::ckpt_async_offload;
  }
}

/// The stack. Layer i is registered as `blocks.i` in every mode.
class TransformerStackImpl : public torch::nn::Module {
 public:
  TransformerStackImpl(const TransformerBlockOptions& block, int64_t num_layers, StackMode mode) : mode_(mode) {
    ACTCKPT_CHECK(num_layers >= 1, UsageError, "TransformerStack needs at least one layer, got ", num_layers);
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
        case StackMode::ckpt_disk_offload: add_checkpointed<DiskOffload>(b); break;
        case StackMode::ckpt_disk_spill: add_checkpointed<DiskSpill>(b); break;
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
    ACTCKPT_CHECK(seq <= options_.max_seq_len(), UsageError, "GptModel: a sequence of ", seq,
                  " tokens exceeds max_seq_len ", options_.max_seq_len(),
                  ": feed at most max_seq_len tokens, or build the model with a larger GptOptions::max_seq_len");
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
