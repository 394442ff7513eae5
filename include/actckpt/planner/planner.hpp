#pragma once
/// \file planner.hpp
/// The memory-budget planner: "fit this training step in N bytes, as fast as possible".
/// \code
///   actckpt::MemoryMeter meter(device);                  // optional; before the model counts weights
///   ... build the model with Checkpointed<Block, NoOffload> layers ...
///   auto step = [&] { model->zero_grad(); loss_of(model->forward(x)).backward(); };
///   actckpt::PlannerOptions options;
///   options.meter = &meter;
///   actckpt::MemoryPlan plan = actckpt::plan_memory(*model, step, 512ull << 20, options);
///   std::cout << plan.describe();                         // "layers 0-5 checkpoint, 6-7 keep"
///   plan.apply(*model);                                   // each layer's StashOptions set
/// \endcode
/// For each `Checkpointed` layer of a chain it chooses one of five things (`LayerChoice`): keep
/// (not checkpointed: autograd keeps its activations), checkpoint (inputs stay on the device),
/// sync offload, async offload (of the checkpoint's inputs), offload saved (no recompute: every
/// activation autograd saves goes to the host pool and comes back a layer ahead in backward); the
/// choice is set at run time through the layer's `StashOptions`, so any policy type works and
/// gradients stay those of the unwrapped model.
///
/// ## Profiling (`profile_step`)
/// The user's callable runs one sample training step (forward, loss, backward; no optimizer
/// step). It runs in three uniform configurations, every layer kept, checkpointed, and
/// sync-offloaded; each gets `warmup_steps` untimed runs, then `profile_steps` measured ones
/// (per-quantity medians). While it runs, an observer listens to the layers' events
/// (`forward_begin`, `forward_end`, `backward_begin`, `offload_begin/end`, `restore_end`; the
/// planner labels its layers for the duration) and, at every layer boundary, reads the
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
///
/// ## Cost model (`evaluate_plan`)
/// Memory, for a plan c_0..c_{L-1}, with S_k = start_bytes + sum_{m<k} held(m, c_m):
///  - forward of k:  S_k + forward_peak(k, c_k) + in_flight_{k-1}
///  - backward of k: S_k + backward_peak(k, c_k) + prefetched_k
///  - loss/tail:     S_L + tail_peak + in_flight_{L-1};  and the peak before the first layer.
/// The predicted peak is the largest of these. A checkpointed layer's figures come from the
/// checkpointed run, a kept one's from the kept run. Offloaded layers use the sync run's figures
/// only where host memory is separate from the device's (CUDA, or injected): on CPU host and
/// device are the same memory, so an offloaded layer costs what a checkpointed one does and an
/// offloading plan never saves memory there. Async offload (keep-N 0: each stash starts moving as
/// its layer's forward ends) adds two transients: `in_flight_k` = the bytes its offload frees,
/// still on the device while the next layer runs forward; `prefetched_k` = the stash of the
/// highest async layer below k, brought back while k runs backward, when an async layer at or
/// above k triggers that prefetch (the stash stack prefetches the stash below the one restored).
/// Offload saved (only where host memory is separate, and only for a layer that saved something):
/// the layer runs as kept, so its forward and backward peaks are the kept run's (conservative:
/// nothing counted as gone before its forward ends); it holds `max(held(checkpointed),
/// held(kept) - saved_bytes)` (its output stays: the layer above uses it). What it frees,
/// `held(kept) - held(offload saved)`, is still in flight while the next layer runs forward
/// (`in_flight_k`), and comes back while the layer above runs backward (prefetched a layer
/// ahead: `saved_prefetched_k` on top of layer k+1's backward peak).
///
/// Time: the kept run's step time plus, per layer, the extra of its choice:
///  - checkpoint: its measured recompute (a direct measurement: differences of whole forward and
///    backward spans between two runs drown in a busy machine's noise and can come out negative);
///  - sync offload: checkpoint's extra + stash/bandwidth_d2h + stash/bandwidth_h2d;
///  - async offload: checkpoint's extra + the copy time that does not hide: the device-to-host
///    copy behind the next layer's forward (the loss for the last layer), the host-to-device
///    prefetch behind the backward of the layer above, if an async layer above triggers it (else
///    nothing hides it). The real window can be longer (several layers), never shorter.
///  - offload saved: no recompute; saved_bytes/bandwidth_d2h beyond the next layer's forward (the
///    loss for the last layer) and saved_bytes/bandwidth_h2d beyond the backward of the layer
///    above (the last layer: nothing hides its restore).
///
/// ## Search (`plan_for_budget`)
/// Dynamic programming over the chain: layers are added bottom up; a partial plan's future
/// depends only on its held bytes S and its state: the stash of its highest async layer while
/// that layer's prefetch still needs an async layer above, whether more async layers may come,
/// the bytes still in flight, and the bytes an offload-saved layer below brings back during the
/// next layer's backward. Every constraint is checked exactly against the budget as its
/// layer is added, so a returned plan always fits (as `evaluate_plan` predicts it). A partial
/// plan is dropped when another one, in the same or a dominating state (no prefetch waiting, or
/// a smaller one), holds no more bytes and is no slower. With unlike layers nearly every sum of
/// held bytes is distinct and these fronts grow exponentially, so the search bounds them:
///  - Exact while every layer's front stays within `beam_width` (256) partial plans: small and
///    uniform chains get the optimum, at the cost they always had.
///  - The outlook: a backward pass over a grid of `outlook_cells` (4096) cells of held bytes,
///    async states left out (they only add bytes), gives per layer a lower bound of the time the
///    layers above still cost and whether they can fit at all. O(n x cells x choices).
///  - A quick pass keeps per layer the 256 partial plans whose time plus outlook is least (and
///    each state's least-holding one, so that a plan that fits is never lost): a plan to beat.
///  - The bounded pass rounds time as the knapsack FPTAS does. A partial plan X is absorbed by a
///    plan K in its own or a dominating state holding no more bytes when K's time exceeds the best
///    of those X stands for by at most (k + 1) x d after layer k, with d = tolerance x T / n,
///    T = a lower bound of any plan's step time (the kept step plus each layer's cheapest extra),
///    tolerance 0.5% (`plan_time_tolerance`). Every completion of X fits with K, so over n layers
///    the plan returned loses at most tolerance x T <= 0.5% of the optimum's predicted step time.
///    Plans kept in one state are then more than d apart in time: at most span / d + 1 of them,
///    span being the state's range of times, O(n / tolerance) per state and O(n) states (one per
///    distinct pending stash): polynomial, O(n^3 / tolerance) partial plans over the whole search
///    at worst. Partial plans whose time plus outlook exceeds the plan to beat are dropped (none
///    of them can lead to the optimum), which leaves a thin band of each front.
/// Memory: the fronts of one layer, a link (parent, choice) per kept partial plan, and the
/// outlook (n x 4096 doubles). The smallest feasible budget is a bisection on the budget, each
/// step asking "does any plan fit" (one partial plan per state, the one holding least): exact,
/// O(log(bytes) x n x states). A budget under it raises an error naming it.

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
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "actckpt/layer/checkpointed_layer.hpp"
#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/layer/label_layers.hpp"
#include "actckpt/measure/memory_meter.hpp"
#include "actckpt/base/observer.hpp"
#include "actckpt/hooks/saved_tensor_hooks.hpp"
#include "actckpt/planner/optimizer_state.hpp"
#include "actckpt/policy/stash_options.hpp"

#if ACTCKPT_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace actckpt {

