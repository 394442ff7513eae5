// The memory-budget planner (planner.hpp): the run-time "keep" choice, profiling, the cost model
// against MemoryMeter measurements, the search (feasibility, budgets respected as measured,
// monotone, offload only where copies hide), errors that name the smallest budget, bitwise
// gradients whatever the plan, and bad input that leaves the model as it was.

#include "test_models.hpp"

#include <chrono>
#include <cmath>
#include <functional>
#include <set>

using namespace test_models;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::LayerChoice;
using actckpt::NoOffload;

namespace {

/// A chain of MLP blocks (one hidden width per layer) wrapped in Checkpointed<MlpBlock, NoOffload>
/// in a Sequential, with its own pool and a meter that starts before the model (so that weights
/// and gradients are in every figure, as in a budget).
struct PlannedStack {
  explicit PlannedStack(const std::vector<int64_t>& hidden, double dropout = 0.0, int64_t dim = 64, int64_t batch = 256) {
    torch::manual_seed(0);
    for (auto h : hidden) blocks.emplace_back(dim, h, dropout);
    for (std::size_t i = 0; i < blocks.size(); ++i) {
      Checkpointed<MlpBlock, NoOffload> layer(blocks[i]);
      layer->set_offload_context(iso.context);
      layer->set_label("block " + std::to_string(i));
      model->push_back(layer);
    }
    model->train();
    x = torch::randn({batch, dim}, test_device::options());
  }

  /// Forward, loss, backward; gradients zeroed in place first (they stay allocated).
  void step() {
    for (auto& p : model->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
    torch::manual_seed(1);
    model->forward(x).pow(2).mean().backward();
    wait_until_idle(*iso.context);
  }

  /// The measured peak of one step (after one step that warms up), as a budget is meant.
  std::int64_t measured_peak() {
    step();
    meter.reset_peak();
    step();
    return meter.device_peak_bytes();
  }

  actckpt::PlannerOptions options() {
    actckpt::PlannerOptions o;
    o.meter = &meter;
    return o;
  }

  actckpt::StepProfile profile() {
    return actckpt::profile_step(*model, [this] { step(); }, options());
  }

  std::vector<actckpt::StashOptions> stash_options() {
    std::vector<actckpt::StashOptions> out;
    for (auto* l : actckpt::detail::planner::find_layers(*model)) out.push_back(l->stash_options());
    return out;
  }
  std::vector<std::string> labels() {
    std::vector<std::string> out;
    for (auto* l : actckpt::detail::planner::find_layers(*model)) out.push_back(l->label());
    return out;
  }

  IsolatedOffload iso;
  actckpt::MemoryMeter meter{test_device::device(), iso.pool};  // before the model: it counts the weights
  std::vector<MlpBlock> blocks;
  torch::nn::Sequential model;
  torch::Tensor x;
};

bool same_options(const std::vector<actckpt::StashOptions>& a, const std::vector<actckpt::StashOptions>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].mode != b[i].mode || a[i].checkpoint != b[i].checkpoint || a[i].keep_on_device != b[i].keep_on_device ||
        a[i].min_offload_bytes != b[i].min_offload_bytes || a[i].offload_saved != b[i].offload_saved)
      return false;
  }
  return true;
}

actckpt::MemoryPlan plan_of(const actckpt::StepProfile& profile, std::vector<LayerChoice> choices) {
  actckpt::MemoryPlan plan;
  plan.choices = std::move(choices);
  for (const auto& l : profile.layers) {
    plan.labels.push_back(l.label);
    plan.module_index.push_back(l.module_index);
  }
  return plan;
}

double relative_error(double predicted, double measured) { return std::abs(predicted - measured) / measured; }

}  // namespace

TEST_CASE("planner: a layer told not to checkpoint runs directly and keeps its activations") {
  PlannedStack s({256, 256});
  auto* layer = actckpt::detail::planner::find_layers(*s.model)[0];
  auto options = layer->stash_options();
  options.checkpoint = false;
  layer->set_stash_options(options);
  auto listening = std::make_shared<EventLog>();
  {
    actckpt::ObserverScope scope(listening);
    s.step();
  }
  // The kept layer announces its phases like a checkpointed one (backward from a gradient hook)
  // and never recomputes; the checkpointed one does.
  CHECK(listening->index_of(EventKind::forward_begin, "block 0") >= 0);
  CHECK(listening->index_of(EventKind::backward_begin, "block 0") > listening->index_of(EventKind::backward_begin, "block 1"));
  CHECK(listening->index_of(EventKind::recompute_end, "block 0") == -1);
  CHECK(listening->index_of(EventKind::recompute_end, "block 1") >= 0);
}

TEST_CASE("planner: the profile's prediction of uniform plans matches the MemoryMeter's measurement") {
  PlannedStack s({256, 256, 256, 256, 256, 256});
  const auto profile = s.profile();
  REQUIRE(profile.layers.size() == 6);
  CHECK(profile.layers[0].label == "block 0");
  CHECK(profile.layers[5].label == "block 5");
  CHECK_FALSE(profile.host_memory_separate);
  for (const auto& l : profile.layers) {
    CHECK(l.stash_bytes == 256 * 64 * 4);  // each block's input
    // Kept, a block holds its activations (fc1's output, GELU's, its own output): more than
    // checkpointed, which holds its output only.
    CHECK(l.held_bytes[0] > l.held_bytes[1]);
  }
  CHECK(profile.d2h_bytes_per_s > 0);
  CHECK(profile.h2d_bytes_per_s > 0);
  const auto n = profile.layers.size();
  for (auto choice : {LayerChoice::keep, LayerChoice::checkpoint}) {
    const std::string name(actckpt::to_string(choice));
    CAPTURE(name);
    const auto plan = plan_of(profile, std::vector<LayerChoice>(n, choice));
    const auto predicted = actckpt::evaluate_plan(profile, plan.choices);
    plan.apply(*s.model);
    const auto measured = s.measured_peak();
    CHECK(relative_error(static_cast<double>(predicted.peak_bytes), static_cast<double>(measured)) < 0.10);
    CHECK(predicted.peak_bytes ==
          profile.step_peak_bytes[choice == LayerChoice::keep ? 0 : 1]);  // the run it was measured in
  }
}

TEST_CASE("planner: every budget it calls feasible is respected as measured, and a larger one is never slower") {
  PlannedStack s({256, 512, 256, 512, 256, 512});
  const auto profile = s.profile();
  const auto floor = actckpt::smallest_feasible_budget(profile);
  const auto top = profile.step_peak_bytes[0];
  REQUIRE(floor < top);
  double previous_ms = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= 5; ++i) {
    const auto budget = floor + (top - floor) * i / 5;
    CAPTURE(budget);
    const auto plan = actckpt::plan_for_budget(profile, budget);
    const auto described = plan.describe();
    CAPTURE(described);
    CHECK(plan.predicted_peak_bytes <= budget);
    CHECK(plan.predicted_step_ms <= previous_ms);  // monotone
    previous_ms = plan.predicted_step_ms;
    // On CPU offloading saves nothing, so a CPU plan never offloads.
    for (auto c : plan.choices) CHECK((c == LayerChoice::keep || c == LayerChoice::checkpoint));
    plan.apply(*s.model);
    const auto measured = s.measured_peak();
    CHECK(measured <= budget);
    CHECK(relative_error(static_cast<double>(plan.predicted_peak_bytes), static_cast<double>(measured)) < 0.10);
  }
  // The whole budget: nothing to save, so nothing that costs time (a layer whose measured
  // recompute cost came out as 0 on a noisy machine may still be checkpointed: it is free).
  const auto roomy = actckpt::plan_for_budget(profile, top);
  CHECK(roomy.predicted_step_ms == doctest::Approx(profile.step_ms[0]));
  CHECK(actckpt::evaluate_plan(profile, std::vector<LayerChoice>(profile.layers.size(), LayerChoice::keep)).peak_bytes ==
        top);
  // Monotone on a finer grid too, with offload choices open (injected separate host memory).
  actckpt::OffloadCosts gpu_like;
  gpu_like.host_memory_separate = true;
  gpu_like.d2h_bytes_per_s = gpu_like.h2d_bytes_per_s = 1e9;
  const auto low = actckpt::smallest_feasible_budget(profile, gpu_like);
  CHECK(low < floor);  // offloading lowers the floor where host memory is separate
  previous_ms = std::numeric_limits<double>::infinity();
  for (int i = 0; i <= 40; ++i) {
    const auto plan = actckpt::plan_for_budget(profile, low + (top - low) * i / 40, gpu_like);
    CHECK(plan.predicted_step_ms <= previous_ms + 1e-9);
    previous_ms = plan.predicted_step_ms;
    const auto again = actckpt::evaluate_plan(profile, plan.choices, gpu_like);
    CHECK(again.peak_bytes == plan.predicted_peak_bytes);
  }
}

