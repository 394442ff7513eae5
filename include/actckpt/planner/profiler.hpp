#pragma once
/// \file profiler.hpp
/// The profiler (`profile_step`): runs the user's sample step with every Checkpointed layer
/// kept, checkpointed and sync-offloaded, and measures each layer's bytes and times into a
/// `StepProfile`; the model is left as it was.
///
/// ## Profiling (`profile_step`)
/// The user's callable runs one sample training step (forward, loss, backward; no optimizer
/// step). It runs in three uniform configurations, every layer kept, checkpointed, and
/// sync-offloaded; each gets `warmup_steps` untimed runs, then `profile_steps` measured ones
/// (per-quantity medians). While it runs, an observer listens to the layers' events
/// (`forward_begin`, `forward_end`, `backward_begin`, `offload_begin/end`, `restore_end`; it
/// tells the model's layers apart by `Event::layer`, their identity, and leaves their labels
/// alone) and, at every layer boundary, reads the
/// `MemoryMeter`'s current bytes and the peak since the previous boundary (then resets the peak).
/// On CUDA it synchronizes the device at each boundary so per-layer times are device times.
/// Per layer and configuration that gives, in layer order (the order of the forwards):
///  - `held_bytes`: device bytes added from the start of its forward to the start of the next
///    layer's (the last layer: to its forward end), i.e. what it holds until its backward. Kept:
///    its activations; checkpointed: its output (its input belongs to the layer before);
///    offloaded: its output minus the input it moved away (nothing for the first layer, whose
///    input is the data the caller holds);
///  - `forward_peak_bytes` / `backward_peak_bytes`: the highest point during its forward / its
///    backward (from its `backward_begin` to the one of the layer below, or the end of the step)
///    above the level at its forward start;
///  - `forward_ms`, `backward_ms` over the same spans; `recompute_ms` (checkpointed run: from its
///    `backward_begin` to its `recompute_end`); `stash_bytes` and the sync copy times of its stash
///    each way, whose sums give the measured bandwidths;
///  - `saved_bytes` (kept run): the bytes of the activations autograd saves during its forward,
///    counted through a saved-tensor hooks scope (`SavedTensorHooks`) open around the kept runs:
///    parameters and buffers (and views of them) left out, a storage saved twice (a tensor and
///    its transpose, or by two layers) counted once, for the layer that saved it first. It is
///    what offload-saved moves each way.
/// Also: the level at the first layer's forward (`start_bytes`), the peak before it, the peak
/// between the last forward and the last backward (loss and head, `tail_peak_bytes`) and the
/// whole step's time and peak in each configuration.
/// That is a chain's profile. A step that is not a chain (a layer's forward several times,
/// several backward calls, backwards not in reverse order) gets a call-level profile instead:
/// every forward call and every segment between boundaries (call_profile.hpp), planned by
/// call_model.hpp. Every sample step must make the same calls (compared boundary by boundary).

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/util/Exception.h>
#include <torch/nn/module.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/hooks/saved_tensor_hooks.hpp"
#include "actckpt/layer/checkpointed_layer.hpp"
#include "actckpt/layer/label_layers.hpp"
#include "actckpt/measure/memory_meter.hpp"
#include "actckpt/offload/disk_store.hpp"
#include "actckpt/planner/call_profile.hpp"
#include "actckpt/planner/chain_figures.hpp"
#include "actckpt/planner/plan.hpp"
#include "actckpt/policy/stash_options.hpp"

#if ACTCKPT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace actckpt {

struct PlannerOptions {
  /// The meter whose bytes the budget is about. Null: the planner makes one on the model's
  /// device for the profile. On CUDA a meter reads the allocator's allocated bytes (absolute);
  /// on CPU it counts what is allocated while it lives, so pass a meter created before the model
  /// to have weights, gradients and optimizer state in the budget.
  MemoryMeter* meter = nullptr;
  /// Bytes the training step will hold that do not exist while the sample steps run, added to
  /// every level of the profile: above all the optimizer's state before its first `step()`
  /// (LibTorch creates SGD's momentum and Adam's averages there). `optimizer_state_bytes(optimizer,
  /// device)` estimates it; `plan_memory(model, step, budget, optimizer, options)` adds it here.
  std::int64_t reserve_bytes = 0;
  int warmup_steps = 1;   ///< untimed sample steps per configuration (allocates gradients, warms caches)
  int profile_steps = 1;  ///< measured sample steps per configuration (medians)
  OffloadCosts costs;
  /// Host memory the plan may fill with offloaded stashes (bytes; none: unlimited; 0: nothing on
  /// the host, the disk tier still allowed). See planner/tier_model.hpp for what counts.
  std::optional<std::int64_t> host_budget_bytes;
  /// The disk store `plan_memory` probes for the disk bandwidths when `costs` gives none
  /// (`measure_disk_bandwidth`, a few MiB written and read through it); null: the current
  /// `OffloadContext`'s store, if it has one. Neither: no layer goes to disk.
  std::shared_ptr<DiskStore> disk_store;
};