/// What the plan does with one layer.
enum class LayerChoice {
  keep,           ///< not checkpointed: runs directly, autograd keeps its activations
  checkpoint,     ///< checkpointed, inputs kept on the device
  sync_offload,   ///< checkpointed, inputs copied to host memory and back, blocking
  async_offload,  ///< checkpointed, inputs copied on the side stream / worker, prefetched
  /// not checkpointed, no recompute: every activation autograd saves (parameters and buffers
  /// aside) is copied to the host pool asynchronously and prefetched a layer ahead in backward
  /// (`StashOptions::offload_saved`). Only where host memory is separate from the device's.
  offload_saved,
};

constexpr std::string_view to_string(LayerChoice c) noexcept {
  switch (c) {
    case LayerChoice::keep: return "keep";
    case LayerChoice::checkpoint: return "checkpoint";
    case LayerChoice::sync_offload: return "sync offload";
    case LayerChoice::async_offload: return "async offload";
    case LayerChoice::offload_saved: return "offload saved";
  }
  return "unknown";
}

/// The three configurations the profile measures (async offload is derived from them).
enum class ProfiledMode { keep = 0, checkpoint = 1, sync_offload = 2 };
inline constexpr std::size_t profiled_modes = 3;

/// One layer's measurements, per `ProfiledMode` (index with `static_cast<std::size_t>(mode)`).
struct LayerProfile {
  std::string label;          ///< the layer's own label
  std::size_t module_index;   ///< its position among the model's Checkpointed layers in `modules()` order
  std::int64_t stash_bytes = 0;  ///< its inputs: what checkpointing keeps and offloading moves
  std::int64_t held_bytes[profiled_modes] = {};
  std::int64_t forward_peak_bytes[profiled_modes] = {};
  std::int64_t backward_peak_bytes[profiled_modes] = {};
  double forward_ms[profiled_modes] = {};
  double backward_ms[profiled_modes] = {};
  double recompute_ms = 0;  ///< checkpointed: from its backward's start to the recompute's end
  double offload_ms = 0;  ///< the sync device-to-host copy of its stash
  double restore_ms = 0;  ///< the sync host-to-device copy back
  /// Kept run: bytes of the activations autograd saves in its forward, parameters and buffers
  /// aside, each storage once (what offload-saved moves each way).
  std::int64_t saved_bytes = 0;
};

/// What `profile_step` measured. Bytes are as the meter reads them (see PlannerOptions::meter).
struct StepProfile {
  std::vector<LayerProfile> layers;  ///< in forward order
  std::int64_t start_bytes = 0;      ///< device bytes when the first layer's forward starts (kept run)
  std::int64_t head_peak_bytes = 0;  ///< peak before the first layer's forward
  std::int64_t tail_peak_bytes = 0;  ///< above the last forward's end level, until the last backward
  double tail_ms = 0;                ///< from the last forward's end to the last backward's start
  double step_ms[profiled_modes] = {};             ///< the whole step, per configuration
  std::int64_t step_peak_bytes[profiled_modes] = {};  ///< its measured peak, per configuration
  double d2h_bytes_per_s = 0;  ///< measured (sync copies); 0: nothing was copied
  double h2d_bytes_per_s = 0;
  bool host_memory_separate = false;  ///< the device is not the CPU
};

/// Costs the solver uses instead of the measured ones: tests and what-if questions (for example
/// a GPU's bandwidth and separate host memory, on a CPU).
struct OffloadCosts {
  std::optional<double> d2h_bytes_per_s;
  std::optional<double> h2d_bytes_per_s;
  std::optional<bool> host_memory_separate;
};

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
};

/// A plan's predicted peak (bytes, as the meter reads them) and step time.
struct PlanEstimate {
  std::int64_t peak_bytes = 0;
  double step_ms = 0;
};

/// The planner's answer.
struct MemoryPlan {
  std::vector<LayerChoice> choices;       ///< per layer, forward order
  std::vector<std::string> labels;        ///< the layers' labels, forward order
  std::vector<std::size_t> module_index;  ///< where each layer is among the model's Checkpointed layers
  std::int64_t budget_bytes = 0;
  std::int64_t predicted_peak_bytes = 0;
  double predicted_step_ms = 0;

  /// "layers 0-5 checkpoint, 6-7 keep" (forward order, 0-based).
  std::string describe() const;
  /// Sets each layer's StashOptions (the pool exhaustion behaviour it had is kept). The model
  /// must have the Checkpointed layers it was profiled with.
  void apply(torch::nn::Module& model) const;
};

namespace detail::planner {

inline std::vector<CheckpointedLayer*> find_layers(torch::nn::Module& model) {
  std::vector<CheckpointedLayer*> layers;
  // The model itself apart: modules(include_self) needs it to be held by a shared_ptr.
  if (auto* self = dynamic_cast<CheckpointedLayer*>(&model)) layers.push_back(self);
  for (const auto& m : model.modules(/*include_self=*/false))
    if (auto* layer = dynamic_cast<CheckpointedLayer*>(m.get())) layers.push_back(layer);
  return layers;
}

inline std::string mib(std::int64_t bytes) {
  std::ostringstream s;
  s.precision(2);
  s << std::fixed << static_cast<double>(bytes) / 1048576.0 << " MiB (" << bytes << " bytes)";
  return s.str();
}

/// The StashOptions that carry out `choice`; `base` gives what the plan does not decide.
inline StashOptions options_for(LayerChoice choice, StashOptions base) {
  // Offload saved runs the layer once (as keep); `checkpoint` is not read then, false says so.
  base.checkpoint = choice != LayerChoice::keep && choice != LayerChoice::offload_saved;
  base.offload_saved = choice == LayerChoice::offload_saved;
  base.keep_on_device = 0;     // async: every stash starts moving when its layer's forward ends
  base.min_offload_bytes = 1;  // the model moves every non-empty stash
  switch (choice) {
    case LayerChoice::keep:
    case LayerChoice::checkpoint: base.mode = StashMode::device; break;
    case LayerChoice::sync_offload: base.mode = StashMode::sync_host; break;
    case LayerChoice::async_offload:
    case LayerChoice::offload_saved: base.mode = StashMode::async_host; break;
  }
  return base;
}

/// Puts every layer's options and label, and the model's buffers, back as they were.
class ModelStateGuard {
 public:
  ModelStateGuard(torch::nn::Module& model, std::vector<CheckpointedLayer*> layers) : layers_(std::move(layers)) {
    for (auto* l : layers_) {
      options_.push_back(l->stash_options());
      labels_.push_back(l->label());
      explicit_.push_back(l->label_is_explicit());
    }
    torch::NoGradGuard no_grad;
    for (auto& b : model.buffers()) buffers_.emplace_back(b, b.clone());  // BatchNorm statistics
  }
  ~ModelStateGuard() {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layers_[i]->set_stash_options(options_[i]);
      if (explicit_[i]) layers_[i]->set_label(labels_[i]);
      else layers_[i]->set_derived_label(labels_[i]);
    }
    torch::NoGradGuard no_grad;
    for (auto& [b, saved] : buffers_) b.copy_(saved);
  }
  ModelStateGuard(const ModelStateGuard&) = delete;
  ModelStateGuard& operator=(const ModelStateGuard&) = delete;
  const std::string& label(std::size_t i) const { return labels_[i]; }

 private:
  std::vector<CheckpointedLayer*> layers_;
  std::vector<StashOptions> options_;
  std::vector<std::string> labels_;
  std::vector<bool> explicit_;
  std::vector<std::pair<at::Tensor, at::Tensor>> buffers_;
};

inline constexpr std::string_view label_prefix = "actckpt.planner.";

/// One event of a profiled step. Boundaries (forward_begin/end, backward_begin) carry the meter
/// readings; copies carry bytes.
struct Mark {
  EventKind kind;
  std::size_t layer;  // index in modules() order
  double ms;          // since the step started
  std::int64_t bytes_now = 0;
  std::int64_t peak_before = 0;  // the peak since the previous boundary
  std::int64_t copy_bytes = 0;
};