TEST_CASE("planner: with GPU-like costs it offloads the layers whose copies hide behind compute") {
  // Light and heavy blocks alternate: a copy of one block's input hides behind the next block's
  // compute when that block is heavy, not when it is light.
  PlannedStack s({8, 4096, 8, 4096, 8, 4096, 8});
  // A bandwidth at which a stash copy takes the geometric mean of the slowest light and the
  // fastest heavy block's forward and backward: hidden behind heavy blocks, exposed behind light
  // ones. Times are measured (medians of 3 steps); on a machine so busy that a light block came
  // out slower than a heavy one, the profile is taken again.
  actckpt::StepProfile profile;
  double light = 0, heavy = 0;
  for (int attempt = 0; attempt < 3 && !(light < heavy); ++attempt) {
    auto options = s.options();
    options.profile_steps = 3;
    profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
    light = 0, heavy = std::numeric_limits<double>::infinity();
    for (std::size_t k = 0; k < profile.layers.size(); ++k) {
      const auto& l = profile.layers[k];
      if (k % 2 == 1) heavy = std::min({heavy, l.forward_ms[0], l.backward_ms[0]});
      else light = std::max({light, l.forward_ms[0], l.backward_ms[0]});
    }
  }
  REQUIRE(light < heavy);
  // This test runs its plan, so it plans the four choices about the checkpoint's inputs only:
  // with no saved bytes measured, offload saved is not a choice (its cost terms and choice are
  // tested on synthetic profiles below; running it needs the offload-saved mode).
  for (auto& l : profile.layers) l.saved_bytes = 0;
  const auto& L = profile.layers;
  const auto n = L.size();
  const double copy_ms = std::sqrt(light * heavy);
  actckpt::OffloadCosts gpu_like;
  gpu_like.host_memory_separate = true;
  gpu_like.d2h_bytes_per_s = gpu_like.h2d_bytes_per_s = static_cast<double>(L[0].stash_bytes) / (copy_ms / 1e3);
  auto hides = [&](std::size_t k) { return k + 1 < n && k % 2 == 0; };  // the next block is heavy

  // A budget that needs offloading: checkpointing every layer does not fit it.
  const auto all_checkpoint = actckpt::evaluate_plan(profile, std::vector<LayerChoice>(n, LayerChoice::checkpoint), gpu_like);
  std::vector<LayerChoice> hidden_async(n, LayerChoice::checkpoint);
  for (std::size_t k = 0; k < n; ++k)
    if (hides(k)) hidden_async[k] = LayerChoice::async_offload;
  const auto target = actckpt::evaluate_plan(profile, hidden_async, gpu_like);
  REQUIRE(target.peak_bytes < all_checkpoint.peak_bytes);
  const auto plan = actckpt::plan_for_budget(profile, target.peak_bytes, gpu_like);
  const auto described = plan.describe();
  CAPTURE(described);
  CHECK(plan.predicted_step_ms <= target.step_ms);
  // Its async layers are layers whose copies hide, except possibly the highest one, whose
  // prefetch nothing triggers early. (Blocking offloads may appear: trading a copy for keeping a
  // heavy layer unrecomputed can pay; the exact trade is tested on a synthetic profile below.)
  std::size_t async_layers = 0, highest_async = 0;
  for (std::size_t k = 0; k < n; ++k) {
    if (plan.choices[k] != LayerChoice::async_offload) continue;
    ++async_layers;
    highest_async = k;
  }
  CHECK(async_layers >= 1);
  for (std::size_t k = 0; k < highest_async; ++k) {
    CAPTURE(k);
    if (plan.choices[k] == LayerChoice::async_offload) CHECK(hides(k));
  }
  // The plan runs: on CPU the pool is outside the meter, so host memory is separate in fact.
  plan.apply(*s.model);
  CHECK(s.measured_peak() <= target.peak_bytes);
}

TEST_CASE("planner: on a synthetic chain it offloads exactly where the copies hide, asynchronously" * test_device::no_tensors()) {
  // Six layers whose forward alternates light (1 ms) and heavy (10 ms); a stash copy takes 5 ms
  // each way, so it hides behind a heavy next layer (forward 10 ms, backward 20 ms) and not behind
  // a light one. Keeping a layer costs 50 bytes, far over any budget below: the choice is between
  // checkpointing (holds its 10-byte input) and offloading it (holds nothing; layer 0's input is
  // the data, which stays).
  actckpt::StepProfile p;
  p.start_bytes = p.head_peak_bytes = 100;
  p.tail_peak_bytes = 5;
  p.tail_ms = 0.5;
  for (auto& ms : p.step_ms) ms = 100;
  p.d2h_bytes_per_s = p.h2d_bytes_per_s = 2000;  // 10 bytes in 5 ms
  p.host_memory_separate = true;
  for (std::size_t k = 0; k < 6; ++k) {
    actckpt::LayerProfile l;
    l.label = std::to_string(k);
    l.module_index = k;
    l.stash_bytes = 10;
    const double fwd = k % 2 ? 10.0 : 1.0;
    for (std::size_t m = 0; m < actckpt::profiled_modes; ++m) {
      l.forward_peak_bytes[m] = 5;
      l.forward_ms[m] = fwd;
      l.backward_ms[m] = 2 * fwd + (m == 0 ? 0.0 : fwd);  // checkpointed: + the recompute
    }
    l.recompute_ms = fwd;
    l.held_bytes[0] = 50, l.held_bytes[1] = 10, l.held_bytes[2] = k == 0 ? 10 : 0;
    l.backward_peak_bytes[0] = 20, l.backward_peak_bytes[1] = l.backward_peak_bytes[2] = 25;
    p.layers.push_back(l);
  }
  const std::vector<LayerChoice> all_checkpoint(6, LayerChoice::checkpoint);
  const auto classic = actckpt::evaluate_plan(p, all_checkpoint);
  CHECK(classic.peak_bytes == 100 + 50 + 25);       // layer 5's backward, five inputs held below it
  CHECK(classic.step_ms == doctest::Approx(100 + 1 + 10 + 1 + 10 + 1 + 10));  // + every recompute
  // 10 bytes under that: one input above layer 0 must leave. Layers 2 and 4 hide their copies;
  // the highest async layer's prefetch starts at its own backward, so 5 ms of its copy back show.
  const auto plan = actckpt::plan_for_budget(p, classic.peak_bytes - 10);
  const auto described = plan.describe();
  CAPTURE(described);
  CHECK(plan.predicted_step_ms == doctest::Approx(classic.step_ms + 5));
  bool offloads = false;
  for (std::size_t k = 0; k < 6; ++k) {
    CAPTURE(k);
    CHECK(plan.choices[k] != LayerChoice::keep);
    CHECK(plan.choices[k] != LayerChoice::sync_offload);
    if (plan.choices[k] == LayerChoice::async_offload) {
      CHECK(k % 2 == 0);  // only where the next layer is heavy
      CHECK(k != 5);
      offloads = true;
    }
  }
  CHECK(offloads);
  // The same budget with host and device memory shared (CPU): offloading frees nothing.
  actckpt::OffloadCosts cpu;
  cpu.host_memory_separate = false;
  CHECK_THROWS_WITH_AS(actckpt::plan_for_budget(p, classic.peak_bytes - 10, cpu),
                       doctest::Contains("offloading saves nothing"), actckpt::InfeasibleBudget);
}

