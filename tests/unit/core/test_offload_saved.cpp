// Offload-saved mode (StashOptions::offload_saved; policies OffloadSaved and SyncOffloadSaved):
// every tensor autograd saves, parameters and buffers aside, waits in the host pool instead of
// being recomputed. Gradients bitwise those of the unwrapped model for each kind of layer; bytes
// moved counted independently on the unwrapped layer; views share one restored storage; in-place
// changes raise as autograd would; retain_graph and double backward; failures leak nothing.

#include "test_models.hpp"

#include <algorithm>
#include <atomic>
#include <map>
#include <type_traits>

using namespace test_models;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::OffloadSaved;
using actckpt::SyncOffloadSaved;

namespace {

#define OFFLOAD_SAVED_POLICIES OffloadSaved, SyncOffloadSaved

/// A layer whose forward does in-place work on its intermediates (as many models do).
struct InPlaceBlockImpl : torch::nn::Module {
  explicit InPlaceBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto h = fc(x);
    h.relu_();       // saves its own result
    auto y = h * 2;  // a new tensor...
    y.add_(x);       // ...changed in place (add saves nothing)
    return torch::sigmoid(y) * 1.5;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(InPlaceBlock);

/// Saves a tensor, views of it (transpose, slice, chunk) and the same tensor twice.
struct SharedStorageBlockImpl : torch::nn::Module {
  explicit SharedStorageBlockImpl(int64_t dim) { w = register_parameter("w", torch::randn({dim, dim}, test_device::options()) * 0.1); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    auto h = torch::tanh(x.mm(w));
    auto ht = h.t();                       // transposed view of h
    auto slice = h.narrow(1, 1, h.size(1) - 2);  // sliced view, gaps between rows
    auto parts = h.chunk(2, 0);
    auto a = ht.mm(h);                     // saves ht and h
    auto b = slice * slice;                // saves slice twice
    auto c = parts[0] * parts[1];          // saves two views of h
    return a.sum() + b.sum() + c.sum() + (h * h).sum();
  }
  torch::Tensor w;
};
TORCH_MODULE(SharedStorageBlock);

/// Layouts: transposed, sliced, expanded-then-materialized and channels-last saved tensors.
struct LayoutBlockImpl : torch::nn::Module {
  LayoutBlockImpl() {
    conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 4, 3).padding(1)));
    fc = register_module("fc", torch::nn::Linear(8, 8));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) {  // x: [2, 4, 8, 8]
    auto cl = x.contiguous(at::MemoryFormat::ChannelsLast);
    auto c = conv(cl);                                      // saves a channels-last input
    auto t = c.transpose(2, 3);                             // transposed view, saved by exp
    auto e = torch::exp(t * 0.1);
    auto s = c.narrow(3, 1, 5);                             // sliced
    auto m = s.select(0, 0).unsqueeze(0).expand({2, 4, 8, 5}).contiguous();  // expanded, then materialized
    return fc(e).sum() + (s * m).sum() + torch::sin(t).sum();
  }
  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(LayoutBlock);

/// Grads of the module's parameters and of the given leaves, cloned, then cleared.
std::vector<torch::Tensor> grads_of(torch::nn::Module& m, std::vector<torch::Tensor> leaves = {}) {
  auto g = take_grads(m);
  for (auto& l : leaves) {
    g.push_back(l.grad().defined() ? l.grad().clone() : torch::Tensor());
    l.mutable_grad().reset();
  }
  return g;
}

template <class Policy, class Layer>
Checkpointed<Layer, Policy> wrap_on(Layer layer, const IsolatedOffload& iso, std::string label = "layer") {
  Checkpointed<Layer, Policy> wrapped(layer);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label(std::move(label));
  return wrapped;
}

/// Runs `step` (forward and backward of `module` on a seeded RNG) and returns the gradients.
template <class M, class Step>
std::vector<torch::Tensor> seeded_grads(M& module, torch::nn::Module& params, std::vector<torch::Tensor> leaves,
                                        Step step) {
  torch::manual_seed(1234);
  step(module);
  return grads_of(params, std::move(leaves));
}

