#pragma once
// One mode's training run: the stack, its SGD optimizer and data, an offload context of its own
// (pool, copy engine, telemetry), a memory meter that starts before any of them, and the
// analytic floor of the mode's peak memory.

#include <actckpt/layer/label_layers.hpp>
#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>
#include <torch/cuda.h>
#include <torch/optim/sgd.h>

#include "stack_config.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <time.h>

namespace bench {

using actckpt::models::StackMode;

/// Bytes of the elements of every tensor in `ts`.
inline int64_t bytes_of(const std::vector<torch::Tensor>& ts) {
  int64_t n = 0;
  for (const auto& t : ts)
    if (t.defined()) n += t.numel() * static_cast<int64_t>(t.element_size());
  return n;
}

inline void synchronize(const c10::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

/// A model, its optimizer and its data, trained one step at a time.
class TrainSession {
 public:
  /// `num_layers` overrides the configuration's (the working-set probe uses one layer);
  /// `input_requires_grad` makes the input a leaf that wants a gradient, as every block but the
  /// first sees in the full stack.
  TrainSession(const StackConfig& cfg, StackMode mode, int64_t num_layers, bool input_requires_grad, int64_t seed)
      : cfg_(cfg),
        mode_(mode),
        device_(cfg.torch_device()),
        context_(actckpt::OffloadContext::create(actckpt::HostBufferPool::create(actckpt::HostBufferPool::default_limit()))),
        meter_(device_, context_->pool_ptr()) {
    torch::manual_seed(seed);
    model_ = actckpt::models::TransformerStack(cfg.block_options(), num_layers, mode);
    model_->to(device_);
    model_->train();
    actckpt::label_layers(*model_);  // messages and plans name layers "blocks.3"
    input_ = torch::randn({cfg.batch_size, cfg.seq_len(), cfg.hidden_dim}, torch::TensorOptions().device(device_));
    if (input_requires_grad) input_.requires_grad_(true);
    params_ = model_->parameters();
    optimizer_.emplace(params_, torch::optim::SGDOptions(1e-4));
    if (actckpt::models::uses_disk(mode)) attach_disk_store(num_layers);
  }

  /// The disk tier's modes: a store in $ACTCKPT_DISK_DIR (else $TMPDIR, else /tmp) with room for
  /// every block's stash; ckpt_disk_spill's host pool gets a budget of a quarter of what async
  /// offload stashes ((L-1) stashes: keep-N is 1), so the rest goes to disk.
  void attach_disk_store(int64_t num_layers) {
    const char* dir = std::getenv("ACTCKPT_DISK_DIR");
    if (dir == nullptr || *dir == '\0') dir = std::getenv("TMPDIR");
    actckpt::DiskStoreOptions o;
    o.directory = dir != nullptr && *dir != '\0' ? dir : "/tmp";
    const auto stash = static_cast<std::size_t>(input_bytes());
    const std::size_t slot = (stash + actckpt::DiskStore::alignment - 1) / actckpt::DiskStore::alignment * actckpt::DiskStore::alignment;
    o.capacity_bytes = static_cast<std::size_t>(num_layers + 1) * slot;
    context_->set_disk_store(actckpt::DiskStore::open(o));
    if (mode_ == StackMode::ckpt_disk_spill)
      context_->pool().set_limit(static_cast<std::size_t>(std::max<int64_t>(num_layers - 1, 1)) * stash / 4);
  }

  /// One training step. Gradients are zeroed in place (LibTorch 1.13's `zero_grad()`), so they
  /// stay allocated from step to step, on 1.13 and 2.x alike; the floor counts them.
  void step(actckpt::MemoryTimeline* timeline = nullptr) {
    forward_backward(timeline);
    if (timeline) timeline->mark("optimizer");
    optimizer_->step();
    if (timeline) timeline->mark("end");
  }

  /// The step without the optimizer: what the memory planner profiles (planner.hpp).
  void forward_backward(actckpt::MemoryTimeline* timeline = nullptr) {
    // Sessions alive at once (the rounds) keep their stashes, pools and telemetry apart.
    actckpt::OffloadContextScope scope(context_);
    {
      torch::NoGradGuard no_grad;
      for (auto& p : params_)
        if (p.grad().defined()) p.mutable_grad().zero_();
    }
    clear_input_grad();
    torch::Tensor loss;
    {
      AutocastScope autocast(cfg_);
      auto y = model_->forward(input_);
      if (timeline) timeline->mark("loss");
      loss = y.to(torch::kFloat).pow(2).mean();
    }
    loss.backward();
  }

  /// The probe's input gradient belongs to one step: drop it before the next.
  void clear_input_grad() {
    if (input_.requires_grad()) input_.mutable_grad().reset();
  }

  struct StepTime {
    double wall_ms;  // what the table reports
    double cpu_ms;   // CPU time of the whole process (all threads): helps read a loaded machine
  };

  /// One step, timed, the device synchronized before and after.
  StepTime timed_step() {
    synchronize(device_);
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = process_cpu_ms();
    step();
    synchronize(device_);
    return {std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
            process_cpu_ms() - c0};
  }

  static double process_cpu_ms() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) * 1e3 + static_cast<double>(ts.tv_nsec) / 1e6;
  }

  actckpt::MemoryMeter& meter() { return meter_; }
  actckpt::OffloadContext& offload_context() { return *context_; }
  actckpt::models::TransformerStack& model() { return model_; }
  const torch::Tensor& input() const { return input_; }
  StackMode mode() const { return mode_; }
  const c10::Device& device() const { return device_; }