TEST_CASE("planner: an infeasible budget's error names the smallest feasible one") {
  PlannedStack s({256, 256, 256, 256});
  const auto profile = s.profile();
  const auto floor = actckpt::smallest_feasible_budget(profile);
  CHECK_NOTHROW(actckpt::plan_for_budget(profile, floor));
  try {
    actckpt::plan_for_budget(profile, floor - 1);
    FAIL("an infeasible budget was accepted");
  } catch (const actckpt::InfeasibleBudget& e) {
    const std::string what = e.what();
    CHECK(e.smallest_feasible_budget() == floor);
    CHECK(e.budget_bytes() == floor - 1);
    CHECK(what.find("smallest feasible budget") != std::string::npos);
    CHECK(what.find("(" + std::to_string(floor) + " bytes)") != std::string::npos);
  }
  // At most what checkpointing every layer costs (keeping the last layer can cost less: its
  // backward needs no recompute), far under keeping every layer.
  const auto all_checkpoint = actckpt::evaluate_plan(profile, std::vector<LayerChoice>(4, LayerChoice::checkpoint));
  CHECK(floor <= all_checkpoint.peak_bytes);
  CHECK(floor < profile.step_peak_bytes[0]);
}

TEST_CASE("planner: a planned model's gradients are bitwise those of the unwrapped model") {
  PlannedStack s({64, 128, 64, 128, 64, 128}, /*dropout=*/0.2);
  auto unwrapped_grads = [&] {
    for (auto& b : s.blocks) b->zero_grad(/*set_to_none=*/true);
    torch::manual_seed(1);
    chain(s.blocks, s.x).pow(2).mean().backward();
    std::vector<torch::Tensor> g;
    for (auto& b : s.blocks) {
      auto one = take_grads(*b);
      g.insert(g.end(), one.begin(), one.end());
    }
    return g;
  };
  auto planned_grads = [&] {
    for (auto& b : s.blocks) b->zero_grad(/*set_to_none=*/true);
    s.step();
    std::vector<torch::Tensor> g;
    for (auto& b : s.blocks) {
      auto one = take_grads(*b);
      g.insert(g.end(), one.begin(), one.end());
    }
    return g;
  };
  const auto profile = s.profile();
  const auto reference = unwrapped_grads();
  SUBCASE("every choice at once") {
    plan_of(profile, {LayerChoice::keep, LayerChoice::checkpoint, LayerChoice::sync_offload, LayerChoice::async_offload,
                      LayerChoice::async_offload, LayerChoice::keep})
        .apply(*s.model);
    check_bitwise_equal(reference, planned_grads());
  }
  SUBCASE("the planner's plan halfway between the floor and the unwrapped peak") {
    const auto floor = actckpt::smallest_feasible_budget(profile);
    const auto plan = actckpt::plan_for_budget(profile, (floor + profile.step_peak_bytes[0]) / 2);
    plan.apply(*s.model);
    check_bitwise_equal(reference, planned_grads());
  }
}

TEST_CASE("planner: bad input gets a clear error and leaves the model as it was") {
  PlannedStack s({128, 128, 128});
  const auto options_before = s.stash_options();
  const auto labels_before = s.labels();
  auto unchanged = [&] {
    CHECK(same_options(s.stash_options(), options_before));
    CHECK(s.labels() == labels_before);
  };
  auto error_of = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const actckpt::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  SUBCASE("a negative budget") {
    const auto what = error_of([&] { actckpt::plan_memory(*s.model, [&] { s.step(); }, -5, s.options()); });
    CHECK(what.find("budget must be positive") != std::string::npos);
    unchanged();
  }
  SUBCASE("a model with no Checkpointed layers") {
    torch::nn::Sequential plain(MlpBlock(64, 128), MlpBlock(64, 128));
    const auto what = error_of([&] { actckpt::plan_memory(*plain, [] {}, 1 << 30); });
    CHECK(what.find("no Checkpointed layers") != std::string::npos);
  }
  SUBCASE("a sample step that throws") {
    int calls = 0;
    const auto what = error_of([&] {
      actckpt::plan_memory(*s.model, [&] {
        if (++calls == 3) throw std::runtime_error("the data loader ran dry");
        s.step();
      }, 1 << 30, s.options());
    });
    CHECK(what.find("sample step threw") != std::string::npos);
    CHECK(what.find("the data loader ran dry") != std::string::npos);
    unchanged();
  }
  SUBCASE("a step that skips a layer's backward") {
    const auto what = error_of([&] { actckpt::plan_memory(*s.model, [&] { s.model->forward(s.x); }, 1 << 30, s.options()); });
    CHECK(what.find("did not run its backward") != std::string::npos);
    unchanged();
  }
  SUBCASE("a model in eval mode") {
    s.model->eval();
    const auto what = error_of([&] { actckpt::plan_memory(*s.model, [&] { s.step(); }, 1 << 30, s.options()); });
    CHECK(what.find("eval mode") != std::string::npos);
    unchanged();
  }
  SUBCASE("a plan for another model") {
    PlannedStack other({128, 128});
    const auto plan = actckpt::plan_memory(*other.model, [&] { other.step(); }, 1 << 30, other.options());
    const auto what = error_of([&] { plan.apply(*s.model); });
    CHECK(what.find("the plan is for 2 Checkpointed layers, the model has 3") != std::string::npos);
    unchanged();
  }
}

TEST_CASE("planner: the profile tells layers apart by identity: labels untouched, another model's layer ignored") {
  PlannedStack s({128, 128, 128});
  // Labels are the user's and need not be unique: two of the model's layers share one.
  actckpt::detail::planner::find_layers(*s.model)[2]->set_label("block 1");
  const auto labels_before = s.labels();
  // Another model's layer, labelled like the first of ours, sync-offloading (so it emits copy
  // events too, some from the copy worker), runs inside every sample step: its events carry its
  // own identity and must not count for any of ours.
  PlannedStack other({128}, 0.0, /*dim=*/32, /*batch=*/16);
  auto* stranger = actckpt::detail::planner::find_layers(*other.model)[0];
  stranger->set_label("block 0");
  stranger->set_stash_options(actckpt::detail::planner::options_for(LayerChoice::sync_offload, stranger->stash_options()));
  std::vector<std::vector<std::string>> labels_in_step;
  const auto profile = actckpt::profile_step(*s.model, [&] {
    labels_in_step.push_back(s.labels());
    other.step();
    s.step();
  }, s.options());
  REQUIRE(profile.layers.size() == 3);
  CHECK(profile.layers[0].label == "block 0");
  CHECK(profile.layers[1].label == "block 1");
  CHECK(profile.layers[2].label == "block 1");
  for (std::size_t k = 0; k < 3; ++k) {
    CAPTURE(k);
    CHECK(profile.layers[k].module_index == k);
    CHECK(profile.layers[k].stash_bytes == 256 * 64 * 4);  // its own input, none of the stranger's 16 x 32
    CHECK(profile.layers[k].held_bytes[0] > profile.layers[k].held_bytes[1]);
  }
  // 3 configurations x (1 warmup + 1 measured) steps, each seeing the labels as the user set them.
  CHECK(labels_in_step.size() == 6);
  for (const auto& seen : labels_in_step) CHECK(seen == labels_before);
  CHECK(s.labels() == labels_before);
  CHECK(other.labels() == std::vector<std::string>{"block 0"});
}