/// Listens to the planner's layers and reads the meter at each layer boundary.
class StepRecorder final : public Observer {
 public:
  StepRecorder(MemoryMeter& meter, c10::Device device) : meter_(meter), device_(device) {}

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
    seen_.clear();
    current_ = none_;
    synchronize();
    meter_.reset_peak();
    start_bytes_ = meter_.device_bytes();
    start_ = std::chrono::steady_clock::now();
  }
  /// Ends the step: the final segment's peak and the duration.
  std::vector<Mark> finish(std::int64_t& end_peak, double& end_ms) {
    std::lock_guard<std::mutex> lock(mutex_);
    synchronize();
    end_peak = meter_.device_peak_bytes();
    end_ms = elapsed_ms(std::chrono::steady_clock::now());
    return std::move(marks_);
  }

  void on_event(const Event& e) override {
    if (e.label.substr(0, label_prefix.size()) != label_prefix) return;
    const std::size_t layer = std::stoul(std::string(e.label.substr(label_prefix.size())));
    std::lock_guard<std::mutex> lock(mutex_);
    Mark m{e.kind, layer, elapsed_ms(e.time)};
    if (e.kind == EventKind::forward_begin) current_ = layer;
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
  mutable std::mutex mutex_;
  std::vector<Mark> marks_;
  static constexpr std::size_t none_ = std::numeric_limits<std::size_t>::max();
  std::size_t current_ = none_;          // the planner layer whose forward runs (saves count for it)
  std::vector<std::int64_t> saved_;      // per layer, modules() order
  std::set<const void*> seen_, excluded_;  // storages counted this step; parameters' and buffers'

  std::int64_t start_bytes_ = 0;
  std::chrono::steady_clock::time_point start_;
};

/// One measured step, reduced to per-layer figures (forward order).
struct StepFigures {
  std::vector<std::size_t> order;  // modules() indices in forward order
  std::vector<std::int64_t> held, forward_peak, backward_peak, stash, saved;
  std::vector<double> forward_ms, backward_ms, recompute_ms, offload_ms, restore_ms;
  std::int64_t start_bytes = 0, head_peak = 0, tail_peak = 0, step_peak = 0;
  double tail_ms = 0, step_ms = 0;
};

inline StepFigures reduce(const std::vector<Mark>& marks, std::size_t n, std::int64_t end_peak, double end_ms,
                          const std::vector<std::string>& labels) {
  // Boundaries in time order; per layer the first of each kind.
  std::vector<const Mark*> bounds;
  constexpr std::size_t none = std::numeric_limits<std::size_t>::max();
  std::vector<std::size_t> fb(n, none), fe(n, none), bb(n, none);
  for (const auto& m : marks) {
    if (m.kind != EventKind::forward_begin && m.kind != EventKind::forward_end && m.kind != EventKind::backward_begin)
      continue;
    auto& slot = m.kind == EventKind::forward_begin ? fb[m.layer] : m.kind == EventKind::forward_end ? fe[m.layer] : bb[m.layer];
    ACTCKPT_CHECK(slot == none, UsageError, "actckpt::profile_step: layer '", labels[m.layer], "' ran ",
                m.kind == EventKind::backward_begin ? "its backward" : "its forward",
                " twice in one sample step; the planner models a chain in which every Checkpointed layer runs once");
    slot = bounds.size();
    bounds.push_back(&m);
  }
  for (std::size_t i = 0; i < n; ++i) {
    ACTCKPT_CHECK(fb[i] != none && fe[i] != none, UsageError, "actckpt::profile_step: layer '", labels[i],
                "' did not run its forward in the sample step; every Checkpointed layer of the model must run once "
                "per step (is the model in training mode, with grad mode on?)");
    ACTCKPT_CHECK(bb[i] != none, UsageError, "actckpt::profile_step: layer '", labels[i],
                "' did not run its backward in the sample step; the step must call backward on a loss that "
                "depends on every Checkpointed layer's output");
  }
  StepFigures f;
  f.order.resize(n);
  for (std::size_t i = 0; i < n; ++i) f.order[i] = i;
  std::sort(f.order.begin(), f.order.end(), [&](std::size_t a, std::size_t b) { return fb[a] < fb[b]; });
  for (std::size_t p = 0; p < n; ++p) {
    const auto k = f.order[p];
    // A link of a chain: nothing else starts or ends between its forward's begin and end, and
    // the layer below starts its backward after it.
    ACTCKPT_CHECK(fb[k] + 1 == fe[k] && (p == 0 || bb[f.order[p - 1]] > bb[k]), UsageError,
                "actckpt::profile_step: layer '", labels[k], "' does not run as a link of a chain (its forward "
                "overlaps another layer's, or the backwards do not run in reverse forward order); the planner "
                "plans chains of layers");
  }
  auto peak_in = [&](std::size_t after, std::size_t upto) {  // max over boundaries (after, upto]
    std::int64_t p = bounds[after]->bytes_now;
    for (std::size_t i = after + 1; i <= upto && i < bounds.size(); ++i) p = std::max(p, bounds[i]->peak_before);
    return p;
  };
  const std::size_t last = f.order.back();
  f.start_bytes = bounds[fb[f.order.front()]]->bytes_now;
  f.head_peak = std::max(bounds[fb[f.order.front()]]->peak_before, f.start_bytes);
  f.tail_peak = peak_in(fe[last], bb[last]) - bounds[fe[last]]->bytes_now;
  f.tail_ms = bounds[bb[last]]->ms - bounds[fe[last]]->ms;
  f.step_ms = end_ms;
  f.step_peak = end_peak;
  for (const auto* b : bounds) f.step_peak = std::max(f.step_peak, b->peak_before);
  for (std::size_t p = 0; p < n; ++p) {
    const auto k = f.order[p];
    const auto level = bounds[fb[k]]->bytes_now;
    const bool top = p + 1 == n;
    const std::size_t fwd_end = top ? fe[k] : fb[f.order[p + 1]];
    f.held.push_back(bounds[fwd_end]->bytes_now - level);
    f.forward_peak.push_back(peak_in(fb[k], fwd_end) - level);
    f.forward_ms.push_back(bounds[fe[k]]->ms - bounds[fb[k]]->ms);
    if (p == 0) {
      std::int64_t peak = peak_in(bb[k], bounds.size() - 1);
      peak = std::max(peak, end_peak);
      f.backward_peak.push_back(peak - level);
      f.backward_ms.push_back(end_ms - bounds[bb[k]]->ms);
    } else {
      const auto below = bb[f.order[p - 1]];
      f.backward_peak.push_back(peak_in(bb[k], below) - level);
      f.backward_ms.push_back(bounds[below]->ms - bounds[bb[k]]->ms);
    }
  }
  // Copies (sync run): offload_begin -> offload_end; backward_begin or the previous restore_end
  // -> restore_end.
  std::vector<std::int64_t> stash(n, 0);
  std::vector<double> offload(n, 0), restore(n, 0), recompute(n, 0), open_offload(n, -1), last_restore(n, -1),
      backward_start(n, -1);
  for (const auto& m : marks) {
    switch (m.kind) {
      case EventKind::offload_begin:
        stash[m.layer] += m.copy_bytes;
        open_offload[m.layer] = m.ms;
        break;
      case EventKind::offload_end:
        if (open_offload[m.layer] >= 0) offload[m.layer] += m.ms - open_offload[m.layer];
        open_offload[m.layer] = -1;
        break;
      case EventKind::backward_begin: last_restore[m.layer] = backward_start[m.layer] = m.ms; break;
      case EventKind::recompute_end:
        if (backward_start[m.layer] >= 0) recompute[m.layer] = m.ms - backward_start[m.layer];
        break;
      case EventKind::restore_end:
        if (last_restore[m.layer] >= 0) restore[m.layer] += m.ms - last_restore[m.layer];
        last_restore[m.layer] = m.ms;
        break;
      default: break;
    }
  }
  for (auto k : f.order) {
    f.stash.push_back(stash[k]);
    f.offload_ms.push_back(offload[k]);
    f.restore_ms.push_back(restore[k]);
    f.recompute_ms.push_back(recompute[k]);
  }
  return f;
}