  int64_t weight_bytes() const { return bytes_of(params_); }
  int64_t grad_bytes() const {
    std::vector<torch::Tensor> grads;
    for (const auto& p : params_) grads.push_back(p.grad());
    return bytes_of(grads);
  }
  /// Optimizer state (SGD's momentum buffers; none with momentum 0).
  int64_t optimizer_state_bytes() const {
    int64_t n = 0;
    for (const auto& [key, state] : optimizer_->state()) {
      if (auto* sgd = dynamic_cast<torch::optim::SGDParamState*>(state.get()))
        n += bytes_of({sgd->momentum_buffer()});
    }
    return n;
  }
  int64_t input_bytes() const { return bytes_of({input_}); }

 private:
  StackConfig cfg_;
  StackMode mode_;
  c10::Device device_;
  std::shared_ptr<actckpt::OffloadContext> context_;
  actckpt::MemoryMeter meter_;  // before the model: it sees every allocation below
  actckpt::models::TransformerStack model_{nullptr};
  torch::Tensor input_;
  std::vector<torch::Tensor> params_;
  std::optional<torch::optim::SGD> optimizer_;
};

/// What one block costs, measured on a one-layer model of the same shape.
struct BlockProbe {
  int64_t activation_bytes = 0;   // kept by autograd after the block's forward (unwrapped), output included
  int64_t working_set_bytes = 0;  // peak of a training step above what was resident at its start
};

/// Measures one block in `mode` (baseline: unwrapped; otherwise checkpointed without offload,
/// whose stash is its own input, so nothing but the block's work is counted).
inline BlockProbe probe_block(const StackConfig& cfg, StackMode mode, int64_t seed) {
  TrainSession s(cfg, mode, /*num_layers=*/1, /*input_requires_grad=*/true, seed);
  s.step();  // gradients allocated, caches warm
  s.clear_input_grad();  // resident = what every step starts with
  synchronize(s.device());
  BlockProbe probe;
  const int64_t resident = s.meter().device_bytes();
  s.meter().reset_peak();
  if (mode == StackMode::baseline) {
    torch::Tensor y;
    {
      AutocastScope autocast(cfg);
      y = s.model()->forward(s.input());
    }
    synchronize(s.device());
    probe.activation_bytes = s.meter().device_bytes() - resident;
    y.reset();  // drops the graph
  }
  s.step();
  synchronize(s.device());
  probe.working_set_bytes = s.meter().device_peak_bytes() - resident;
  return probe;
}

/// The lowest peak a mode could reach, and its parts (bytes).
struct Floor {
  int64_t weights = 0, grads = 0, optimizer_state = 0;
  int64_t other_resident = 0;  // data, workspaces: resident at step start beyond the three above
  int64_t keep = 0;            // what the policy must keep while the last block runs backward
  std::string keep_formula;
  int64_t working_set = 0;     // one block's training step (measured)
  int64_t total() const { return weights + grads + optimizer_state + other_resident + keep + working_set; }
};

/// weights + grads + optimizer state + data + what the policy keeps + one block's working set.
/// The peak is reached while the last block runs backward: by then
///  - baseline keeps the activations of the L-1 blocks before it;
///  - classic keeps the inputs of blocks 1..L-1 (block 0's input is the data itself);
///  - sync offload keeps nothing on the device; the last block's restored input is one stash;
///  - async offload keeps the newest stash (keep-N = 1) and prefetches the next: two stashes;
///  - offload_saved keeps nothing on the device; the block before the last one comes back while
///    the last runs backward: one block's activations beyond the last block's own working set.
inline Floor analytic_floor(TrainSession& s, const StackConfig& cfg, int64_t resident_at_step_start,
                            const BlockProbe& unwrapped, const BlockProbe& checkpointed) {
  Floor f;
  f.weights = s.weight_bytes();
  f.grads = s.grad_bytes();
  f.optimizer_state = s.optimizer_state_bytes();
  f.other_resident = std::max<int64_t>(0, resident_at_step_start - f.weights - f.grads - f.optimizer_state);
  const int64_t stash = s.input_bytes();  // a block's input: the residual stream, as the data
  const int64_t L = cfg.num_layers;
  switch (actckpt::models::default_form_of(s.mode())) {  // both forms keep the same stashes
    case StackMode::baseline:
      f.keep = (L - 1) * unwrapped.activation_bytes;
      f.keep_formula = "(L-1) x block activations";
      f.working_set = unwrapped.working_set_bytes;
      break;
    case StackMode::ckpt_classic:
      f.keep = (L - 1) * stash;
      f.keep_formula = "(L-1) x stash";
      f.working_set = checkpointed.working_set_bytes;
      break;
    case StackMode::ckpt_sync_offload:
      f.keep = stash;
      f.keep_formula = "1 x stash (restored)";
      f.working_set = checkpointed.working_set_bytes;
      break;
    case StackMode::ckpt_disk_offload:  // as async offload: the tier is not the device
    case StackMode::ckpt_disk_spill:
    case StackMode::ckpt_async_offload:
      f.keep = std::min<int64_t>(L, 2) * stash;
      f.keep_formula = "2 x stash (kept + prefetched)";
      f.working_set = checkpointed.working_set_bytes;
      break;
    case StackMode::offload_saved:  // every block's activations wait on the host; one block's come back ahead
      f.keep = std::min<int64_t>(L - 1, 1) * unwrapped.activation_bytes;
      f.keep_formula = "1 x block activations (prefetched)";
      f.working_set = unwrapped.working_set_bytes;
      break;
    case StackMode::ckpt_planned:  // what it keeps is the plan's; results.json's memory_plan predicts its peak
      f.keep = 0;
      f.keep_formula = "per layer as planned (see memory_plan)";
      f.working_set = checkpointed.working_set_bytes;
      break;
    default:
      break;
  }
  return f;
}

}  // namespace bench