TEST_CASE("planner: describe() names runs of layers" * test_device::no_tensors()) {
  actckpt::MemoryPlan plan;
  plan.choices = {LayerChoice::checkpoint, LayerChoice::checkpoint, LayerChoice::checkpoint, LayerChoice::async_offload,
                  LayerChoice::keep, LayerChoice::keep};
  CHECK(plan.describe() == "layers 0-2 checkpoint, layer 3 async offload, layers 4-5 keep");
}

// ---- Offload saved: the fifth choice (no recompute; every saved activation to the host pool) ----

namespace {

/// A layer whose saved activations are known exactly: sin saves its input x; the product saves
/// a and a view of it (one storage, counted once); mm saves b and the parameter w (not an
/// activation). So it saves x, a and b: 3 x batch x dim floats.
struct SharedSavesImpl : torch::nn::Module {
  explicit SharedSavesImpl(int64_t dim) { w = register_parameter("w", torch::randn({dim, dim}, test_device::options()) * 0.1); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto a = x.sin();
    auto b = a * a.t().t();
    return b.mm(w) + x;
  }
  torch::Tensor w;
};
TORCH_MODULE(SharedSaves);

/// Two layers, hand-made: each kept one holds 50 bytes of which 40 are saved activations, its
/// output 10; forward 10 ms, backward 20 ms; copies at 4000 B/s (40 bytes: 10 ms each way).
actckpt::StepProfile two_layers() {
  actckpt::StepProfile p;
  p.start_bytes = p.head_peak_bytes = 100;
  p.tail_peak_bytes = 5;
  p.tail_ms = 0.5;
  for (auto& ms : p.step_ms) ms = 100;
  p.d2h_bytes_per_s = p.h2d_bytes_per_s = 4000;
  p.host_memory_separate = true;
  for (std::size_t k = 0; k < 2; ++k) {
    actckpt::LayerProfile l;
    l.label = std::to_string(k);
    l.module_index = k;
    l.stash_bytes = 10;
    l.saved_bytes = 40;
    l.held_bytes[0] = 50, l.held_bytes[1] = 10, l.held_bytes[2] = k == 0 ? 10 : 0;
    for (std::size_t m = 0; m < actckpt::profiled_modes; ++m) {
      l.forward_peak_bytes[m] = l.held_bytes[m] + 5;
      l.backward_peak_bytes[m] = 60;
      l.forward_ms[m] = 10;
      l.backward_ms[m] = 20;
    }
    l.recompute_ms = 10;
    p.layers.push_back(l);
  }
  return p;
}

}  // namespace

TEST_CASE("planner: offload saved's cost terms: copies hidden behind the layer above, in flight, prefetched" * test_device::no_tensors()) {
  const auto p = two_layers();
  using C = LayerChoice;
  // Layer 0 offloads its 40 saved bytes: they hide behind layer 1's forward (10 ms) and come back
  // behind its backward (20 ms): no time. It holds its output (10); the 40 bytes are in flight
  // during layer 1's forward (110 + 55 + 40) and back during its backward (110 + 60 + 40).
  auto e = actckpt::evaluate_plan(p, {C::offload_saved, C::keep});
  CHECK(e.step_ms == doctest::Approx(100));
  CHECK(e.peak_bytes == 210);
  // The last layer's copies have the tail (0.5 ms) forward and nothing in backward to hide behind.
  e = actckpt::evaluate_plan(p, {C::keep, C::offload_saved});
  CHECK(e.step_ms == doctest::Approx(100 + 9.5 + 10));
  CHECK(e.peak_bytes == 210);  // its backward: 150 + 60
  // Both: the loss runs with layer 1's 40 bytes in flight over 120 held: 120 + 5 + 40 = 165; layer 1's
  // forward 110 + 55 + 40, its backward 110 + 60 + 40.
  e = actckpt::evaluate_plan(p, {C::offload_saved, C::offload_saved});
  CHECK(e.step_ms == doctest::Approx(119.5));
  CHECK(e.peak_bytes == 210);
  // Checkpointing both pays the recompute.
  CHECK(actckpt::evaluate_plan(p, {C::checkpoint, C::checkpoint}).step_ms == doctest::Approx(120));
  // Twice the bandwidth: 5 ms each way, the last layer shows 4.5 + 5.
  actckpt::OffloadCosts fast;
  fast.d2h_bytes_per_s = fast.h2d_bytes_per_s = 8000.0;
  CHECK(actckpt::evaluate_plan(p, {C::keep, C::offload_saved}, fast).step_ms == doctest::Approx(109.5));
  // Host memory shared with the device (CPU): it would save nothing, so it is not a plan.
  actckpt::OffloadCosts cpu;
  cpu.host_memory_separate = false;
  CHECK_THROWS_WITH_AS(actckpt::evaluate_plan(p, {C::offload_saved, C::keep}, cpu), doctest::Contains("same memory"),
                       actckpt::UsageError);
  // A layer that saved nothing (saved bytes not measured) cannot offload them.
  auto unmeasured = p;
  unmeasured.layers[0].saved_bytes = 0;
  CHECK_THROWS_AS(actckpt::evaluate_plan(unmeasured, {C::offload_saved, C::keep}), actckpt::UsageError);
}

TEST_CASE("planner: offload saved is chosen where its copies hide and checkpointing would recompute" * test_device::no_tensors()) {
  // Six layers alternating light (forward 1 ms, backward 2) and heavy (10, 20); a layer's 40
  // saved bytes take 10 ms each way: they hide only behind a heavy layer above. Checkpointing
  // holds the same 10 bytes as offloading the saved activations, and costs the recompute.
  actckpt::StepProfile p;
  p.start_bytes = p.head_peak_bytes = 100;
  p.tail_peak_bytes = 5;
  p.tail_ms = 0.5;
  for (auto& ms : p.step_ms) ms = 100;
  p.d2h_bytes_per_s = p.h2d_bytes_per_s = 4000;
  p.host_memory_separate = true;
  const std::size_t n = 6;
  for (std::size_t k = 0; k < n; ++k) {
    actckpt::LayerProfile l;
    l.label = std::to_string(k);
    l.module_index = k;
    l.stash_bytes = 10;
    l.saved_bytes = 40;
    const double fwd = k % 2 ? 10.0 : 1.0;
    l.held_bytes[0] = 50, l.held_bytes[1] = 10, l.held_bytes[2] = k == 0 ? 10 : 0;
    for (std::size_t m = 0; m < actckpt::profiled_modes; ++m) {
      l.forward_peak_bytes[m] = l.held_bytes[m] + 5;
      l.forward_ms[m] = fwd;
      l.backward_ms[m] = 2 * fwd + (m == 0 ? 0.0 : fwd);
    }
    l.backward_peak_bytes[0] = 60, l.backward_peak_bytes[1] = l.backward_peak_bytes[2] = 65;
    l.recompute_ms = fwd;
    p.layers.push_back(l);
  }
  const auto keep_all = actckpt::evaluate_plan(p, std::vector<LayerChoice>(n, LayerChoice::keep));
  const auto floor = actckpt::smallest_feasible_budget(p);
  int chose_it = 0;
  for (int i = 0; i <= 8; ++i) {
    const std::int64_t budget = floor + (keep_all.peak_bytes - floor) * i / 8;
    CAPTURE(budget);
    const auto plan = actckpt::plan_for_budget(p, budget);
    const auto described = plan.describe();
    CAPTURE(described);
    CHECK(plan.predicted_peak_bytes <= budget);
    // The fastest plan over all 5^6, by the cost model: the search's is as fast.
    double fastest = std::numeric_limits<double>::infinity();
    std::vector<LayerChoice> plan_k(n);
    for (std::size_t code = 0; code < 15625; ++code) {
      for (std::size_t k = 0, rest = code; k < n; ++k, rest /= 5) plan_k[k] = static_cast<LayerChoice>(rest % 5);
      const auto e = actckpt::evaluate_plan(p, plan_k);
      if (e.peak_bytes <= budget) fastest = std::min(fastest, e.step_ms);
    }
    CHECK(plan.predicted_step_ms == doctest::Approx(fastest));
    for (std::size_t k = 0; k < n; ++k) {
      if (plan.choices[k] != LayerChoice::offload_saved) continue;
      CAPTURE(k);
      CHECK(k % 2 == 0);  // a heavy layer above hides its copies
      ++chose_it;
    }
  }
  CHECK(chose_it > 0);
  // On CPU (host memory is the device's) it is never chosen, whatever the budget.
  actckpt::OffloadCosts cpu;
  cpu.host_memory_separate = false;
  const auto cpu_floor = actckpt::smallest_feasible_budget(p, cpu);
  for (int i = 0; i <= 4; ++i) {
    const auto plan = actckpt::plan_for_budget(p, cpu_floor + (keep_all.peak_bytes - cpu_floor) * i / 4, cpu);
    for (auto c : plan.choices) CHECK(c != LayerChoice::offload_saved);
  }
}