template <class T>
T median(std::vector<T> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

/// Per-layer quantities of one choice, as the cost model sees them.
struct ChoiceCost {
  std::int64_t held, forward_peak, backward_peak;
  double extra_ms;
};

/// The cost model, shared by the search and `evaluate_plan` so that both agree exactly.
class CostModel {
 public:
  CostModel(const StepProfile& p, const OffloadCosts& costs) : p_(p) {
    separate_ = costs.host_memory_separate.value_or(p.host_memory_separate);
    d2h_ = costs.d2h_bytes_per_s.value_or(p.d2h_bytes_per_s);
    h2d_ = costs.h2d_bytes_per_s.value_or(p.h2d_bytes_per_s);
    ACTCKPT_CHECK(d2h_ >= 0 && h2d_ >= 0, UsageError, "actckpt: offload bandwidths must not be negative");
  }
  std::size_t size() const { return p_.layers.size(); }
  bool can_offload() const { return d2h_ > 0 && h2d_ > 0; }
  /// Offload saved may be chosen for layer k: host memory is separate (on CPU it would save
  /// nothing and cost copies), copies can be timed, and the layer saved something.
  bool can_offload_saved(std::size_t k) const { return separate_ && can_offload() && p_.layers[k].saved_bytes > 0; }
  bool allows(std::size_t k, LayerChoice c) const {
    switch (c) {
      case LayerChoice::keep:
      case LayerChoice::checkpoint: return true;
      case LayerChoice::sync_offload:
      case LayerChoice::async_offload: return can_offload();
      case LayerChoice::offload_saved: return can_offload_saved(k);
    }
    return false;
  }

  /// `prefetched_from_above`: (async) an async layer above triggers this layer's prefetch.
  ChoiceCost cost(std::size_t k, LayerChoice c, bool prefetched_from_above) const {
    const auto& l = p_.layers[k];
    const auto K = idx(ProfiledMode::keep), C = idx(ProfiledMode::checkpoint), S = idx(ProfiledMode::sync_offload);
    const double ckpt_extra = l.recompute_ms;
    const bool runs_once = c == LayerChoice::keep || c == LayerChoice::offload_saved;
    const std::size_t mem = runs_once ? K : (c == LayerChoice::checkpoint || !separate_) ? C : S;
    ChoiceCost r{l.held_bytes[mem], l.forward_peak_bytes[mem], l.backward_peak_bytes[mem], 0.0};
    const double out_ms = copy_ms(l.stash_bytes, d2h_), in_ms = copy_ms(l.stash_bytes, h2d_);
    switch (c) {
      case LayerChoice::keep: break;
      case LayerChoice::offload_saved: {
        r.held = saved_held(k);
        const bool top = k + 1 == size();
        const double forward_window = top ? p_.tail_ms : p_.layers[k + 1].forward_ms[K];
        const double backward_window = top ? 0.0 : p_.layers[k + 1].backward_ms[K];
        r.extra_ms = std::max(0.0, copy_ms(l.saved_bytes, d2h_) - forward_window) +
                     std::max(0.0, copy_ms(l.saved_bytes, h2d_) - backward_window);
        break;
      }
      case LayerChoice::checkpoint: r.extra_ms = ckpt_extra; break;
      case LayerChoice::sync_offload: r.extra_ms = ckpt_extra + out_ms + in_ms; break;
      case LayerChoice::async_offload: {
        const bool top = k + 1 == size();
        const double forward_window = top ? p_.tail_ms : p_.layers[k + 1].forward_ms[K];
        const double backward_window = prefetched_from_above && !top ? p_.layers[k + 1].backward_ms[K] : 0.0;
        r.extra_ms = ckpt_extra + std::max(0.0, out_ms - forward_window) + std::max(0.0, in_ms - backward_window);
        break;
      }
    }
    return r;
  }
  /// Bytes an async offload of layer k frees once its copy is done (still there while in flight).
  std::int64_t freed(std::size_t k) const {
    if (!separate_) return 0;
    const auto& l = p_.layers[k];
    return std::max<std::int64_t>(0, l.held_bytes[idx(ProfiledMode::checkpoint)] - l.held_bytes[idx(ProfiledMode::sync_offload)]);
  }
  /// Offload saved: what layer k holds until its backward (its output at least).
  std::int64_t saved_held(std::size_t k) const {
    const auto& l = p_.layers[k];
    if (!separate_) return l.held_bytes[idx(ProfiledMode::keep)];
    return std::max(l.held_bytes[idx(ProfiledMode::checkpoint)], l.held_bytes[idx(ProfiledMode::keep)] - l.saved_bytes);
  }
  /// Offload saved: the bytes layer k's copies free, in flight during the next layer's forward
  /// and prefetched back during the backward of the layer above.
  std::int64_t saved_freed(std::size_t k) const {
    return std::max<std::int64_t>(0, p_.layers[k].held_bytes[idx(ProfiledMode::keep)] - saved_held(k));
  }
  /// Bytes a prefetch of layer k's stash allocates ahead of its backward.
  std::int64_t prefetch_bytes(std::size_t k) const { return separate_ ? p_.layers[k].stash_bytes : 0; }
  const StepProfile& profile() const { return p_; }

  static std::size_t idx(ProfiledMode m) { return static_cast<std::size_t>(m); }

 private:
  static double copy_ms(std::int64_t bytes, double per_s) { return per_s > 0 ? 1e3 * static_cast<double>(bytes) / per_s : 0.0; }
  const StepProfile& p_;
  bool separate_ = false;
  double d2h_ = 0, h2d_ = 0;
};

/// Where async prefetches stand below the next layer: none yet, the highest one waits for an
/// async layer above to trigger it, or the highest one has none above (nothing more may be async).
enum class Prefetch : std::uint8_t { none, pending, closed };

/// The state a partial plan hands to the next layer (see the file comment).
struct Key {
  std::int64_t in_flight = 0;       // bytes still on the device while the next layer runs forward
  std::int64_t saved_prefetch = 0;  // offload-saved layer below: bytes it brings back during the next layer's backward
  Prefetch prefetch = Prefetch::none;
  std::int64_t prefetch_bytes = 0;  // stash of the highest async layer below while its prefetch is pending, else 0
  bool operator==(const Key& o) const {
    return in_flight == o.in_flight && saved_prefetch == o.saved_prefetch && prefetch == o.prefetch &&
           prefetch_bytes == o.prefetch_bytes;
  }
  bool operator<(const Key& o) const {
    return std::tie(in_flight, saved_prefetch, prefetch, prefetch_bytes) <
           std::tie(o.in_flight, o.saved_prefetch, o.prefetch, o.prefetch_bytes);
  }
};

/// A partial plan on the search's front (layers 0..k-1 chosen).
struct Node {
  std::int64_t held;     // S_k - start_bytes
  double ms;             // this plan's predicted extra time so far
  double lower_ms;       // no partial plan this node stands for (itself and those it absorbed) is faster
  std::uint32_t parent;  // its prefix's index on the previous front
  LayerChoice choice;    // its choice for layer k-1
};

/// What the search keeps of each front to rebuild the plan (the fronts themselves live one layer).
struct Link {
  std::uint32_t parent;
  LayerChoice choice;
};

/// `plan_for_budget`'s tolerance: its plan's predicted step time is at most this much (relative)
/// over the fastest plan that fits.
inline constexpr double plan_time_tolerance = 0.005;
/// A layer whose candidate partial plans are at most this many is pruned exactly (small chains
/// get the exact optimum, as before the search was bounded).
inline constexpr std::size_t exact_up_to_nodes = 4096;
/// The quick pass's nodes per layer (its plan is the one the bounded pass must beat).
inline constexpr std::size_t beam_width = 256;
/// The outlook's grid of held bytes.
inline constexpr std::size_t outlook_cells = 4096;
/// `search`'s tolerance for "does any plan fit": time does not matter, only the least held bytes.
inline constexpr double feasibility_only = std::numeric_limits<double>::infinity();

/// A lower bound of any plan's predicted extra time (over the kept step): each layer's cheapest choice.
inline double extra_ms_lower_bound(const CostModel& model) {
  double ms = 0;
  for (std::size_t k = 0; k < model.size(); ++k) {
    double cheapest = model.cost(k, LayerChoice::keep, false).extra_ms;
    for (auto c : {LayerChoice::checkpoint, LayerChoice::sync_offload, LayerChoice::async_offload,
                   LayerChoice::offload_saved}) {
      if (!model.allows(k, c)) continue;
      for (bool from_above : {false, true}) cheapest = std::min(cheapest, model.cost(k, c, from_above).extra_ms);
    }
    ms += cheapest;
  }
  return ms;
}

/// What one pass of the search found: the fastest plan on its last front.
struct Found {
  bool exact = true;  // nothing was dropped but by exact dominance or because it cannot fit
  std::vector<LayerChoice> choices;
  double ms = 0;  // its predicted extra time
};

/// A lower bound of the extra time the layers from k on still cost, as a function of the held
/// bytes below them, and whether they can fit at all: the same chain with the async states
/// left out (they only add bytes), on a grid of held bytes, each cell read at its smallest
/// value (fewer bytes below never cost more). Lets the search drop a partial plan that cannot
/// fit, or cannot beat a plan already found.
class Outlook {
 public:
  Outlook(const CostModel& model, std::int64_t limit, std::size_t cells) : n_(model.size()) {
    const auto& p = model.profile();
    // Every partial plan's held bytes lie between the lowest and highest prefix sums.
    std::int64_t low = 0, high = 0, lowest = 0, highest = 0;
    for (std::size_t k = 0; k < n_; ++k) {
      std::int64_t least = std::numeric_limits<std::int64_t>::max(), most = std::numeric_limits<std::int64_t>::min();
      for (auto c : choices(model)) {
        if (!model.allows(k, c)) continue;
        least = std::min(least, model.cost(k, c, false).held);
        most = std::max(most, model.cost(k, c, false).held);
      }
      low += least, high += most;
      lowest = std::min(lowest, low), highest = std::max(highest, high);
    }
    // Held bytes above limit - start_bytes seldom fit: the grid ends there when that is lower,
    // and a value beyond it reads the last cell (a lower bound: the outlook grows with held bytes).
    low_ = lowest;
    const std::int64_t top = std::max(lowest, std::min(highest, limit - p.start_bytes));
    cells_ = cells;
    cell_bytes_ = std::max<std::int64_t>(1, (top - lowest) / static_cast<std::int64_t>(cells) + 1);
    ms_.assign((n_ + 1) * cells_, 0.0);
    const double none = std::numeric_limits<double>::infinity();
    const auto last = static_cast<std::ptrdiff_t>(cells_) - 1;
    for (std::size_t k = n_; k-- > 0;) {
      double* here = &ms_[k * cells_];
      const double* above = &ms_[(k + 1) * cells_];
      std::fill(here, here + cells_, none);
      for (auto c : choices(model)) {
        if (!model.allows(k, c)) continue;
        for (bool from_above : {false, true}) {
          if (from_above && (c != LayerChoice::async_offload || k + 1 == n_)) continue;
          const auto cc = model.cost(k, c, from_above);
          // Cells whose smallest held value fits this choice: b <= fits.
          std::int64_t room = limit - p.start_bytes - std::max(cc.forward_peak, cc.backward_peak);
          if (k + 1 == n_) room = std::min(room, limit - p.start_bytes - cc.held - p.tail_peak_bytes);
          if (room < low_) continue;
          const auto fits = std::min<std::ptrdiff_t>(last, static_cast<std::ptrdiff_t>((room - low_) / cell_bytes_));
          // The cell above: low + b x cell + held is in cell b + floor(held / cell).
          const auto shift = static_cast<std::ptrdiff_t>(cc.held >= 0 ? cc.held / cell_bytes_
                                                                        : -((-cc.held + cell_bytes_ - 1) / cell_bytes_));
          for (std::ptrdiff_t b = 0; b <= fits; ++b)
            here[b] = std::min(here[b], cc.extra_ms + above[std::clamp<std::ptrdiff_t>(b + shift, 0, last)]);
        }
      }
    }
  }
  /// The least extra time of layers k..n-1 above `held` bytes (infinite: they cannot fit).
  double lower_ms(std::size_t k, std::int64_t held) const { return ms_[k * cells_ + cell(held)]; }

 private:
  static std::vector<LayerChoice> choices(const CostModel& model) {
    if (model.can_offload())
      return {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload, LayerChoice::async_offload,
              LayerChoice::offload_saved};
    return {LayerChoice::keep, LayerChoice::checkpoint};
  }
  std::size_t cell(std::int64_t held) const {
    if (held <= low_) return 0;
    return std::min<std::size_t>(cells_ - 1, static_cast<std::size_t>((held - low_) / cell_bytes_));
  }
  std::size_t n_, cells_ = 1;
  std::int64_t low_ = 0, cell_bytes_ = 1;
  std::vector<double> ms_;
};

/// One pass of the search (see the file comment). `per_layer`: what a node's time may grow over
/// the best it stands for, per layer (0: exact; infinite: one node per state), on layers with
/// more than `exact_up_to` candidates. `outlook`: drops the partial plans that cannot fit or
/// cannot beat `beat_ms`. `beam`: keep at most that many per layer (the quick pass), or with
/// `give_up_at_beam` return a Found without choices when a front grows past it.
inline std::optional<Found> search_pass(const CostModel& model, std::int64_t limit, double per_layer,
                                        std::size_t exact_up_to, const Outlook* outlook = nullptr,
                                        double beat_ms = std::numeric_limits<double>::infinity(),
                                        std::size_t beam = 0, bool give_up_at_beam = false) {
  const auto& p = model.profile();
  const std::size_t n = model.size();
  const std::int64_t base = p.start_bytes;
  if (p.head_peak_bytes > limit || n == 0) return std::nullopt;
  struct Group {
    Key key;
    std::vector<Node> nodes;  // by held bytes, then time
  };
  std::vector<std::vector<Link>> links(n);  // links[k][i]: node i of the front after layer k
  std::vector<Group> front{Group{Key{}, {Node{0, 0.0, 0.0, 0, LayerChoice::keep}}}}, next;
  struct Stair {
    std::int64_t held;
    double ms;
    Node* node;
  };
  std::vector<Stair> stairs, stairs_of_none, stairs_of_free, merged;
  struct Score {
    double value;
    std::size_t group, index;
  };
  std::vector<Score> scores;
  bool exact = true;
  const LayerChoice all[] = {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload,
                             LayerChoice::async_offload, LayerChoice::offload_saved};
  std::map<Key, std::size_t> group_of;
  for (std::size_t k = 0; k < n; ++k) {
    next.clear();
    group_of.clear();
    std::size_t candidates = 0;
    std::uint32_t first_index = 0;  // the index on the front of a group's first node
    for (const auto& group : front) {
      const Key& key = group.key;
      for (auto c : all) {
        if (!model.allows(k, c)) continue;
        // Async comes in two variants: prefetched by an async layer above (which must then
        // come) or the highest async layer (none may follow).
        for (int variant = 0; variant < (c == LayerChoice::async_offload ? 2 : 1); ++variant) {
          const bool from_above = c == LayerChoice::async_offload && variant == 0;
          if (c == LayerChoice::async_offload && key.prefetch == Prefetch::closed) continue;
          if (from_above && k + 1 == n) continue;
          Key nk = key;
          nk.in_flight = 0;
          nk.saved_prefetch = 0;
          if (c == LayerChoice::async_offload) {
            nk.prefetch = from_above ? Prefetch::pending : Prefetch::closed;
            nk.prefetch_bytes = from_above ? model.prefetch_bytes(k) : 0;  // closed: no prefetch waits
            nk.in_flight = model.freed(k);
          }
          if (c == LayerChoice::offload_saved) {  // does not touch the stash stack's prefetch state
            nk.in_flight = model.saved_freed(k);
            nk.saved_prefetch = k + 1 < n ? model.saved_freed(k) : 0;
          }
          if (k + 1 == n && nk.prefetch == Prefetch::pending) continue;  // promised an async layer above
          // Everything but the held bytes is the group's: the peak grows with them, so the
          // nodes that fit are a prefix of the group.
          const auto cc = model.cost(k, c, from_above);
          std::int64_t headroom = limit - base -
              std::max(cc.forward_peak + key.in_flight,
                       cc.backward_peak + (key.prefetch == Prefetch::pending ? key.prefetch_bytes : 0) +
                           key.saved_prefetch);
          if (k + 1 == n) headroom = std::min(headroom, limit - base - cc.held - p.tail_peak_bytes - nk.in_flight);
          auto [slot, added] = group_of.try_emplace(nk, next.size());
          if (added) next.push_back(Group{nk, {}});
          auto to = next.begin() + static_cast<std::ptrdiff_t>(slot->second);
          for (std::size_t i = 0; i < group.nodes.size() && group.nodes[i].held <= headroom; ++i) {
            const Node& parent = group.nodes[i];
            if (outlook != nullptr && !(parent.lower_ms + cc.extra_ms +
                                            outlook->lower_ms(k + 1, parent.held + cc.held) <= beat_ms))
              continue;  // cannot fit, or everything it stands for is slower than the plan to beat
            to->nodes.push_back(Node{parent.held + cc.held, parent.ms + cc.extra_ms, parent.lower_ms + cc.extra_ms,
                                     static_cast<std::uint32_t>(first_index + i), c});
            ++candidates;
          }
        }
      }
      first_index += static_cast<std::uint32_t>(group.nodes.size());
    }
    // Pruning. State A dominates state B (same bytes in flight) when A has no prefetch waiting
    // and B any, or both wait for one and A's is no larger: every completion of B is one of A,
    // with no higher peak and the same time. So a node X is absorbed by a node K in a state that
    // dominates X's (its own included), holding no more bytes, when K is no slower (exact), or,
    // with an allowance, when K is slower than the best X stands for by at most the allowance.
    // K takes X's lower bound, so a node's time never exceeds the best of the partial plans it
    // stands for by more than the allowance, which grows by per_layer a layer. States are taken
    // in an order where every dominating state comes first (none, then pending by size; closed
    // after none alone); `stairs` holds the kept nodes of the states before that may absorb, by
    // held bytes, each faster than all that hold less.
    std::sort(next.begin(), next.end(), [](const Group& a, const Group& b) { return a.key < b.key; });
    const double allowance = candidates <= exact_up_to ? 0.0 : per_layer * static_cast<double>(k + 1);
    exact = exact && allowance == 0;
    std::size_t kept_total = 0;
    stairs_of_free.clear();
    for (std::size_t gi = 0; gi < next.size(); ++gi) {
      auto& group = next[gi];
      // Within a block: the same bytes in flight and brought back (the free state dominates all).
      const bool new_block = gi == 0 || next[gi - 1].key.in_flight != group.key.in_flight ||
                             next[gi - 1].key.saved_prefetch != group.key.saved_prefetch;
      if (new_block) {
        // Nothing in flight, nothing brought back and no prefetch waiting dominates every state:
        // that group's stairs start every later block.
        stairs = stairs_of_free;
        stairs_of_none = stairs_of_free;
      }
      if (group.key.prefetch == Prefetch::closed) stairs.swap(stairs_of_none);  // only "none" dominates "closed"
      auto& nodes = group.nodes;
      std::sort(nodes.begin(), nodes.end(),
                [](const Node& a, const Node& b) { return std::tie(a.held, a.ms) < std::tie(b.held, b.ms); });
      std::size_t kept = 0;
      std::size_t stair = 0;  // stairs[stair - 1]: the last one holding no more than the node
      for (std::size_t r = 0; r < nodes.size(); ++r) {
        const Node x = nodes[r];
        while (stair < stairs.size() && stairs[stair].held <= x.held) ++stair;
        Node* absorber = kept > 0 ? &nodes[kept - 1] : nullptr;
        if (stair > 0 && (absorber == nullptr || stairs[stair - 1].ms < absorber->ms)) absorber = stairs[stair - 1].node;
        if (absorber != nullptr && (absorber->ms <= x.ms || absorber->ms <= x.lower_ms + allowance)) {
          absorber->lower_ms = std::min(absorber->lower_ms, x.lower_ms);
          continue;
        }
        nodes[kept++] = x;
      }
      nodes.resize(kept);
      kept_total += kept;
      // The stairs for the states after this one: this state's nodes with those before.
      merged.clear();
      std::size_t a = 0, b = 0;
      while (a < stairs.size() || b < kept) {
        const bool from_stairs = b == kept || (a < stairs.size() && stairs[a].held <= nodes[b].held);
        const Stair s = from_stairs ? stairs[a++] : Stair{nodes[b].held, nodes[b].ms, &nodes[b]};
        if (!from_stairs) ++b;
        if (merged.empty() || s.ms < merged.back().ms) merged.push_back(s);
      }
      stairs.swap(merged);
      const bool none_ends = group.key.prefetch == Prefetch::none;
      if (none_ends) stairs_of_none = stairs;
      if (none_ends && group.key.in_flight == 0 && group.key.saved_prefetch == 0) stairs_of_free = stairs;
    }
    if (kept_total == 0) return std::nullopt;  // (with a plan to beat: none beats it)
    if (beam > 0 && kept_total > beam && give_up_at_beam) {
      Found gave_up;
      gave_up.exact = false;
      return gave_up;  // no choices: the caller goes on with the outlook
    }
    if (beam > 0 && kept_total > beam) {
      // A quick plan to beat, no bound: the `beam` nodes whose time plus the outlook's bound
      // above them is least, and each state's node holding least (so that a plan that fits is
      // still found).
      scores.clear();
      for (std::size_t gi = 0; gi < next.size(); ++gi)
        for (std::size_t r = 1; r < next[gi].nodes.size(); ++r) {
          const Node& x = next[gi].nodes[r];
          scores.push_back(Score{x.ms + (outlook ? outlook->lower_ms(k + 1, x.held) : 0.0), gi, r});
        }
      if (scores.size() > beam) {
        std::nth_element(scores.begin(), scores.begin() + static_cast<std::ptrdiff_t>(beam), scores.end(),
                         [](const Score& a, const Score& b) { return a.value < b.value; });
        scores.resize(beam);
      }
      std::sort(scores.begin(), scores.end(),
                [](const Score& a, const Score& b) { return std::tie(a.group, a.index) < std::tie(b.group, b.index); });
      kept_total = 0;
      std::size_t at = 0;
      for (std::size_t gi = 0; gi < next.size(); ++gi) {
        auto& nodes = next[gi].nodes;
        std::size_t w = nodes.empty() ? 0 : 1;
        for (; at < scores.size() && scores[at].group == gi; ++at) nodes[w++] = nodes[scores[at].index];
        nodes.resize(w);
        kept_total += w;
      }
      exact = false;
    }
    next.erase(std::remove_if(next.begin(), next.end(), [](const Group& g) { return g.nodes.empty(); }), next.end());
    TORCH_CHECK(kept_total < std::numeric_limits<std::uint32_t>::max(), "actckpt: the planner's search front overflowed");
    links[k].reserve(kept_total);
    for (const auto& group : next)
      for (const auto& x : group.nodes) links[k].push_back(Link{x.parent, x.choice});
    front.swap(next);
  }
  Found found;
  found.exact = exact;
  found.ms = std::numeric_limits<double>::infinity();
  std::size_t best = 0, index = 0;
  for (const auto& group : front) {
    for (const auto& x : group.nodes) {
      if (x.ms < found.ms) found.ms = x.ms, best = index;
      ++index;
    }
  }
  found.choices.resize(n);
  std::size_t at = best;
  for (std::size_t k = n; k-- > 0;) {
    found.choices[k] = links[k][at].choice;
    at = links[k][at].parent;
  }
  return found;
}

/// How far the search may go before it approximates (tests set them low to exercise that).
struct SearchLimits {
  std::size_t exact_up_to = exact_up_to_nodes;  // layers with at most this many candidates are pruned exactly
  std::size_t beam = beam_width;                // the quick pass's nodes per layer
};

/// The search. `budget`: absolute bytes (or none). `tolerance`: the returned plan's predicted
/// step time is at most 1 + tolerance times the fastest fitting plan's (0: exact;
/// `feasibility_only`: any plan that fits). Returns the choices, or nullopt if no plan fits (that
/// answer is exact whatever the tolerance).
inline std::optional<std::vector<LayerChoice>> search(const CostModel& model, std::optional<std::int64_t> budget,
                                                      double tolerance, const SearchLimits& limits = {}) {
  // No budget: one far above any real one, with room for the sums against it not to overflow.
  const std::int64_t limit = budget.value_or(std::numeric_limits<std::int64_t>::max() / 4);
  const double n = static_cast<double>(std::max<std::size_t>(model.size(), 1));
  const double floor_ms = model.profile().step_ms[CostModel::idx(ProfiledMode::keep)] + extra_ms_lower_bound(model);
  constexpr auto unlimited = std::numeric_limits<std::size_t>::max();
  constexpr auto no_plan_to_beat = std::numeric_limits<double>::infinity();
  // Without a positive lower bound of the step time (a hand-made profile) there is no relative
  // tolerance to spend: exact. (Without a budget there is nothing to approximate for.)
  if (tolerance == feasibility_only || !(tolerance > 0) || !(floor_ms > 0) || !budget) {
    const bool any = tolerance == feasibility_only;
    auto found = search_pass(model, limit, any ? feasibility_only : 0.0, any ? 0 : unlimited);
    if (!found) return std::nullopt;
    return std::move(found->choices);
  }
  // Exact first, as long as the fronts stay within the beam: small or uniform chains get the
  // optimum at the cost they always had.
  auto quick = search_pass(model, limit, 0.0, unlimited, nullptr, no_plan_to_beat, limits.beam, true);
  if (!quick) return std::nullopt;
  if (quick->exact) return std::move(quick->choices);
  // Then a quick pass with the outlook: exact pruning, and the `beam` most promising nodes by
  // the outlook. Its plan is one to beat: the bounded pass keeps only the partial plans that the
  // outlook says may beat it, a thin band of the front.
  const Outlook outlook(model, limit, outlook_cells);
  quick = search_pass(model, limit, 0.0, unlimited, &outlook, no_plan_to_beat, limits.beam);
  if (!quick) return std::nullopt;
  if (quick->exact) return std::move(quick->choices);
  // With per_layer = tolerance x floor_ms / n the n layers lose at most tolerance x floor_ms,
  // within the tolerance of the optimum. The quick plan's own partial plans stay (a rounding
  // margin: the outlook sums its bounds in another order).
  const double beat = quick->ms + 1e-9 * (std::abs(quick->ms) + floor_ms);
  auto fine = search_pass(model, limit, tolerance * floor_ms / n, limits.exact_up_to, &outlook, beat);
  if (fine && fine->ms < quick->ms) return std::move(fine->choices);
  return std::move(quick->choices);
}

}  // namespace detail::planner