/// Bytes that move for one call of `layer` on `x`, counted on the unwrapped layer with a hooks
/// scope of the test's own: the saved tensors that are not parameters or buffers, grouped by
/// storage; a storage with one saved tensor addressing at least `min_bytes` counts the bytes from
/// the lowest to the highest one its saved tensors address.
template <class Layer, class Call>
std::int64_t expected_moved_bytes(Layer& layer, std::size_t min_bytes, Call call) {
  std::vector<const c10::StorageImpl*> owned;
  for (auto& p : layer->parameters()) owned.push_back(p.storage().unsafeGetStorageImpl());
  for (auto& b : layer->buffers()) owned.push_back(b.storage().unsafeGetStorageImpl());
  struct Span {
    std::int64_t begin, end;
    bool large;
  };
  std::map<const c10::StorageImpl*, Span> spans;
  std::vector<torch::Tensor> keep_alive;  // so storages are not reused within the count
  {
    actckpt::SavedTensorHooks hooks(
        [&](const at::Tensor& t) {
          keep_alive.push_back(t.detach());
          if (t.numel() == 0) return 0;
          const auto* storage = t.storage().unsafeGetStorageImpl();
          if (std::find(owned.begin(), owned.end(), storage) != owned.end()) return 0;
          std::int64_t last = 0;
          for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
          const std::int64_t begin = t.storage_offset() * static_cast<std::int64_t>(t.element_size());
          const std::int64_t end = begin + (last + 1) * static_cast<std::int64_t>(t.element_size());
          auto [it, inserted] = spans.try_emplace(storage, Span{begin, end, false});
          if (!inserted) it->second = Span{std::min(it->second.begin, begin), std::max(it->second.end, end), it->second.large};
          // A storage moves when one of its saved tensors is large enough (its small ones with it).
          if (static_cast<std::size_t>(end - begin) >= min_bytes) it->second.large = true;
          return 0;
        },
        [](int&) -> at::Tensor { throw std::logic_error("the counting pass runs no backward"); });
    torch::manual_seed(1234);
    (void)call();
  }
  std::int64_t total = 0;
  for (const auto& [storage, span] : spans)
    if (span.large) total += span.end - span.begin;
  return total;
}

}  // namespace