TEST_CASE("planner: the profile counts the bytes autograd saves per layer, parameters aside, each storage once") {
  constexpr int64_t batch = 32, dim = 16;
  IsolatedOffload iso;
  actckpt::MemoryMeter meter{test_device::device(), iso.pool};
  torch::manual_seed(0);
  torch::nn::Sequential model;
  for (int i = 0; i < 3; ++i) {
    Checkpointed<SharedSaves, NoOffload> layer{SharedSaves(dim)};
    layer->set_offload_context(iso.context);
    model->push_back(layer);
  }
  model->train();
  const auto x = torch::randn({batch, dim}, test_device::options().requires_grad(true));  // so that layer 0 saves x and a too
  actckpt::PlannerOptions options;
  options.meter = &meter;
  const auto before = actckpt::saved_tensor_hooks_depth();
  const auto profile = actckpt::profile_step(*model, [&] { model->forward(x).pow(2).mean().backward(); }, options);
  CHECK(actckpt::saved_tensor_hooks_depth() == before);  // the counting scope is closed
  REQUIRE(profile.layers.size() == 3);
  for (const auto& l : profile.layers) {
    CAPTURE(l.label);
    CHECK(l.saved_bytes == 3 * batch * dim * 4);
  }
  // MLP blocks: fc1 saves its input, gelu its input, fc2 its input; weights are left out.
  PlannedStack s({128, 96});
  const auto mlp = s.profile();
  CHECK(mlp.layers[0].saved_bytes == 256 * (64 + 2 * 128) * 4);
  CHECK(mlp.layers[1].saved_bytes == 256 * (64 + 2 * 96) * 4);
  // On CPU a measured profile never plans it: host memory is the device's.
  const auto floor = actckpt::smallest_feasible_budget(mlp);
  const auto top = mlp.step_peak_bytes[0] * 2;
  for (int i = 0; i <= 4; ++i) {
    const auto plan = actckpt::plan_for_budget(mlp, floor + (top - floor) * i / 4);
    for (auto c : plan.choices) CHECK(c != LayerChoice::offload_saved);
  }
  // With a GPU-like link that hides every copy, it replaces checkpointing at the same budget.
  actckpt::OffloadCosts gpu_like;
  gpu_like.host_memory_separate = true;
  gpu_like.d2h_bytes_per_s = gpu_like.h2d_bytes_per_s = 1e15;
  const auto all_checkpoint = actckpt::evaluate_plan(mlp, {LayerChoice::checkpoint, LayerChoice::checkpoint}, gpu_like);
  const auto all_saved = actckpt::evaluate_plan(mlp, {LayerChoice::offload_saved, LayerChoice::offload_saved}, gpu_like);
  CHECK(all_saved.step_ms < all_checkpoint.step_ms);
}

TEST_CASE("planner: applying offload saved sets the layer's StashOptions, and other choices clear it") {
  PlannedStack s({64, 64, 64});
  const auto profile = s.profile();
  auto plan = plan_of(profile, {LayerChoice::offload_saved, LayerChoice::keep, LayerChoice::async_offload});
  plan.apply(*s.model);
  const auto applied = s.stash_options();
  CHECK(applied[0].offload_saved);
  CHECK_FALSE(applied[0].checkpoint);
  CHECK(applied[0].mode == actckpt::StashMode::async_host);
  CHECK(applied[0].keep_on_device == 0);
  CHECK(applied[0].min_offload_bytes == 1);
  CHECK_FALSE(applied[1].offload_saved);
  CHECK_FALSE(applied[1].checkpoint);
  CHECK_FALSE(applied[2].offload_saved);
  CHECK(applied[2].checkpoint);
  plan_of(profile, {LayerChoice::checkpoint, LayerChoice::checkpoint, LayerChoice::checkpoint}).apply(*s.model);
  for (const auto& o : s.stash_options()) CHECK_FALSE(o.offload_saved);
  CHECK(plan_of(profile, {LayerChoice::offload_saved, LayerChoice::offload_saved, LayerChoice::keep}).describe() ==
        "layers 0-1 offload saved, layer 2 keep");
  CHECK(actckpt::to_string(LayerChoice::offload_saved) == "offload saved");
}

TEST_CASE("planner: optimizer_state_bytes estimates the state a first step will create") {
  PlannedStack s({128, 128});
  std::int64_t param_bytes = 0;
  for (const auto& p : s.model->parameters()) param_bytes += p.numel() * static_cast<std::int64_t>(p.element_size());
  using namespace torch::optim;
  SUBCASE("SGD: one buffer per parameter with momentum, none without") {
    SGD momentum(s.model->parameters(), SGDOptions(0.01).momentum(0.9));
    SGD plain(s.model->parameters(), SGDOptions(0.01));
    CHECK(actckpt::optimizer_state_bytes(momentum, test_device::device()) == param_bytes);
    CHECK(actckpt::optimizer_state_bytes(plain, test_device::device()) == 0);
    s.step();
    momentum.step();
    CHECK(actckpt::optimizer_state_bytes(momentum, test_device::device()) == 0);  // it exists now
  }
  SUBCASE("Adam and AdamW: two, three with amsgrad; RMSprop: one to three") {
    Adam adam(s.model->parameters(), AdamOptions(1e-3));
    AdamW amsgrad(s.model->parameters(), AdamWOptions(1e-3).amsgrad(true));
    RMSprop rms(s.model->parameters(), RMSpropOptions(1e-3).momentum(0.9).centered(true));
    CHECK(actckpt::optimizer_state_bytes(adam, test_device::device()) == 2 * param_bytes);
    CHECK(actckpt::optimizer_state_bytes(amsgrad, test_device::device()) == 3 * param_bytes);
    CHECK(actckpt::optimizer_state_bytes(rms, test_device::device()) == 3 * param_bytes);
    s.step();
    adam.step();
    CHECK(actckpt::optimizer_state_bytes(adam, test_device::device()) == 0);
  }
  SUBCASE("parameters on another device, and optimizers it does not know") {
    SGD momentum(s.model->parameters(), SGDOptions(0.01).momentum(0.9));
    // The other device than the test device's: nothing of this model's state lives there.
    const auto other = test_device::on_cuda() ? torch::Device(torch::kCPU) : torch::Device(torch::kCUDA, 0);
    CHECK(actckpt::optimizer_state_bytes(momentum, other) == 0);
    LBFGS lbfgs(s.model->parameters(), LBFGSOptions(1));
    CHECK_THROWS_WITH_AS(actckpt::optimizer_state_bytes(lbfgs, test_device::device()), doctest::Contains("reserve_bytes"),
                         actckpt::UsageError);
  }
}