/// The cost model's prediction for `choices` (see the file comment).
inline PlanEstimate evaluate_plan(const StepProfile& profile, const std::vector<LayerChoice>& choices,
                                  const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  ACTCKPT_CHECK(choices.size() == profile.layers.size(), UsageError, "actckpt::evaluate_plan: ", choices.size(),
              " choices for a profile of ", profile.layers.size(), " layers");
  const CostModel model(profile, costs);
  const std::size_t n = choices.size();
  PlanEstimate e;
  e.peak_bytes = profile.head_peak_bytes;
  e.step_ms = profile.step_ms[CostModel::idx(ProfiledMode::keep)];
  std::int64_t held = 0, in_flight = 0, prefetch_bytes = 0, saved_prefetch = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const auto c = choices[k];
    ACTCKPT_CHECK(model.can_offload() || (c != LayerChoice::sync_offload && c != LayerChoice::async_offload &&
                                          c != LayerChoice::offload_saved), UsageError,
                "actckpt::evaluate_plan: layer ", k, " offloads, but no offload bandwidth was measured or given");
    ACTCKPT_CHECK(c != LayerChoice::offload_saved || model.allows(k, c), UsageError, "actckpt::evaluate_plan: layer ", k,
                " is 'offload saved', which needs host memory separate from the device's (here it is the same "
                "memory, so it would save nothing) and a profile that measured the layer's saved activations");
    bool async_above = false;
    for (std::size_t j = k + 1; j < n; ++j) async_above = async_above || choices[j] == LayerChoice::async_offload;
    // Prefetch pending: the highest async layer below k has an async layer at or above k.
    const bool pending = prefetch_bytes > 0 && (async_above || c == LayerChoice::async_offload);
    const auto cc = model.cost(k, c, async_above);
    const std::int64_t level = profile.start_bytes + held;
    e.peak_bytes = std::max({e.peak_bytes, level + cc.forward_peak + in_flight,
                             level + cc.backward_peak + (pending ? prefetch_bytes : 0) + saved_prefetch});
    e.step_ms += cc.extra_ms;
    held += cc.held;
    in_flight = c == LayerChoice::async_offload ? model.freed(k)
              : c == LayerChoice::offload_saved ? model.saved_freed(k)
                                                : 0;
    saved_prefetch = c == LayerChoice::offload_saved ? model.saved_freed(k) : 0;
    if (c == LayerChoice::async_offload) prefetch_bytes = model.prefetch_bytes(k);
  }
  e.peak_bytes = std::max(e.peak_bytes, profile.start_bytes + held + profile.tail_peak_bytes + in_flight);
  return e;
}

