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
/// For each `Checkpointed` layer of a chain it chooses one of four things (`LayerChoice`): keep
/// (not checkpointed: autograd keeps its activations), checkpoint (inputs stay on the device),
/// sync offload, async offload; the choice is set at run time through the layer's
/// `StashOptions`, so any policy type works and gradients stay those of the unwrapped model.
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
///    each way, whose sums give the measured bandwidths.
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
///
/// Time: the kept run's step time plus, per layer, the extra of its choice:
///  - checkpoint: its measured recompute (a direct measurement: differences of whole forward and
///    backward spans between two runs drown in a busy machine's noise and can come out negative);
///  - sync offload: checkpoint's extra + stash/bandwidth_d2h + stash/bandwidth_h2d;
///  - async offload: checkpoint's extra + the copy time that does not hide: the device-to-host
///    copy behind the next layer's forward (the loss for the last layer), the host-to-device
///    prefetch behind the backward of the layer above, if an async layer above triggers it (else
///    nothing hides it). The real window can be longer (several layers), never shorter.
///
/// ## Search (`plan_for_budget`)
/// Dynamic programming over the chain, exact for this model: layers are added bottom up; a
/// partial plan's future depends only on its held bytes S, the stash of its highest async layer,
/// whether that layer's prefetch still needs an async layer above, and the bytes still in flight.
/// Among partial plans with the same such state, one with more bytes and more time is dropped.
/// Every constraint is checked against the budget as its layer is added; the fastest complete
/// plan wins. The smallest feasible budget is the same search minimizing the peak instead of the
/// time; a budget under it raises an error naming it.

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
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "actckpt/checkpointed_layer.hpp"
#include "actckpt/config.hpp"
#include "actckpt/memory_meter.hpp"
#include "actckpt/observer.hpp"
#include "actckpt/stash_options.hpp"

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
};