namespace detail::planner {

inline std::vector<CheckpointedLayer*> find_layers(torch::nn::Module& model) {
  std::vector<CheckpointedLayer*> layers;
  // The model itself apart: modules(include_self) needs it to be held by a shared_ptr.
  if (auto* self = dynamic_cast<CheckpointedLayer*>(&model)) layers.push_back(self);
  for (const auto& m : model.modules(/*include_self=*/false))
    if (auto* layer = dynamic_cast<CheckpointedLayer*>(m.get()))
      // A layer registered twice (shared by two models of one step) is one layer, planned once.
      if (std::find(layers.begin(), layers.end(), layer) == layers.end()) layers.push_back(layer);
  return layers;
}

/// Puts every layer's options, and the model's buffers, back as they were (the profile changes
/// both; it never touches the layers' labels).
class ModelStateGuard {
 public:
  ModelStateGuard(torch::nn::Module& model, std::vector<CheckpointedLayer*> layers) : layers_(std::move(layers)) {
    for (auto* l : layers_) options_.push_back(l->stash_options());
    torch::NoGradGuard no_grad;
    for (auto& b : model.buffers()) buffers_.emplace_back(b, b.clone());  // BatchNorm statistics
  }
  ~ModelStateGuard() {
    for (std::size_t i = 0; i < layers_.size(); ++i) layers_[i]->set_stash_options(options_[i]);
    torch::NoGradGuard no_grad;
    for (auto& [b, saved] : buffers_) b.copy_(saved);
  }
  ModelStateGuard(const ModelStateGuard&) = delete;
  ModelStateGuard& operator=(const ModelStateGuard&) = delete;

 private:
  std::vector<CheckpointedLayer*> layers_;
  std::vector<StashOptions> options_;
  std::vector<std::pair<at::Tensor, at::Tensor>> buffers_;
};

/// Listens to the planner's layers and reads the meter at each layer boundary.
class StepRecorder final : public Observer {
 public:
  /// `layers`: the model's Checkpointed layers in modules() order; an event is theirs when its
  /// `Event::layer` is one of them (the `CheckpointedLayer*` the layer emits as its identity).
  StepRecorder(MemoryMeter& meter, c10::Device device, const std::vector<CheckpointedLayer*>& layers)
      : meter_(meter), device_(device) {
    for (std::size_t i = 0; i < layers.size(); ++i)
      index_of_.emplace(static_cast<const void*>(static_cast<const CheckpointedLayer*>(layers[i])), i);
  }

  /// Storages whose saves are not activations (the model's parameters and buffers).
  void exclude_storages(std::vector<const void*> storages) {
    std::lock_guard<std::mutex> lock(mutex_);
    excluded_ = std::set<const void*>(storages.begin(), storages.end());
  }
  /// From the saved-tensor hooks' pack (the thread running the forward): counts `t` for the
  /// planner layer whose forward is running, each storage once per step.
  void count_saved(const at::Tensor& t) {
    if (!t.defined() || !t.has_storage()) return;
    const void* storage = t.storage().unsafeGetStorageImpl();
    std::lock_guard<std::mutex> lock(mutex_);
    if (current_ == none_ || excluded_.count(storage) != 0 || !seen_.insert(storage).second) return;
    if (saved_.size() <= current_) saved_.resize(current_ + 1, 0);
    saved_[current_] += static_cast<std::int64_t>(t.storage().nbytes());
    saved_per_call_[current_call_] += static_cast<std::int64_t>(t.storage().nbytes());
  }
  /// Per forward call in order, the bytes `count_saved` counted in the step that just finished.
  std::vector<std::int64_t> saved_per_call() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return saved_per_call_;
  }
  /// Per layer (modules() order), the bytes `count_saved` counted in the step that just finished.
  std::vector<std::int64_t> saved_bytes(std::size_t n) const {
    std::lock_guard<std::mutex> lock(mutex_);
    std::vector<std::int64_t> out = saved_;
    out.resize(n, 0);
    return out;
  }