/// The smallest budget any plan fits, by the cost model (exact).
inline std::int64_t smallest_feasible_budget(const StepProfile& profile, const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  const CostModel model(profile, costs);
  auto any = search(model, std::nullopt, feasibility_only);
  ACTCKPT_CHECK(any.has_value(), UsageError, "actckpt: the profile has no plan at all (empty?)");
  // Bisection on "does any plan fit", which keeps one node per state and so stays small however
  // unlike the layers are (minimizing the peak directly keeps every (held, peak) pair that no
  // other dominates, as many as there are subsets of layers). Below the peak before the first
  // layer nothing fits; each fitting plan found lowers the upper end to its own peak.
  std::int64_t fits = evaluate_plan(profile, *any, costs).peak_bytes;
  std::int64_t too_small = profile.head_peak_bytes - 1;
  while (fits - too_small > 1) {
    const std::int64_t mid = too_small + (fits - too_small) / 2;
    if (auto plan = search(model, mid, feasibility_only)) fits = evaluate_plan(profile, *plan, costs).peak_bytes;
    else too_small = mid;
  }
  return fits;
}

/// The fastest plan whose predicted peak fits `budget_bytes` (absolute, as the profile's meter
/// reads bytes). Raises an error naming the smallest feasible budget if none fits.
inline MemoryPlan plan_for_budget(const StepProfile& profile, std::int64_t budget_bytes, const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_for_budget: the memory budget must be positive, got ", budget_bytes,
              " bytes");
  ACTCKPT_CHECK(!profile.layers.empty(), UsageError, "actckpt::plan_for_budget: the profile has no layers");
  const CostModel model(profile, costs);
  auto choices = search(model, budget_bytes, plan_time_tolerance);
  if (!choices) {
    const auto floor = smallest_feasible_budget(profile, costs);
    throw InfeasibleBudget(c10::str("actckpt::plan_for_budget: no plan fits a budget of ", mib(budget_bytes),
                                    "; the smallest feasible budget for this model and step is ", mib(floor),
                                    (costs.host_memory_separate.value_or(profile.host_memory_separate)
                                         ? ""
                                         : " (host and device memory are the same here, so offloading saves nothing)"),
                                    ". Raise the budget, or make the step smaller (batch, sequence length)."),
                           budget_bytes, floor);
  }
  MemoryPlan plan;
  plan.choices = *choices;
  for (const auto& l : profile.layers) {
    plan.labels.push_back(l.label);
    plan.module_index.push_back(l.module_index);
  }
  plan.budget_bytes = budget_bytes;
  const auto e = evaluate_plan(profile, plan.choices, costs);
  plan.predicted_peak_bytes = e.peak_bytes;
  plan.predicted_step_ms = e.step_ms;
  return plan;
}