TEST_CASE("planner: a plan made before the first optimizer step stays in budget once SGD's momentum exists") {
  PlannedStack s({256, 256, 256, 256});
  torch::optim::SGD sgd(s.model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  const auto state = actckpt::optimizer_state_bytes(sgd, test_device::device());
  REQUIRE(state > 0);
  auto step = [&] { s.step(); };
  // The reserve moves every level of the profile by the state's bytes.
  const auto without = s.profile();
  auto reserving = s.options();
  reserving.reserve_bytes = state;
  const auto with = actckpt::profile_step(*s.model, step, reserving);
  CHECK(std::abs(with.start_bytes - without.start_bytes - state) < state / 10);
  CHECK(std::abs(with.step_peak_bytes[0] - without.step_peak_bytes[0] - state) < state / 10);

  // A budget a quarter of the way from the smallest feasible one to keeping everything.
  const auto floor = actckpt::smallest_feasible_budget(with);
  const auto budget = floor + (with.step_peak_bytes[0] - floor) / 4;
  CAPTURE(budget);
  const auto plan = actckpt::plan_memory(*s.model, step, budget, sgd, s.options());  // before the first step
  const auto blind = actckpt::plan_for_budget(without, budget);  // the same budget, state left out
  plan.apply(*s.model);
  for (int i = 0; i < 2; ++i) {  // train: the first step creates the momentum buffers
    s.step();
    sgd.step();
  }
  REQUIRE(actckpt::optimizer_state_bytes(sgd, test_device::device()) == 0);
  const auto measured = s.measured_peak();
  CAPTURE(measured);
  CHECK(measured <= budget);
  CHECK(relative_error(static_cast<double>(plan.predicted_peak_bytes), static_cast<double>(measured)) < 0.10);
  // Left out, the state makes the blind plan's measured peak exceed its prediction by about its size.
  blind.apply(*s.model);
  const auto blind_measured = s.measured_peak();
  MESSAGE("budget ", budget, ", momentum ", state, " bytes; planned with it: measured ", measured,
          "; without it: predicted ", blind.predicted_peak_bytes, ", measured ", blind_measured, " (",
          100.0 * static_cast<double>(blind_measured - budget) / static_cast<double>(budget), "% over the budget)");
  CHECK(blind_measured - blind.predicted_peak_bytes > state / 2);
}

TEST_CASE("planner: the profile's copies of the model's buffers are not in its figures") {
  PlannedStack s({128, 128, 128});
  // A model holding the stack and an 8 MiB buffer (a lookup table, statistics): profile_step
  // copies every buffer to put it back afterwards, while the user's meter runs.
  struct Holder : torch::nn::Module {
    Holder(torch::nn::Sequential stack) {
      register_module("stack", std::move(stack));
      table = register_buffer("table", torch::zeros({2 << 20}, test_device::options()));
    }
    torch::Tensor table;
  };
  Holder holder(s.model);
  const std::int64_t table_bytes = holder.table.numel() * 4;
  const auto profile = actckpt::profile_step(holder, [&] { s.step(); }, s.options());
  // The profile's own measurement of the kept step against the same step measured alone: the
  // same, not 8 MiB more.
  const auto measured = s.measured_peak();  // every layer checkpointed, as NoOffload's options say
  CAPTURE(measured);
  CAPTURE(profile.step_peak_bytes[1]);
  CHECK(std::abs(profile.step_peak_bytes[1] - measured) < table_bytes / 16);
  CHECK(relative_error(static_cast<double>(actckpt::evaluate_plan(profile, std::vector<LayerChoice>(3, LayerChoice::checkpoint))
                                               .peak_bytes),
                       static_cast<double>(measured)) < 0.10);
}

TEST_CASE("planner: an applied offload-saved plan runs: bitwise gradients, every planned saved byte moved, the peak kept") {
  // The planner models offload saved; the mode (offload_saved.hpp) carries it out. On CPU it is
  // never a choice (host memory is the device's), so the plan is made with GPU-like costs, as a
  // what-if; it then runs on CPU, where the pool is outside the meter as host memory would be.
  PlannedStack s({64, 128, 64, 128, 64}, /*dropout=*/0.2);
  auto grads_of = [&](const std::function<void()>& run) {
    for (auto& b : s.blocks) b->zero_grad(/*set_to_none=*/true);
    run();
    std::vector<torch::Tensor> g;
    for (auto& b : s.blocks) {
      auto one = take_grads(*b);
      g.insert(g.end(), one.begin(), one.end());
    }
    return g;
  };
  const auto reference = grads_of([&] {
    torch::manual_seed(1);
    chain(s.blocks, s.x).pow(2).mean().backward();
  });
  const auto profile = s.profile();
  const auto n = profile.layers.size();
  for (const auto& l : profile.layers) REQUIRE(l.saved_bytes > 0);
  actckpt::OffloadCosts gpu_like;
  gpu_like.host_memory_separate = true;
  gpu_like.d2h_bytes_per_s = gpu_like.h2d_bytes_per_s = 1e13;  // every copy hides
  const auto all_checkpoint = actckpt::evaluate_plan(profile, std::vector<LayerChoice>(n, LayerChoice::checkpoint), gpu_like);
  const auto all_kept = actckpt::evaluate_plan(profile, std::vector<LayerChoice>(n, LayerChoice::keep), gpu_like);
  // Between checkpointing everything and keeping everything: offload saved frees what keeping
  // holds without recomputing, so it replaces checkpointing somewhere.
  const auto plan = actckpt::plan_for_budget(profile, (all_checkpoint.peak_bytes + all_kept.peak_bytes) / 2, gpu_like);
  const auto described = plan.describe();
  CAPTURE(described);
  std::int64_t planned_saved = 0, largest_saved = 0;
  for (std::size_t k = 0; k < n; ++k) {
    if (plan.choices[k] != LayerChoice::offload_saved) continue;
    planned_saved += profile.layers[k].saved_bytes;
    largest_saved = std::max(largest_saved, profile.layers[k].saved_bytes);
  }
  REQUIRE(planned_saved > 0);  // with hidden copies it beats recomputing
  CHECK(plan.predicted_step_ms < all_checkpoint.step_ms);
  plan.apply(*s.model);

  check_bitwise_equal(reference, grads_of([&] { s.step(); }));
  s.iso.context->reset_telemetry();
  s.step();
  // What the profile counted per layer is what the mode moves: each storage once, parameters,
  // buffers and views of them left out.
  CHECK(s.iso.context->telemetry().d2h_bytes == planned_saved);
  CHECK(s.iso.context->telemetry().h2d_bytes == planned_saved);
  // The measured peak stays at the prediction; on CPU the copies run on one worker thread, which
  // on a loaded machine can be one layer's copy behind the model's (instant) copies.
  const auto measured = s.measured_peak();
  CHECK(measured <= plan.predicted_peak_bytes + largest_saved);
  CHECK(s.iso.pool->stats().live_bytes == 0);
}

// ---------------------------------------------------------------------------------------------
// Steps that are not chains (issue 28): call-level profiles, the call-level model and search,
// on the training steps people write. New tensors and modules go on test_device::device().

namespace {

/// Linear, then BatchNorm (optional), then an activation: the blocks of an MLP-shaped DCGAN.
struct DenseImpl : torch::nn::Module {
  enum Act { relu, leaky, tanh, none };
  DenseImpl(int64_t in, int64_t out, bool norm, Act act) : act_(act) {
    fc = register_module("fc", torch::nn::Linear(in, out));
    if (norm) bn = register_module("bn", torch::nn::BatchNorm1d(out));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = fc(x);
    if (bn) x = bn(x);
    switch (act_) {
      case relu: return torch::relu(x);
      case leaky: return torch::leaky_relu(x, 0.2);
      case tanh: return torch::tanh(x);
      case none: return x;
    }
    return x;
  }
  Act act_;
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Dense);
using DenseLayer = Checkpointed<Dense, NoOffload>;

/// A model of Checkpointed Dense layers on one private pool and context, its meter started
/// before it, and a training step (gradients zeroed in place first; no optimizer step).
struct CallStep {
  IsolatedOffload iso;
  actckpt::MemoryMeter meter{test_device::device(), iso.pool};
  std::shared_ptr<torch::nn::Module> model = std::make_shared<torch::nn::Module>();
  std::function<void()> body;

  DenseLayer layer(int64_t in, int64_t out, bool norm, DenseImpl::Act act) {
    DenseLayer l(Dense(in, out, norm, act));
    l->set_offload_context(iso.context);
    l->to(test_device::device());
    return l;
  }
  void step() {
    for (auto& p : model->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
    torch::manual_seed(7);
    body();
    wait_until_idle(*iso.context);
  }
  /// The gradients' bytes, outside the device allocator: a reference kept while a peak is
  /// measured must not be in the measurement.
  std::vector<std::vector<char>> grads() {
    std::vector<std::vector<char>> g;
    for (auto& p : model->parameters()) {
      if (!p.grad().defined()) {
        g.emplace_back();
        continue;
      }
      const auto host = p.grad().to(torch::kCPU).contiguous();
      const auto* data = static_cast<const char*>(host.data_ptr());
      g.emplace_back(data, data + host.nbytes());
    }
    return g;
  }
  std::int64_t measured_peak() {
    step();
    meter.reset_peak();
    step();
    return meter.device_peak_bytes();
  }
};

/// Plans `s` at `count` budgets from the smallest feasible one to keeping every layer; at each,
/// the plan applied: measured peak within the budget and within 10% of the prediction, and
/// gradients bitwise those of the all-keep plan. Returns the search's slowest planning time (ms).
double check_planned_budgets(CallStep& s, const actckpt::StepProfile& profile, int count = 4) {
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const std::vector<LayerChoice> keep_all(profile.layers.size(), LayerChoice::keep);
  plan_of(profile, keep_all).apply(*s.model);
  s.step();
  const auto reference = s.grads();
  const auto top = actckpt::evaluate_plan(profile, keep_all).peak_bytes;
  const auto t0 = std::chrono::steady_clock::now();
  const auto floor = actckpt::smallest_feasible_budget(profile);
  double slowest_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  REQUIRE(floor < top);  // something to plan
  std::set<std::string> plans;
  for (int i = 0; i < count; ++i) {
    const auto budget = floor + (top - floor) * i / (count - 1);
    const auto t1 = std::chrono::steady_clock::now();
    const auto plan = actckpt::plan_for_budget(profile, budget);
    slowest_ms = std::max(slowest_ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count());
    const auto described = plan.describe();
    plans.insert(described);
    CAPTURE(budget);
    CAPTURE(described);
    CHECK(plan.predicted_peak_bytes <= budget);
    // Small steps: the call-level search is exact; a chain's is within its stated tolerance.
    CHECK(plan.time_gap_bound <= (profile.is_chain() ? actckpt::detail::planner::plan_time_tolerance : 0.0));
    plan.apply(*s.model);
    const auto measured = s.measured_peak();
    MESSAGE("budget " << budget << ": predicted " << plan.predicted_peak_bytes << ", measured " << measured << " ("
                      << described << ")");
    CHECK(measured <= budget);
    CHECK(relative_error(static_cast<double>(plan.predicted_peak_bytes), static_cast<double>(measured)) < 0.10);
    s.step();
    const auto grads = s.grads();
    REQUIRE(grads.size() == reference.size());
    for (std::size_t k = 0; k < grads.size(); ++k) CHECK(grads[k] == reference[k]);  // bitwise
  }
  CHECK(plans.size() >= 2);  // the budgets were not all planned alike: the test tested choices
  return slowest_ms;
}

/// Every plan of keeping and checkpointing (2^n), not only those the search picked at a few
/// budgets: which of several near-equal plans the search picks depends on the measured times,
/// and a plan measured above its prediction would break a budget the day the search picks it.
/// Each: measured peak within 10% of the prediction and, in the non-reentrant form, at most the
/// prediction (the meter counts every block; the profile's figures take out every release that
/// depends on the plan). The reentrant form's recompute runs inside the autograd engine's
/// backward, and a few small blocks there (KiB: gradient buffers of the recomputed layers'
/// inputs and BatchNorm statistics) fall at times the uniform runs do not pin down: measured up
/// to 10,112 bytes (0.094%) above the prediction at plans of these steps, on 1.13 and 2.15. That
/// is asserted within 0.2% and reported; docs/planner.md states it.
void check_every_plan(CallStep& s, const actckpt::StepProfile& profile) {
  const std::size_t n = profile.layers.size();
  REQUIRE(n <= 8);
  const bool reentrant = actckpt::resolve(actckpt::CheckpointForm::process_default) == actckpt::CheckpointForm::reentrant;
  const LayerChoice two[] = {LayerChoice::keep, LayerChoice::checkpoint};
  int low = 0;
  std::int64_t most_over = 0;
  for (unsigned bits = 0; bits < (1u << n); ++bits) {
    std::vector<LayerChoice> choices;
    for (std::size_t k = 0; k < n; ++k) choices.push_back(two[(bits >> k) & 1]);
    const auto plan = plan_of(profile, choices);
    const auto predicted = actckpt::evaluate_plan(profile, choices).peak_bytes;
    plan.apply(*s.model);
    const auto measured = s.measured_peak();
    CAPTURE(plan.describe());
    CAPTURE(predicted);
    CAPTURE(measured);
    const std::int64_t slack = reentrant ? predicted / 500 : 0;
    CHECK(measured <= predicted + slack);
    CHECK(relative_error(static_cast<double>(predicted), static_cast<double>(measured)) < 0.10);
    low += measured > predicted ? 1 : 0;
    most_over = std::max(most_over, measured - predicted);
  }
  MESSAGE(profile.layers.front().label << "...: " << (1u << n) << " plans of keeping and checkpointing ("
                                       << std::string(reentrant ? "reentrant" : "non-reentrant") << " form), " << low
                                       << " measured above their prediction, by at most " << most_over << " bytes");
}

/// A DCGAN-shaped step (pytorch/examples' dcgan, MLP-sized): the discriminator's forward three
/// times (real images, detached fakes, fakes for the generator's loss), three backward calls,
/// the generator's forward once; BatchNorm in both.
struct GanStep : CallStep {
  static constexpr int64_t nz = 64, hidden = 512, image = 256, batch = 256;
  torch::nn::Sequential g, d;
  torch::Tensor real;
  GanStep() {
    torch::manual_seed(0);
    g = model->register_module("g", torch::nn::Sequential(layer(nz, hidden, true, DenseImpl::relu),
                                                          layer(hidden, hidden, true, DenseImpl::relu),
                                                          layer(hidden, image, false, DenseImpl::tanh)));
    d = model->register_module("d", torch::nn::Sequential(layer(image, hidden, false, DenseImpl::leaky),
                                                          layer(hidden, hidden, true, DenseImpl::leaky),
                                                          layer(hidden, 1, false, DenseImpl::none)));
    model->train();
    actckpt::label_layers(*model);
    real = torch::rand({batch, image}, test_device::options()) * 2 - 1;
    body = [this] { gan_step(/*generator_loss=*/true); };
  }
  void gan_step(bool generator_loss) {
    auto bce = [](const torch::Tensor& logits, double target) {
      return torch::binary_cross_entropy_with_logits(logits, torch::full_like(logits, target));
    };
    bce(d->forward(real), 1.0).backward();                       // D on real images
    auto fake = g->forward(torch::randn({batch, nz}, test_device::options()));
    bce(d->forward(fake.detach()), 0.0).backward();              // D on detached fakes
    if (generator_loss) bce(d->forward(fake), 1.0).backward();   // G's loss through D
  }
};

}  // namespace

TEST_CASE("planner: a DCGAN step (discriminator forward 3 times, 3 backward calls) is planned at every budget") {
  GanStep s;
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const auto profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
  REQUIRE(!profile.is_chain());
  CHECK(profile.layers.size() == 6);
  CHECK(profile.calls.size() == 3 + 3 * 3);  // G once, D three times
  std::size_t with_backward = 0;
  for (const auto& c : profile.calls) with_backward += c.backward_point.has_value() ? 1 : 0;
  CHECK(with_backward == profile.calls.size());
  const double ms = check_planned_budgets(s, profile);
  MESSAGE("DCGAN step: slowest search " << ms << " ms");
  CHECK(ms < 1000);
  check_every_plan(s, profile);
}

TEST_CASE("planner: a layer applied twice in one forward (shared weights), and a layer shared by two models") {
  CallStep s;
  torch::manual_seed(0);
  // LeakyReLU saves its input (ReLU saves its output, which the next call holds anyway): each
  // call keeps an activation that checkpointing drops.
  auto first = s.layer(256, 512, false, DenseImpl::leaky);
  // No BatchNorm here: a checkpointed BatchNorm applied several times in one forward is refused
  // by the checkpoint itself (its recompute finds a saved tensor changed by the later calls).
  auto twice = s.layer(512, 512, false, DenseImpl::leaky);
  auto last = s.layer(512, 256, false, DenseImpl::none);
  // Two models hold the shared layer: one step runs both; the planner sees it once.
  auto encoder = s.model->register_module("encoder", torch::nn::Sequential(first, twice));
  auto decoder = s.model->register_module("decoder", torch::nn::Sequential(twice, last));
  s.model->train();
  actckpt::label_layers(*s.model);
  const auto x = torch::randn({256, 256}, test_device::options());
  s.body = [&] {
    auto h = twice(encoder->forward(x));  // the shared layer: twice in the encoder's output path
    decoder->forward(h).pow(2).mean().backward();
  };
  CHECK(actckpt::detail::planner::find_layers(*s.model).size() == 3);
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const auto profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
  REQUIRE(!profile.is_chain());
  CHECK(profile.layers.size() == 3);
  CHECK(profile.calls.size() == 5);  // first, twice x3, last
  check_planned_budgets(s, profile);
  check_every_plan(s, profile);
}

TEST_CASE("planner: a step of four accumulated micro-batches is planned at every budget") {
  CallStep s;
  torch::manual_seed(0);
  auto net = s.model->register_module("net", torch::nn::Sequential());
  const int64_t widths[] = {256, 768, 256, 768, 256};
  for (int i = 0; i + 1 < 5; ++i) net->push_back(s.layer(widths[i], widths[i + 1], i % 2 == 0, DenseImpl::relu));
  s.model->train();
  actckpt::label_layers(*s.model);
  const auto x = torch::randn({4, 128, 256}, test_device::options());
  s.body = [&] {
    for (int64_t m = 0; m < 4; ++m) (net->forward(x[m]).pow(2).mean() / 4).backward();
  };
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const auto profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
  REQUIRE(!profile.is_chain());
  CHECK(profile.calls.size() == 16);
  check_planned_budgets(s, profile);
  check_every_plan(s, profile);
}

TEST_CASE("planner: a U-Net whose decoder concatenates the encoder's outputs (skips held) is planned at every budget") {
  CallStep s;
  torch::manual_seed(0);
  auto enc1 = s.layer(128, 512, true, DenseImpl::relu), enc2 = s.layer(512, 256, true, DenseImpl::relu);
  auto mid = s.layer(256, 256, true, DenseImpl::relu);
  auto dec2 = s.layer(256 + 256, 512, true, DenseImpl::relu), dec1 = s.layer(512 + 512, 128, false, DenseImpl::none);
  auto net = s.model->register_module("unet", torch::nn::Sequential(enc1, enc2, mid, dec2, dec1));
  s.model->train();
  actckpt::label_layers(*s.model);
  const auto x = torch::randn({512, 128}, test_device::options());
  s.body = [&] {
    auto e1 = enc1(x);
    auto e2 = enc2(e1);
    auto d2 = dec2(torch::cat({mid(e2), e2}, 1));
    dec1(torch::cat({d2, e1}, 1)).pow(2).mean().backward();
  };
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const auto profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
  CHECK(profile.layers.size() == 5);
  const double ms = check_planned_budgets(s, profile);
  MESSAGE("U-Net (" << std::string(profile.is_chain() ? "chain" : "call level") << "): slowest search " << ms << " ms");
  CHECK(ms < 1000);
  // (Keeping mid and checkpointing dec2 keeps mid's output alive through mid's saves, which the
  // checkpointed run releases as the cat's expression ends: that plan was predicted 512 KiB low
  // before the profiler took plan-dependent releases out of the figures.)
  check_every_plan(s, profile);
}

TEST_CASE("planner: a training step whose calls differ from the planned step is reported once, naming the call") {
  GanStep s;
  actckpt::PlannerOptions options;
  options.meter = &s.meter;
  const auto profile = actckpt::profile_step(*s.model, [&] { s.step(); }, options);
  const auto plan = actckpt::plan_for_budget(profile, actckpt::smallest_feasible_budget(profile));
  plan.apply(*s.model);
  SUBCASE("a warning by default") {
    actckpt::PlanMonitor monitor(*s.model, plan);
    s.step();
    CHECK(monitor.step_done());
    CHECK(monitor.report().empty());
    s.body = [&] { s.gan_step(/*generator_loss=*/false); };  // the third discriminator call is gone
    s.step();
    CHECK_FALSE(monitor.step_done());
    const auto report = monitor.report();
    CAPTURE(report);
    CHECK(report.find("forward call 10 was no call (the step ended) where the planned step has layer 'd.0'") !=
          std::string::npos);
    s.step();
    CHECK_FALSE(monitor.step_done());
    CHECK(monitor.report() == report);  // once
  }
  SUBCASE("a UsageError with SequenceCheck::strict") {
    actckpt::PlanMonitor monitor(*s.model, plan, actckpt::SequenceCheck::strict);
    s.body = [&] {  // another order: the generator first
      auto fake = s.g->forward(torch::randn({GanStep::batch, GanStep::nz}, test_device::options()));
      s.d->forward(fake.detach()).mean().backward();
      s.d->forward(s.real).mean().backward();
    };
    s.step();
    CHECK_THROWS_WITH_AS(monitor.step_done(), doctest::Contains("forward call 1 was layer 'g.0' where the planned step has layer 'd.0'"),
                         actckpt::UsageError);
  }
}