  void start() {
    std::lock_guard<std::mutex> lock(mutex_);
    marks_.clear();
    saved_.clear();
    saved_per_call_.clear();
    seen_.clear();
    current_ = none_;
    synchronize();
    meter_.reset_peak();
    boundaries_ = 0;
    if (meter_.tracks_releases()) {
      meter_.take_releases();
      meter_.set_epoch(0);
    }
    start_bytes_ = meter_.device_bytes();
    start_ = std::chrono::steady_clock::now();
  }
  /// Ends the step: the final segment's peak and the duration.
  std::vector<Mark> finish(std::int64_t& end_peak, double& end_ms) {
    std::lock_guard<std::mutex> lock(mutex_);
    synchronize();
    end_peak = meter_.device_peak_bytes();
    end_ms = elapsed_ms(std::chrono::steady_clock::now());
    if (meter_.tracks_releases()) meter_.set_epoch(-1);
    return std::move(marks_);
  }

  void on_event(const Event& e) override {
    // Other layers' events (another model's, the functional form's, whose identity is null) are
    // not the profile's. The table is never written after construction, so the copy worker's
    // events (offload_end, from its own thread) may read it without the lock.
    const auto found = index_of_.find(e.layer);
    if (found == index_of_.end()) return;
    const std::size_t layer = found->second;
    std::lock_guard<std::mutex> lock(mutex_);
    Mark m;
    m.kind = e.kind;
    m.layer = layer;
    m.ms = elapsed_ms(e.time);
    if (e.kind == EventKind::forward_begin) {
      current_ = layer;
      current_call_ = saved_per_call_.size();
      saved_per_call_.push_back(0);
    }
    if (e.kind == EventKind::forward_end && current_ == layer) current_ = none_;
    switch (e.kind) {
      case EventKind::forward_begin:
      case EventKind::forward_end:
      case EventKind::backward_begin:
        synchronize();
        m.ms = elapsed_ms(std::chrono::steady_clock::now());
        m.peak_before = meter_.device_peak_bytes();
        m.bytes_now = meter_.device_bytes();
        meter_.reset_peak();
        if (meter_.tracks_releases()) {
          m.released = meter_.take_releases();
          meter_.set_epoch(static_cast<int>(++boundaries_));
        }
        break;
      case EventKind::offload_begin:
      case EventKind::offload_end:
      case EventKind::restore_end: m.copy_bytes = e.bytes; break;
      case EventKind::recompute_end: break;
      default: return;
    }
    marks_.push_back(m);
  }

 private:
  double elapsed_ms(std::chrono::steady_clock::time_point t) const {
    return std::chrono::duration<double, std::milli>(t - start_).count();
  }
  void synchronize() const {
#if ACTCKPT_WITH_CUDA
    if (device_.is_cuda()) c10::cuda::device_synchronize();
#endif
  }

  MemoryMeter& meter_;
  c10::Device device_;
  std::unordered_map<const void*, std::size_t> index_of_;  // a planner layer's identity -> its modules() index
  mutable std::mutex mutex_;
  std::vector<Mark> marks_;
  static constexpr std::size_t none_ = std::numeric_limits<std::size_t>::max();
  std::size_t current_ = none_;          // the planner layer whose forward runs (saves count for it)
  std::vector<std::int64_t> saved_;      // per layer, modules() order
  std::vector<std::int64_t> saved_per_call_;  // per forward call, in order
  std::size_t current_call_ = 0;          // the forward call whose saves count
  std::set<const void*> seen_, excluded_;  // storages counted this step; parameters' and buffers'

  std::int64_t start_bytes_ = 0;
  std::size_t boundaries_ = 0;  // boundaries so far this step: the meter's allocation epoch
  std::chrono::steady_clock::time_point start_;
};

}  // namespace detail::planner