/// Runs the sample step (see the file comment) and measures every Checkpointed layer of `model`.
/// `step` runs forward, loss and backward, and no optimizer step. The model keeps its layers'
/// options and labels, and its buffers; parameters' gradients are as the step leaves them.
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
  // A layer without an explicit label is named by its path in the model ("blocks.3").
  std::vector<std::string> labels;
  const auto paths = detail::layer_paths(model);
  for (std::size_t i = 0; i < n; ++i) {
    std::string label = restore.label(i);
    if (!layers[i]->label_is_explicit()) {
      for (const auto& [layer, path] : paths)
        if (layer == layers[i] && !path.empty()) label = path;
    }
    labels.push_back(std::move(label));
    layers[i]->set_label(std::string(label_prefix) + std::to_string(i));
  }
  auto recorder = std::make_shared<StepRecorder>(meter, device);
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
        runs[mode].push_back(reduce(marks, n, end_peak, end_ms, labels));
        const auto saved = recorder->saved_bytes(n);
        for (auto k : runs[mode].back().order) runs[mode].back().saved.push_back(saved[k]);
      }
    }
    const auto& order = runs[mode].front().order;
    for (const auto& r : runs[mode])
      ACTCKPT_CHECK(r.order == order, UsageError, "actckpt::profile_step: the layers ran in different orders in two sample steps");
    ACTCKPT_CHECK(mode == 0 || order == runs[0].front().order, UsageError,
                "actckpt::profile_step: the layers ran in a different order when ", names[mode]);
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
    const auto S = CostModel::idx(ProfiledMode::sync_offload);
    l.recompute_ms = med(CostModel::idx(ProfiledMode::checkpoint), &StepFigures::recompute_ms, p);
    l.stash_bytes = med(S, &StepFigures::stash, p);
    l.offload_ms = med(S, &StepFigures::offload_ms, p);
    l.restore_ms = med(S, &StepFigures::restore_ms, p);
    l.saved_bytes = med(CostModel::idx(ProfiledMode::keep), &StepFigures::saved, p);
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
  const auto K = CostModel::idx(ProfiledMode::keep);
  profile.start_bytes = scalar(K, &StepFigures::start_bytes) + shift;
  profile.head_peak_bytes = scalar(K, &StepFigures::head_peak) + shift;
  profile.tail_peak_bytes = scalar(K, &StepFigures::tail_peak);
  profile.tail_ms = scalar(K, &StepFigures::tail_ms);
  for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
    profile.step_ms[mode] = scalar(mode, &StepFigures::step_ms);
    profile.step_peak_bytes[mode] = scalar(mode, &StepFigures::step_peak) + shift;
  }
  if (copied > 0 && offload_ms > 0) profile.d2h_bytes_per_s = copied / (offload_ms / 1e3);
  if (copied > 0 && restore_ms > 0) profile.h2d_bytes_per_s = copied / (restore_ms / 1e3);
  return profile;
}