TEST_CASE_TEMPLATE("offload-saved: gradients are bitwise the unwrapped model's for every kind of layer", Policy,
                   OFFLOAD_SAVED_POLICIES) {
  IsolatedOffload iso;
  auto compare = [&](auto layer, auto make_input, const char* name) {
    CAPTURE(name);
    auto wrapped = wrap_on<Policy>(layer, iso, name);
    auto x = make_input();
    auto run = [&](auto& m) { torch::manual_seed(99); m(x).sum().backward(); };
    auto ref = seeded_grads(layer, *layer, {x}, run);
    auto got = seeded_grads(wrapped, *layer, {x}, run);
    check_bitwise_equal(got, ref);
    CHECK(iso.context->telemetry().d2h_bytes > 0);
    CHECK(iso.pool->stats().live_bytes == 0);
    CHECK(iso.context->stack().size() == 0);
    iso.context->reset_telemetry();
  };
  torch::manual_seed(1);
  compare(MlpBlock(32, 64, /*dropout=*/0.3), [] { return torch::randn({16, 32}, test_device::options().requires_grad(true)); }, "mlp+dropout");
  compare(test_device::on_device(actckpt::models::TransformerBlock(
              actckpt::models::TransformerBlockOptions(32, 8, 64).dropout(0.1))),
          [] { return torch::randn({2, 12, 32}, test_device::options().requires_grad(true)); }, "attention");
  compare(InPlaceBlock(32), [] { return torch::randn({16, 32}, test_device::options().requires_grad(true)); }, "in-place");
  compare(SharedStorageBlock(24), [] { return torch::randn({16, 24}, test_device::options().requires_grad(true)); }, "shared storage");
  compare(BatchNormBlock(32), [] { return torch::randn({16, 32}, test_device::options().requires_grad(true)); }, "batchnorm");
  compare(LayoutBlock(), [] { return torch::randn({2, 4, 8, 8}, test_device::options().requires_grad(true)); }, "layouts");

  // Layers with more arguments or outputs.
  MaskedBlock masked(32);
  auto wm = wrap_on<Policy>(masked, iso, "masked");
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto mask = torch::rand({16, 32}, test_device::options());
  auto ref = seeded_grads(masked, *masked, {x}, [&](auto& m) { m(x, mask, true).sum().backward(); });
  check_bitwise_equal(seeded_grads(wm, *masked, {x}, [&](auto& m) { m(x, mask, true).sum().backward(); }), ref);
  TwoOutputBlock two(32);
  auto wt = wrap_on<Policy>(two, iso, "two");
  auto two_step = [&](auto& m) {
    auto [a, b, idx, n] = m(x);
    (a.sum() + b.pow(2).sum() * static_cast<double>(n)).backward();
  };
  auto ref2 = seeded_grads(two, *two, {x}, two_step);
  check_bitwise_equal(seeded_grads(wt, *two, {x}, two_step), ref2);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("offload-saved: a stack of layers, keep-N and size thresholds set at run time, bitwise", Policy,
                   OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(2);
  std::vector<actckpt::models::TransformerBlock> layers;
  for (int i = 0; i < 3; ++i)
    layers.push_back(test_device::on_device(actckpt::models::TransformerBlock(
        actckpt::models::TransformerBlockOptions(32, 8, 64).dropout(0.1))));
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({2, 10, 32}, test_device::options().requires_grad(true));
  auto step = [&](auto& stack) {
    torch::manual_seed(7);
    chain(stack, x).pow(2).sum().backward();
    std::vector<torch::Tensor> g;
    for (auto& l : layers)
      for (auto& t : take_grads(*l)) g.push_back(t);
    g.push_back(x.grad().clone());
    x.mutable_grad().reset();
    return g;
  };
  auto ref = step(layers);
  for (std::size_t keep : {0, 1, 5}) {
    for (std::size_t min_bytes : {1, 1024, 1 << 20}) {
      CAPTURE(keep);
      CAPTURE(min_bytes);
      for (auto& w : wrapped) {
        auto o = Policy::options();
        o.keep_on_device = keep;
        o.min_offload_bytes = min_bytes;
        w->set_stash_options(o);
      }
      check_bitwise_equal(step(wrapped), ref);
      CHECK(iso.pool->stats().live_bytes == 0);
      CHECK(iso.context->stack().size() == 0);
    }
  }
}

TEST_CASE("offload-saved: switched on at run time through a layer's StashOptions, as a planner does") {
  torch::manual_seed(3);
  MlpBlock block(32, 64);
  IsolatedOffload iso;
  auto wrapped = wrap_on<actckpt::NoOffload>(block, iso);
  actckpt::StashOptions o;
  o.offload_saved = true;
  o.mode = actckpt::StashMode::async_host;
  o.keep_on_device = 0;
  o.min_offload_bytes = 1;
  o.checkpoint = true;  // not read when offload_saved is set
  wrapped->set_stash_options(o);
  auto log_ptr = std::make_shared<EventLog>();
  auto& log = *log_ptr;
  actckpt::ObserverScope observing(log_ptr);
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto ref = seeded_grads(block, *block, {x}, [&](auto& m) { m(x).sum().backward(); });
  auto got = seeded_grads(wrapped, *block, {x}, [&](auto& m) { m(x).sum().backward(); });
  check_bitwise_equal(got, ref);
  CHECK(log.of(EventKind::recompute_end).empty());  // no recompute
  CHECK(!log.of(EventKind::offload_begin).empty());
  CHECK(iso.context->telemetry().d2h_bytes > 0);
}

TEST_CASE_TEMPLATE("offload-saved: bytes moved per step are the saved activations minus parameters, buffers and "
                   "small tensors",
                   Policy, OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(4);
  IsolatedOffload iso;
  auto check_layer = [&](auto layer, at::Tensor x, std::size_t min_bytes, const char* name) {
    CAPTURE(name);
    CAPTURE(min_bytes);
    auto wrapped = wrap_on<Policy>(layer, iso, name);
    auto o = Policy::options();
    o.min_offload_bytes = min_bytes;
    wrapped->set_stash_options(o);
    const auto expected = expected_moved_bytes(layer, min_bytes, [&] { return layer(x); });
    iso.context->reset_telemetry();
    torch::manual_seed(1234);
    auto y = wrapped(x);
    y.sum().backward();
    wait_until_idle(*iso.context);
    const auto t = iso.context->telemetry();
    CHECK(t.d2h_bytes == expected);
    CHECK(t.h2d_bytes == expected);
    CHECK(iso.pool->stats().live_bytes == 0);
    return expected;
  };
  for (std::size_t min_bytes : {1, 1024, 4096}) {
    const auto mlp = check_layer(MlpBlock(32, 64, 0.2), torch::randn({16, 32}, test_device::options().requires_grad(true)), min_bytes, "mlp");
    CHECK(mlp > 0);
    check_layer(test_device::on_device(actckpt::models::TransformerBlock(32, 8, 64)), torch::randn({2, 12, 32}, test_device::options().requires_grad(true)),
                min_bytes, "attention");
    check_layer(SharedStorageBlock(24), torch::randn({16, 24}, test_device::options().requires_grad(true)), min_bytes, "shared storage");
    check_layer(BatchNormBlock(32), torch::randn({16, 32}, test_device::options().requires_grad(true)), min_bytes, "batchnorm");
  }
  // A layer with large weights and a tiny activation: the weights never move.
  const auto tiny = check_layer(test_device::on_device(torch::nn::Linear(512, 512)), torch::randn({1, 512}, test_device::options()), 1, "big weights");
  CHECK(tiny == 512 * 4);  // the input row only: the weight (1 MiB) and bias stay
}

TEST_CASE_TEMPLATE("offload-saved: views come back as views of one restored storage, with their layout, bitwise",
                   Policy, OFFLOAD_SAVED_POLICIES) {
  // A function that saves a tensor and views of it, and checks in backward what autograd gives it.
  struct Probe : torch::autograd::Function<Probe> {
    static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, torch::Tensor x) {
      auto base = x * 1.0;  // a tensor of its own
      auto t = base.transpose(0, 1);
      auto s = base.narrow(1, 3, 4);
      auto cl = base.view({2, 4, 4, 8}).contiguous(at::MemoryFormat::ChannelsLast);
      ctx->save_for_backward({base, t, s, base, cl, cl.permute({0, 2, 3, 1})});
      ctx->saved_data["base"] = base.clone();
      ctx->saved_data["offset_s"] = s.storage_offset() - base.storage_offset();
      ctx->saved_data["cl_strides"] = cl.strides().vec();
      return {x.sum() * 1.0};
    }
    static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                   torch::autograd::variable_list grads) {
      auto saved = ctx->get_saved_variables();
      const auto& base = saved[0];
      auto same_storage = [&](const torch::Tensor& v) { return v.storage().is_alias_of(base.storage()); };
      CHECK(bitwise_equal(base, ctx->saved_data["base"].toTensor()));
      CHECK(same_storage(saved[1]));
      CHECK(saved[1].strides() == c10::IntArrayRef{1, 32});
      CHECK(bitwise_equal(saved[1], base.t()));
      CHECK(same_storage(saved[2]));
      CHECK(saved[2].storage_offset() - base.storage_offset() == ctx->saved_data["offset_s"].toInt());
      CHECK(saved[2].strides() == base.narrow(1, 3, 4).strides());
      CHECK(same_storage(saved[3]));
      CHECK(saved[3].storage_offset() == base.storage_offset());
      CHECK(saved[4].strides() == c10::IntArrayRef(ctx->saved_data["cl_strides"].toIntVector()));
      CHECK(saved[4].is_contiguous(at::MemoryFormat::ChannelsLast));
      CHECK(saved[5].storage().is_alias_of(saved[4].storage()));
      CHECK(bitwise_equal(saved[5], saved[4].permute({0, 2, 3, 1})));
      return {grads[0].expand({8, 32})};
    }
  };
  IsolatedOffload iso;
  actckpt::OffloadContextScope scope(iso.context);
  auto x = torch::randn({8, 32}, test_device::options().requires_grad(true));
  auto y = actckpt::checkpoint<Policy>([](const torch::Tensor& in) { return Probe::apply(in)[0]; }, x);
  wait_until_idle(*iso.context);
  // base (1 KiB) and the channels-last copy (1 KiB) move, once each.
  CHECK(iso.context->telemetry().d2h_bytes == 2 * 8 * 32 * 4);
  y.backward();
  CHECK(bitwise_equal(x.grad(), torch::ones({8, 32}, test_device::options())));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("offload-saved: a saved tensor changed in place after the forward raises, as unwrapped", Policy,
                   OFFLOAD_SAVED_POLICIES) {
  IsolatedOffload iso;
  // exp saves its output; the caller then changes that output in place.
  torch::nn::Linear fc(32, 32);
  fc->to(test_device::device());
  auto fn = [&](const torch::Tensor& x) { return torch::exp(fc(x)); };
  auto x = torch::randn({16, 32}, test_device::options());
  {
    auto y = fn(x);
    y.mul_(2);
    CHECK_THROWS_WITH(y.sum().backward(), doctest::Contains("modified by an inplace operation"));
  }
  for (std::size_t min_bytes : {std::size_t{1}, std::size_t{1} << 20}) {  // moved, and kept on the device
    CAPTURE(min_bytes);
    auto o = Policy::options();
    o.min_offload_bytes = min_bytes;
    actckpt::OffloadContextScope scope(iso.context);
    auto y = actckpt::detail::checkpoint_callable(o, "exp layer", {}, fn, x);
    y.mul_(2);
    CHECK_THROWS_WITH(y.sum().backward(), doctest::Contains("modified by an in-place operation"));
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

TEST_CASE_TEMPLATE("offload-saved: retain_graph twice and double backward are bitwise the unwrapped layer's", Policy,
                   OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(5);
  IsolatedOffload iso;
  std::vector<MlpBlock> layers{MlpBlock(16, 32), MlpBlock(16, 32)};
  auto wrapped = wrap_stack<Policy>(layers, iso);
  for (auto& w : wrapped) {
    auto o = Policy::options();
    o.min_offload_bytes = 1;
    w->set_stash_options(o);
  }
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto twice = [&](auto& stack) {
    auto loss = chain(stack, x).pow(2).sum();
    loss.backward({}, /*retain_graph=*/true);
    loss.backward();
    std::vector<torch::Tensor> g{x.grad().clone()};
    x.mutable_grad().reset();
    for (auto& l : layers)
      for (auto& t : take_grads(*l)) g.push_back(t);
    return g;
  };
  auto ref = twice(layers);
  check_bitwise_equal(twice(wrapped), ref);
  CHECK(iso.pool->stats().live_bytes == 0);

  auto second = [&](auto& stack) {
    auto g = torch::autograd::grad({chain(stack, x).pow(3).sum()}, {x}, {}, true, true)[0];
    return torch::autograd::grad({g.pow(2).sum()}, {x})[0];
  };
  CHECK(bitwise_equal(second(wrapped), second(layers)));
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

TEST_CASE("offload-saved: the functional form; captured parameters stay, arguments' activations move") {
  torch::manual_seed(6);
  IsolatedOffload iso;
  actckpt::OffloadContextScope scope(iso.context);
  auto w = torch::randn({64, 64}, test_device::options().requires_grad(true));
  auto x = torch::randn({8, 64}, test_device::options().requires_grad(true));
  auto fn = [&](const torch::Tensor& in) { return torch::tanh(in.mm(w)).mm(w); };
  fn(x).sum().backward();
  std::vector<torch::Tensor> ref{x.grad().clone(), w.grad().clone()};
  x.mutable_grad().reset();
  w.mutable_grad().reset();
  iso.context->reset_telemetry();
  auto y = actckpt::checkpoint<OffloadSaved>(fn, x);
  wait_until_idle(*iso.context);
  // Saved: x and tanh's output (mm saves both operands; w twice stays), each 8x64 floats.
  CHECK(iso.context->telemetry().d2h_bytes == 2 * 8 * 64 * 4);
  y.sum().backward();
  check_bitwise_equal({x.grad(), w.grad()}, ref);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("offload-saved async: the backward of layer i prefetches the saved tensors of layer i-1") {
  torch::manual_seed(8);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 4; ++i) layers.emplace_back(32, 64);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<OffloadSaved>(layers, iso);
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto log_ptr = std::make_shared<EventLog>();
  auto& log = *log_ptr;
  actckpt::ObserverScope observing(log_ptr);
  auto loss = chain(wrapped, x).sum();
  wait_until_idle(*iso.context);
  loss.backward();
  for (int i = 1; i < 4; ++i) {
    CAPTURE(i);
    const auto prev = std::to_string(i - 1);
    const long prefetch_prev = log.index_of(EventKind::prefetch_begin, prev);
    REQUIRE(prefetch_prev >= 0);
    // Layer i-1's tensors were on their way back before layer i-1's backward began.
    CHECK(prefetch_prev < log.index_of(EventKind::backward_begin, prev));
    CHECK(log.index_of(EventKind::backward_begin, std::to_string(i)) < prefetch_prev);
  }
  CHECK(iso.pool->stats().live_bytes == 0);
}

// The stash stack alone would prefetch only the stash below the one being restored (the last
// saved tensor of layer i-1); the layer's backward starts all of layer i-1's saved tensors on their
// way back, so none of them is waited for when layer i-1's backward begins.
TEST_CASE("offload-saved async: every saved tensor of layer i-1 is on its way back before its backward begins") {
  torch::manual_seed(8);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 4; ++i) {
    layers.emplace_back(32, 64);
    layers.back()->to(test_device::device());
  }
  IsolatedOffload iso;
  auto wrapped = wrap_stack<OffloadSaved>(layers, iso);
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope observing(log);
  auto loss = chain(wrapped, x).sum();
  REQUIRE(wait_until_idle(*iso.context));
  loss.backward();
  const auto events = log->snapshot();
  for (int i = 0; i < 3; ++i) {  // the layers below the top one
    CAPTURE(i);
    const auto label = std::to_string(i);
    const long begin = log->index_of(EventKind::backward_begin, label);
    REQUIRE(begin >= 0);
    std::size_t offloaded = 0, prefetched_before = 0;
    for (std::size_t k = 0; k < events.size(); ++k) {
      if (events[k].label != label) continue;
      if (events[k].kind == EventKind::offload_begin) ++offloaded;
      if (events[k].kind == EventKind::prefetch_begin && static_cast<long>(k) < begin) ++prefetched_before;
    }
    // An MLP block saves fc1's output and the activation's output (separate storages): more than
    // the one stash the stack would prefetch.
    CHECK(offloaded >= 2);
    CHECK(prefetched_before == offloaded);
  }
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("offload-saved: an exception mid-step, a failed copy or a dropped graph leave pool and stack empty" * test_device::cpu_only("the CPU copy worker's test hooks (fault injector, after-copy hook) are what this case drives; CUDA copies do not pass through them"),
                   Policy, OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(9);
  IsolatedOffload iso;
  std::vector<FaultyBlock> layers{FaultyBlock(32), FaultyBlock(32), FaultyBlock(32)};
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  layers[2]->fail_every_forward = true;
  CHECK_THROWS_WITH(chain(wrapped, x), doctest::Contains("injected forward failure"));
  wait_until_idle(*iso.context);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  layers[2]->heal();

  {  // dropped without backward
    auto y = chain(wrapped, x);
    wait_until_idle(*iso.context);
    CHECK(iso.pool->stats().live_bytes > 0);
  }
  wait_until_idle(*iso.context);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);

  iso.context->engine().set_fault_injector([] { throw std::runtime_error("injected copy failure"); });
  if constexpr (std::is_same_v<Policy, SyncOffloadSaved>) {
    CHECK_THROWS_WITH(chain(wrapped, x), doctest::Contains("injected copy failure"));
  } else {
    auto loss = chain(wrapped, x).sum();
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("injected copy failure"));
  }
  wait_until_idle(*iso.context);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  iso.context->engine().set_fault_injector(nullptr);

  auto ref = seeded_grads(layers[0], *layers[0], {x}, [&](auto&) { chain(layers, x).sum().backward(); });
  for (auto& l : layers) (void)take_grads(*l);
  auto got = seeded_grads(layers[0], *layers[0], {x}, [&](auto&) { chain(wrapped, x).sum().backward(); });
  check_bitwise_equal(got, ref);
}

TEST_CASE("offload-saved: stash checksums catch a host buffer corrupted in flight" * test_device::cpu_only("the CPU copy worker's test hooks (fault injector, after-copy hook) are what this case drives; CUDA copies do not pass through them")) {
  torch::manual_seed(10);
  IsolatedOffload iso;
  MlpBlock block(32, 64);
  auto wrapped = wrap_on<SyncOffloadSaved>(block, iso);
  auto o = wrapped->stash_options();
  o.verify_checksums = true;
  wrapped->set_stash_options(o);
  auto x = torch::randn({16, 32}, test_device::options());
  // Flip one byte of the first saved tensor that reaches host memory, as a racing writer would.
  auto corrupted = std::make_shared<std::atomic<int>>(0);
  iso.context->engine().set_after_copy_hook([corrupted](actckpt::CopyDirection d, torch::Tensor& dst) {
    if (d != actckpt::CopyDirection::device_to_host || corrupted->fetch_add(1) != 0) return;
    static_cast<unsigned char*>(dst.data_ptr())[5] ^= 0x40;
  });
  {
    auto loss = wrapped(x).sum();
    iso.context->engine().set_after_copy_hook(nullptr);
    REQUIRE(corrupted->load() >= 1);
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("different from what left the device"));
  }
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("offload-saved inside a checkpointed layer runs as part of that layer; nested the other way round works") {
  torch::manual_seed(11);
  IsolatedOffload iso;
  MlpBlock inner(32, 64);
  struct OuterImpl : torch::nn::Module {
    explicit OuterImpl(MlpBlock block, const IsolatedOffload& iso) {
      wrapped = register_module("wrapped", Checkpointed<MlpBlock, OffloadSaved>(block));
      wrapped->set_offload_context(iso.context);
      to(test_device::device());
    }
    torch::Tensor forward(torch::Tensor x) { return torch::tanh(wrapped(x)); }
    Checkpointed<MlpBlock, OffloadSaved> wrapped{nullptr};
  };
  auto outer = std::make_shared<OuterImpl>(inner, iso);
  Checkpointed<torch::nn::ModuleHolder<OuterImpl>, actckpt::AsyncOffload> ckpt{torch::nn::ModuleHolder<OuterImpl>(outer)};
  ckpt->set_offload_context(iso.context);
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto ref = seeded_grads(inner, *inner, {x}, [&](auto&) { torch::tanh(inner(x)).sum().backward(); });
  auto got = seeded_grads(inner, *inner, {x}, [&](auto&) { ckpt(x).sum().backward(); });
  check_bitwise_equal(got, ref);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("offload-saved: after each layer's forward its activations leave LibTorch's allocator for the pool",
                   Policy, OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(12);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 4; ++i) layers.emplace_back(64, 256);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({32, 64}, test_device::options().requires_grad(true));
  auto held_after_forward = [&](auto& stack) {
    actckpt::MemoryMeter meter(test_device::device(), iso.pool);
    const auto before = meter.device_bytes();
    auto y = chain(stack, x);
    REQUIRE(wait_until_idle(*iso.context));
    const auto held = meter.device_bytes() - before;
    y.sum().backward();
    return held;
  };
  const auto unwrapped = held_after_forward(layers);
  const auto offloaded = held_after_forward(wrapped);
  CAPTURE(unwrapped);
  CAPTURE(offloaded);
  // Left on the device: the last output (32x64 floats) and what is under the 1 KiB threshold.
  CHECK(offloaded < unwrapped / 4);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("offload-saved: transposed, sliced, expanded and channels-last inputs, bitwise", Policy,
                   OFFLOAD_SAVED_POLICIES) {
  torch::manual_seed(13);
  IsolatedOffload iso;
  MlpBlock mlp(32, 64, /*dropout=*/0.2);
  auto wrapped = wrap_on<Policy>(mlp, iso, "mlp");
  auto o = Policy::options();
  o.min_offload_bytes = 1;
  wrapped->set_stash_options(o);
  std::vector<std::pair<const char*, std::function<torch::Tensor()>>> inputs{
      {"transposed", [] { return torch::randn({32, 16}, test_device::options()).t(); }},
      {"sliced", [] { return torch::randn({16, 48}, test_device::options()).narrow(1, 8, 32); }},
      {"expanded", [] { return torch::randn({1, 32}, test_device::options()).expand({16, 32}); }},
      {"expanded then materialized", [] { return torch::randn({1, 32}, test_device::options()).expand({16, 32}).contiguous(); }},
  };
  for (auto& [name, make] : inputs) {
    CAPTURE(name);
    auto leaf = make().requires_grad_(true);  // keeps its layout: strides, offset, stride 0
    auto run = [&](auto& m) { torch::manual_seed(5); m(leaf).sum().backward(); };
    check_bitwise_equal(seeded_grads(wrapped, *mlp, {leaf}, run), seeded_grads(mlp, *mlp, {leaf}, run));
  }
  LayoutBlock conv;
  auto wc = wrap_on<Policy>(conv, iso, "conv");
  auto x = torch::randn({2, 4, 8, 8}, test_device::options()).contiguous(at::MemoryFormat::ChannelsLast).requires_grad_(true);
  auto run = [&](auto& m) { m(x).backward(); };
  check_bitwise_equal(seeded_grads(wc, *conv, {x}, run), seeded_grads(conv, *conv, {x}, run));
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}