/// Runs the sample step (see the file comment) and measures every Checkpointed layer of `model`.
/// `step` runs forward, loss and backward, and no optimizer step. The model keeps its layers'
/// options and its buffers (their labels are never changed); parameters' gradients are as the step leaves them.
inline StepProfile profile_step(torch::nn::Module& model, const std::function<void()>& step,
                                const PlannerOptions& options = {}) {
  using namespace detail::planner;
  ACTCKPT_CHECK(step != nullptr, UsageError, "actckpt::profile_step: no sample step given");
  ACTCKPT_CHECK(options.reserve_bytes >= 0, UsageError, "actckpt::profile_step: reserve_bytes must not be negative, got ",
                options.reserve_bytes);
  ACTCKPT_CHECK(options.warmup_steps >= 0 && options.profile_steps >= 1, UsageError, "actckpt::profile_step: warmup_steps (",
              options.warmup_steps, ") must be >= 0 and profile_steps (", options.profile_steps, ") >= 1");
  auto layers = find_layers(model);
  ACTCKPT_CHECK(!layers.empty(), UsageError, "actckpt::profile_step: the model has no Checkpointed layers to plan for; wrap the "
              "layers the planner may choose for in actckpt::Checkpointed (any policy: the plan sets each layer's "
              "mode at run time)");
  ACTCKPT_CHECK(model.is_training(), UsageError, "actckpt::profile_step: the model is in eval mode, where Checkpointed layers run "
              "directly; call model->train() before planning");
  c10::Device device(c10::kCPU);
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  std::optional<MemoryMeter> own_meter;
  if (options.meter == nullptr) own_meter.emplace(device);
  MemoryMeter& meter = options.meter ? *options.meter : *own_meter;
  // The guard's copies of the buffers exist only while profiling: what the meter counts for
  // them comes off the figures below.
  const std::int64_t before_guard = meter.device_bytes();
  ModelStateGuard restore(model, layers);
  const std::int64_t guard_bytes = meter.device_bytes() - before_guard;
  const std::size_t n = layers.size();
  // For the profile and its errors: a layer without an explicit label is named by its path in
  // the model ("blocks.3"). The layers' own labels stay as they are.
  std::vector<std::string> labels;
  const auto paths = detail::layer_paths(model);
  for (std::size_t i = 0; i < n; ++i) {
    std::string label = layers[i]->label();
    if (!layers[i]->label_is_explicit()) {
      for (const auto& [layer, path] : paths)
        if (layer == layers[i] && !path.empty()) label = path;
    }
    labels.push_back(std::move(label));
  }
  auto recorder = std::make_shared<StepRecorder>(meter, device, layers);
  {  // saves of parameters and buffers (or views of them) are not activations
    std::vector<const void*> storages;
    for (const auto& t : model.parameters())
      if (t.defined() && t.has_storage()) storages.push_back(t.storage().unsafeGetStorageImpl());
    for (const auto& t : model.buffers())
      if (t.defined() && t.has_storage()) storages.push_back(t.storage().unsafeGetStorageImpl());
    recorder->exclude_storages(std::move(storages));
  }
  // The kept runs count what autograd saves through saved-tensor hooks (pack keeps a detached
  // alias: same storage, nothing copied; detached so that an output saved by its own node does
  // not keep its node alive in a cycle). Where another autograd engine is LibTorch's default
  // (PyTorch's Python engine) hooks would not be called: saved bytes stay 0 and offload saved
  // is never chosen.
  const bool count_saves = detail::install_hooks_engine() == detail::EngineState::ours;
  auto pack = [recorder](const at::Tensor& t) {
    recorder->count_saved(t);
    return t.detach();
  };
  auto unpack = [](at::Tensor& t) { return t; };

  StepProfile profile;
  profile.host_memory_separate = !meter.device().is_cpu();
  std::vector<std::vector<StepFigures>> runs(profiled_modes);
  const char* names[] = {"kept", "checkpointed", "sync-offloaded"};
  for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
    const LayerChoice as = mode == 0 ? LayerChoice::keep : mode == 1 ? LayerChoice::checkpoint : LayerChoice::sync_offload;
    for (std::size_t i = 0; i < n; ++i) layers[i]->set_stash_options(options_for(as, layers[i]->stash_options()));
    for (int s = 0; s < options.warmup_steps + options.profile_steps; ++s) {
      std::vector<Mark> marks;
      std::int64_t end_peak = 0;
      double end_ms = 0;
      try {
        ObserverScope listening(recorder);
        std::optional<SavedTensorHooks<decltype(pack), decltype(unpack)>> counting;
        if (mode == 0 && count_saves) counting.emplace(pack, unpack);
        recorder->start();
        step();
        marks = recorder->finish(end_peak, end_ms);
      } catch (const std::exception& e) {
        throw Error(c10::str("actckpt::profile_step: the sample step threw while profiling (every layer ", names[mode],
                             "); the model was left as it was. The error: ", e.what()));
      }
      if (s >= options.warmup_steps) {
        runs[mode].push_back(reduce(marks, n, end_peak, end_ms, labels, recorder->saved_per_call()));
        const auto saved = recorder->saved_bytes(n);
        for (auto k : runs[mode].back().order) runs[mode].back().saved.push_back(saved[k]);
      }
    }
    for (const auto& r : runs[mode]) {  // the same calls in every sample step (no data-dependent control flow)
      const auto difference = first_difference(runs[0].front().calls.signature, r.calls.signature, labels);
      ACTCKPT_CHECK(difference.empty(), UsageError, "actckpt::profile_step: the sample step called the layers "
                    "differently when ", names[mode], " than in the first kept step (", difference, "); the planner "
                    "needs a step whose calls do not depend on the data or on the layers' options");
    }
    const auto& order = runs[mode].front().order;
    for (const auto& r : runs[mode])
      ACTCKPT_CHECK(r.order == order, UsageError, "actckpt::profile_step: the layers ran in different orders in two sample steps");
    ACTCKPT_CHECK(mode == 0 || order == runs[0].front().order, UsageError,
                "actckpt::profile_step: the layers ran in a different order when ", names[mode]);
  }
  bool chain = true;
  for (const auto& mode_runs : runs)
    for (const auto& r : mode_runs) chain = chain && r.chain;
  if (!chain) {  // several calls per layer, several backwards: every call and segment (call_profile.hpp)
    std::vector<std::vector<CallFigures>> calls(profiled_modes);
    for (std::size_t mode = 0; mode < profiled_modes; ++mode)
      for (const auto& r : runs[mode]) calls[mode].push_back(r.calls);
    fill_call_profile(profile, calls, labels, options.reserve_bytes - guard_bytes);
    return profile;
  }
  const auto& order = runs[0].front().order;
  profile.layers.resize(n);
  auto med = [&](std::size_t mode, auto member, std::size_t p) {
    using T = std::decay_t<decltype((runs[mode][0].*member)[p])>;
    std::vector<T> v;
    for (const auto& r : runs[mode]) v.push_back((r.*member)[p]);
    return median(v);
  };
  double offload_ms = 0, restore_ms = 0, copied = 0;
  for (std::size_t p = 0; p < n; ++p) {
    auto& l = profile.layers[p];
    l.module_index = order[p];
    l.label = labels[order[p]];
    for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
      l.held_bytes[mode] = med(mode, &StepFigures::held, p);
      l.forward_peak_bytes[mode] = med(mode, &StepFigures::forward_peak, p);
      l.backward_peak_bytes[mode] = med(mode, &StepFigures::backward_peak, p);
      l.forward_ms[mode] = med(mode, &StepFigures::forward_ms, p);
      l.backward_ms[mode] = med(mode, &StepFigures::backward_ms, p);
    }
    const auto S = mode_index(ProfiledMode::sync_offload);
    l.recompute_ms = med(mode_index(ProfiledMode::checkpoint), &StepFigures::recompute_ms, p);
    l.stash_bytes = med(S, &StepFigures::stash, p);
    l.offload_ms = med(S, &StepFigures::offload_ms, p);
    l.restore_ms = med(S, &StepFigures::restore_ms, p);
    l.saved_bytes = med(mode_index(ProfiledMode::keep), &StepFigures::saved, p);
    offload_ms += l.offload_ms;
    restore_ms += l.restore_ms;
    copied += static_cast<double>(l.stash_bytes);
  }
  auto scalar = [&](std::size_t mode, auto member) {
    using T = std::decay_t<decltype(runs[mode][0].*member)>;
    std::vector<T> v;
    for (const auto& r : runs[mode]) v.push_back(r.*member);
    return median(v);
  };
  // The absolute levels (the others are differences): without the guard's buffer copies, with
  // what the step will hold later (the optimizer's state).
  const std::int64_t shift = options.reserve_bytes - guard_bytes;
  const auto K = mode_index(ProfiledMode::keep);
  profile.start_bytes = scalar(K, &StepFigures::start_bytes) + shift;
  profile.head_peak_bytes = scalar(K, &StepFigures::head_peak) + shift;
  profile.tail_peak_bytes = scalar(K, &StepFigures::tail_peak);
  profile.tail_ms = scalar(K, &StepFigures::tail_ms);
  for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
    profile.step_ms[mode] = scalar(mode, &StepFigures::step_ms);
    profile.step_peak_bytes[mode] = scalar(mode, &StepFigures::step_peak) + shift;
  }
  if (meter.tracks_releases()) retain_plan_dependent_releases(profile, runs);
  if (copied > 0 && offload_ms > 0) profile.d2h_bytes_per_s = copied / (offload_ms / 1e3);
  if (copied > 0 && restore_ms > 0) profile.h2d_bytes_per_s = copied / (restore_ms / 1e3);
  return profile;
}

}  // namespace actckpt