/// Profiles the step and returns the fastest plan that fits `budget_bytes` (not applied: call
/// `apply`). Bad input raises an error and leaves the model as it was.
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const PlannerOptions& options = {}) {
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_memory: the memory budget must be positive, got ", budget_bytes, " bytes");
  return plan_for_budget(profile_step(model, step, options), budget_bytes, options.costs);
}

/// The same, planned before `optimizer`'s first step: the state that step will create on the
/// model's device (`optimizer_state_bytes`) is added to `options.reserve_bytes`.
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const torch::optim::Optimizer& optimizer, PlannerOptions options = {}) {
  ACTCKPT_CHECK(budget_bytes > 0, UsageError, "actckpt::plan_memory: the memory budget must be positive, got ",
                budget_bytes, " bytes");
  c10::Device device(c10::kCPU);
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  options.reserve_bytes += optimizer_state_bytes(optimizer, options.meter ? options.meter->device() : device);
  return plan_for_budget(profile_step(model, step, options), budget_bytes, options.costs);
}

inline std::string MemoryPlan::describe() const {
  std::ostringstream s;
  for (std::size_t i = 0; i < choices.size();) {
    std::size_t j = i;
    while (j + 1 < choices.size() && choices[j + 1] == choices[i]) ++j;
    if (i > 0) s << ", ";
    s << (i == j ? "layer " : "layers ") << i;
    if (j > i) s << "-" << j;
    s << " " << to_string(choices[i]);
    i = j + 1;
  }
  return s.str();
}

inline void MemoryPlan::apply(torch::nn::Module& model) const {
  auto layers = detail::planner::find_layers(model);
  std::size_t wanted = 0;
  for (auto i : module_index) wanted = std::max(wanted, i + 1);
  ACTCKPT_CHECK(layers.size() == choices.size() && wanted == layers.size(), UsageError, "actckpt::MemoryPlan::apply: the plan is for ",
              choices.size(), " Checkpointed layers, the model has ", layers.size());
  for (std::size_t p = 0; p < choices.size(); ++p) {
    auto* layer = layers[module_index[p]];
    layer->set_stash_options(detail::planner::options_for(choices[p], layer->stash_options()));
  }
}

}  // namespace actckpt