constexpr std::string_view to_string(LayerChoice c) noexcept {
  switch (c) {
    case LayerChoice::keep: return "keep";
    case LayerChoice::checkpoint: return "checkpoint";
    case LayerChoice::sync_offload: return "sync offload";
    case LayerChoice::async_offload: return "async offload";
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
  for (const auto& m : model.modules(/*include_self=*/true))
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
  base.checkpoint = choice != LayerChoice::keep;
  base.keep_on_device = 0;     // async: every stash starts moving when its layer's forward ends
  base.min_offload_bytes = 1;  // the model moves every non-empty stash
  switch (choice) {
    case LayerChoice::keep:
    case LayerChoice::checkpoint: base.mode = StashMode::device; break;
    case LayerChoice::sync_offload: base.mode = StashMode::sync_host; break;
    case LayerChoice::async_offload: base.mode = StashMode::async_host; break;
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
    }
    torch::NoGradGuard no_grad;
    for (auto& b : model.buffers()) buffers_.emplace_back(b, b.clone());  // BatchNorm statistics
  }
  ~ModelStateGuard() {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      layers_[i]->set_stash_options(options_[i]);
      layers_[i]->set_label(labels_[i]);
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

  void start() {
    std::lock_guard<std::mutex> lock(mutex_);
    marks_.clear();
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
  std::mutex mutex_;
  std::vector<Mark> marks_;
  std::int64_t start_bytes_ = 0;
  std::chrono::steady_clock::time_point start_;
};

/// One measured step, reduced to per-layer figures (forward order).
struct StepFigures {
  std::vector<std::size_t> order;  // modules() indices in forward order
  std::vector<std::int64_t> held, forward_peak, backward_peak, stash;
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
    TORCH_CHECK(slot == none, "actckpt::profile_step: layer '", labels[m.layer], "' ran ",
                m.kind == EventKind::backward_begin ? "its backward" : "its forward",
                " twice in one sample step; the planner models a chain in which every Checkpointed layer runs once");
    slot = bounds.size();
    bounds.push_back(&m);
  }
  for (std::size_t i = 0; i < n; ++i) {
    TORCH_CHECK(fb[i] != none && fe[i] != none, "actckpt::profile_step: layer '", labels[i],
                "' did not run its forward in the sample step; every Checkpointed layer of the model must run once "
                "per step (is the model in training mode, with grad mode on?)");
    TORCH_CHECK(bb[i] != none, "actckpt::profile_step: layer '", labels[i],
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
    TORCH_CHECK(fb[k] + 1 == fe[k] && (p == 0 || bb[f.order[p - 1]] > bb[k]),
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
    TORCH_CHECK(d2h_ >= 0 && h2d_ >= 0, "actckpt: offload bandwidths must not be negative");
  }
  std::size_t size() const { return p_.layers.size(); }
  bool can_offload() const { return d2h_ > 0 && h2d_ > 0; }

  /// `prefetched_from_above`: (async) an async layer above triggers this layer's prefetch.
  ChoiceCost cost(std::size_t k, LayerChoice c, bool prefetched_from_above) const {
    const auto& l = p_.layers[k];
    const auto K = idx(ProfiledMode::keep), C = idx(ProfiledMode::checkpoint), S = idx(ProfiledMode::sync_offload);
    const double ckpt_extra = l.recompute_ms;
    const std::size_t mem = c == LayerChoice::keep ? K : (c == LayerChoice::checkpoint || !separate_) ? C : S;
    ChoiceCost r{l.held_bytes[mem], l.forward_peak_bytes[mem], l.backward_peak_bytes[mem], 0.0};
    const double out_ms = copy_ms(l.stash_bytes, d2h_), in_ms = copy_ms(l.stash_bytes, h2d_);
    switch (c) {
      case LayerChoice::keep: break;
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
enum class Prefetch { none, pending, closed };

/// The state a partial plan hands to the next layer (see the file comment).
struct Key {
  std::int64_t prefetch_bytes = 0;  // stash of the highest async layer below
  Prefetch prefetch = Prefetch::none;
  std::int64_t in_flight = 0;       // bytes still on the device while the next layer runs forward
  bool operator<(const Key& o) const {
    return std::tie(prefetch_bytes, prefetch, in_flight) < std::tie(o.prefetch_bytes, o.prefetch, o.in_flight);
  }
};

struct Node {
  std::int64_t held;  // S - start_bytes
  double value;       // time so far, or the peak so far
  std::int64_t peak;  // predicted peak so far
  double ms;          // predicted extra time so far
  std::size_t parent;
  LayerChoice choice;
};

/// The search. `budget`: absolute bytes (or none: only the smallest peak is sought).
/// `minimize_peak`: the objective is the peak, else the time. Returns the choices, or nullopt.
inline std::optional<std::vector<LayerChoice>> search(const CostModel& model, std::optional<std::int64_t> budget,
                                                      bool minimize_peak) {
  const auto& p = model.profile();
  const std::size_t n = model.size();
  const std::int64_t base = p.start_bytes;
  const std::int64_t limit = budget.value_or(std::numeric_limits<std::int64_t>::max());
  if (p.head_peak_bytes > limit) return std::nullopt;
  std::vector<std::vector<Node>> layers(n + 1);
  std::map<Key, std::vector<std::size_t>> front{{Key{}, {0}}};
  layers[0].push_back(Node{0, minimize_peak ? static_cast<double>(p.head_peak_bytes) : 0.0, p.head_peak_bytes, 0.0, 0,
                           LayerChoice::keep});
  const LayerChoice all[] = {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload,
                             LayerChoice::async_offload};
  for (std::size_t k = 0; k < n; ++k) {
    std::map<Key, std::vector<std::size_t>> next;
    auto& out = layers[k + 1];
    for (const auto& [key, members] : front) {
      for (auto parent_index : members) {
        const Node parent = layers[k][parent_index];
        for (auto c : all) {
          if ((c == LayerChoice::sync_offload || c == LayerChoice::async_offload) && !model.can_offload()) continue;
          // Async comes in two variants: prefetched by an async layer above (which must then
          // come) or the highest async layer (none may follow).
          for (int variant = 0; variant < (c == LayerChoice::async_offload ? 2 : 1); ++variant) {
            const bool from_above = c == LayerChoice::async_offload && variant == 0;
            if (c == LayerChoice::async_offload && key.prefetch == Prefetch::closed) continue;
            if (from_above && k + 1 == n) continue;
            const auto cc = model.cost(k, c, from_above);
            const std::int64_t level = base + parent.held;
            const std::int64_t fwd = level + cc.forward_peak + key.in_flight;
            const std::int64_t bwd = level + cc.backward_peak + (key.prefetch == Prefetch::pending ? key.prefetch_bytes : 0);
            std::int64_t peak = std::max({parent.peak, fwd, bwd});
            Key nk = key;
            nk.in_flight = 0;
            if (c == LayerChoice::async_offload) {
              nk.prefetch_bytes = model.prefetch_bytes(k);
              nk.prefetch = from_above ? Prefetch::pending : Prefetch::closed;
              nk.in_flight = model.freed(k);
            }
            const std::int64_t held = parent.held + cc.held;
            if (k + 1 == n) {
              if (nk.prefetch == Prefetch::pending) continue;  // promised an async layer above
              peak = std::max(peak, base + held + p.tail_peak_bytes + nk.in_flight);
            }
            if (peak > limit) continue;
            const double ms = parent.ms + cc.extra_ms;
            out.push_back(Node{held, minimize_peak ? static_cast<double>(peak) : ms, peak, ms, parent_index, c});
            next[nk].push_back(out.size() - 1);
          }
        }
      }
    }
    // Pareto: within a state, drop a partial plan that holds more and is no better.
    for (auto& [key, members] : next) {
      std::sort(members.begin(), members.end(), [&](std::size_t a, std::size_t b) {
        return std::tie(out[a].held, out[a].value) < std::tie(out[b].held, out[b].value);
      });
      std::vector<std::size_t> kept;
      double best = std::numeric_limits<double>::infinity();
      for (auto m : members) {
        if (out[m].value < best) {
          kept.push_back(m);
          best = out[m].value;
        }
      }
      members = std::move(kept);
    }
    front = std::move(next);
    if (front.empty()) return std::nullopt;
  }
  std::optional<std::size_t> best;
  for (const auto& [key, members] : front)
    for (auto m : members)
      if (!best || layers[n][m].value < layers[n][*best].value) best = m;
  if (!best) return std::nullopt;
  std::vector<LayerChoice> choices(n);
  std::size_t at = *best;
  for (std::size_t k = n; k-- > 0;) {
    choices[k] = layers[k + 1][at].choice;
    at = layers[k + 1][at].parent;
  }
  return choices;
}

}  // namespace detail::planner

/// The cost model's prediction for `choices` (see the file comment).
inline PlanEstimate evaluate_plan(const StepProfile& profile, const std::vector<LayerChoice>& choices,
                                  const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  TORCH_CHECK(choices.size() == profile.layers.size(), "actckpt::evaluate_plan: ", choices.size(),
              " choices for a profile of ", profile.layers.size(), " layers");
  const CostModel model(profile, costs);
  const std::size_t n = choices.size();
  PlanEstimate e;
  e.peak_bytes = profile.head_peak_bytes;
  e.step_ms = profile.step_ms[CostModel::idx(ProfiledMode::keep)];
  std::int64_t held = 0, in_flight = 0, prefetch_bytes = 0;
  for (std::size_t k = 0; k < n; ++k) {
    const auto c = choices[k];
    TORCH_CHECK(model.can_offload() || (c != LayerChoice::sync_offload && c != LayerChoice::async_offload),
                "actckpt::evaluate_plan: layer ", k, " offloads, but no offload bandwidth was measured or given");
    bool async_above = false;
    for (std::size_t j = k + 1; j < n; ++j) async_above = async_above || choices[j] == LayerChoice::async_offload;
    // Prefetch pending: the highest async layer below k has an async layer at or above k.
    const bool pending = prefetch_bytes > 0 && (async_above || c == LayerChoice::async_offload);
    const auto cc = model.cost(k, c, async_above);
    const std::int64_t level = profile.start_bytes + held;
    e.peak_bytes = std::max({e.peak_bytes, level + cc.forward_peak + in_flight,
                             level + cc.backward_peak + (pending ? prefetch_bytes : 0)});
    e.step_ms += cc.extra_ms;
    held += cc.held;
    in_flight = c == LayerChoice::async_offload ? model.freed(k) : 0;
    if (c == LayerChoice::async_offload) prefetch_bytes = model.prefetch_bytes(k);
  }
  e.peak_bytes = std::max(e.peak_bytes, profile.start_bytes + held + profile.tail_peak_bytes + in_flight);
  return e;
}

/// The smallest budget any plan fits, by the cost model.
inline std::int64_t smallest_feasible_budget(const StepProfile& profile, const OffloadCosts& costs = {}) {
  const detail::planner::CostModel model(profile, costs);
  auto choices = detail::planner::search(model, std::nullopt, /*minimize_peak=*/true);
  TORCH_CHECK(choices.has_value(), "actckpt: the profile has no plan at all (empty?)");
  return evaluate_plan(profile, *choices, costs).peak_bytes;
}

/// The fastest plan whose predicted peak fits `budget_bytes` (absolute, as the profile's meter
/// reads bytes). Raises an error naming the smallest feasible budget if none fits.
inline MemoryPlan plan_for_budget(const StepProfile& profile, std::int64_t budget_bytes, const OffloadCosts& costs = {}) {
  using namespace detail::planner;
  TORCH_CHECK(budget_bytes > 0, "actckpt::plan_for_budget: the memory budget must be positive, got ", budget_bytes,
              " bytes");
  TORCH_CHECK(!profile.layers.empty(), "actckpt::plan_for_budget: the profile has no layers");
  const CostModel model(profile, costs);
  auto choices = search(model, budget_bytes, /*minimize_peak=*/false);
  if (!choices) {
    const auto floor = smallest_feasible_budget(profile, costs);
    TORCH_CHECK(false, "actckpt::plan_for_budget: no plan fits a budget of ", mib(budget_bytes),
                "; the smallest feasible budget for this model and step is ", mib(floor),
                (costs.host_memory_separate.value_or(profile.host_memory_separate)
                     ? ""
                     : " (host and device memory are the same here, so offloading saves nothing)"),
                ". Raise the budget, or make the step smaller (batch, sequence length).");
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
  TORCH_CHECK(step != nullptr, "actckpt::profile_step: no sample step given");
  TORCH_CHECK(options.warmup_steps >= 0 && options.profile_steps >= 1, "actckpt::profile_step: warmup_steps (",
              options.warmup_steps, ") must be >= 0 and profile_steps (", options.profile_steps, ") >= 1");
  auto layers = find_layers(model);
  TORCH_CHECK(!layers.empty(), "actckpt::profile_step: the model has no Checkpointed layers to plan for; wrap the "
              "layers the planner may choose for in actckpt::Checkpointed (any policy: the plan sets each layer's "
              "mode at run time)");
  TORCH_CHECK(model.is_training(), "actckpt::profile_step: the model is in eval mode, where Checkpointed layers run "
              "directly; call model->train() before planning");
  c10::Device device(c10::kCPU);
  for (const auto& p : model.parameters()) {
    device = p.device();
    break;
  }
  ModelStateGuard restore(model, layers);
  const std::size_t n = layers.size();
  std::vector<std::string> labels;
  for (std::size_t i = 0; i < n; ++i) {
    labels.push_back(restore.label(i));
    layers[i]->set_label(std::string(label_prefix) + std::to_string(i));
  }
  std::optional<MemoryMeter> own_meter;
  if (options.meter == nullptr) own_meter.emplace(device);
  MemoryMeter& meter = options.meter ? *options.meter : *own_meter;
  auto recorder = std::make_shared<StepRecorder>(meter, device);

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
        recorder->start();
        step();
        marks = recorder->finish(end_peak, end_ms);
      } catch (const std::exception& e) {
        TORCH_CHECK(false, "actckpt::profile_step: the sample step threw while profiling (every layer ", names[mode],
                    "); the model was left as it was. The error: ", e.what());
      }
      if (s >= options.warmup_steps) runs[mode].push_back(reduce(marks, n, end_peak, end_ms, labels));
    }
    const auto& order = runs[mode].front().order;
    for (const auto& r : runs[mode])
      TORCH_CHECK(r.order == order, "actckpt::profile_step: the layers ran in different orders in two sample steps");
    TORCH_CHECK(mode == 0 || order == runs[0].front().order,
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
  const auto K = CostModel::idx(ProfiledMode::keep);
  profile.start_bytes = scalar(K, &StepFigures::start_bytes);
  profile.head_peak_bytes = scalar(K, &StepFigures::head_peak);
  profile.tail_peak_bytes = scalar(K, &StepFigures::tail_peak);
  profile.tail_ms = scalar(K, &StepFigures::tail_ms);
  for (std::size_t mode = 0; mode < profiled_modes; ++mode) {
    profile.step_ms[mode] = scalar(mode, &StepFigures::step_ms);
    profile.step_peak_bytes[mode] = scalar(mode, &StepFigures::step_peak);
  }
  if (copied > 0 && offload_ms > 0) profile.d2h_bytes_per_s = copied / (offload_ms / 1e3);
  if (copied > 0 && restore_ms > 0) profile.h2d_bytes_per_s = copied / (restore_ms / 1e3);
  return profile;
}

/// Profiles the step and returns the fastest plan that fits `budget_bytes` (not applied: call
/// `apply`). Bad input raises an error and leaves the model as it was.
inline MemoryPlan plan_memory(torch::nn::Module& model, const std::function<void()>& step, std::int64_t budget_bytes,
                              const PlannerOptions& options = {}) {
  TORCH_CHECK(budget_bytes > 0, "actckpt::plan_memory: the memory budget must be positive, got ", budget_bytes, " bytes");
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
  TORCH_CHECK(layers.size() == choices.size() && wanted == layers.size(), "actckpt::MemoryPlan::apply: the plan is for ",
              choices.size(), " Checkpointed layers, the model has ", layers.size());
  for (std::size_t p = 0; p < choices.size(); ++p) {
    auto* layer = layers[module_index[p]];
    layer->set_stash_options(detail::planner::options_for(choices[p], layer->stash_options()));
  }
}

}  // namespace actckpt
