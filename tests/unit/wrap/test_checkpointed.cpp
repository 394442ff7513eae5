// Checkpointing semantics: gradient parity with the unwrapped model for every kind of layer and
// policy, RNG and autocast replay, buffers, error cases, and module behaviour (names, save/load,
// clone, train/eval). Each case would fail without the feature it names.

#include "test_models.hpp"

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::NoOffload;
using actckpt::SyncOffload;

#define ACTCKPT_POLICIES NoOffload, SyncOffload, AsyncOffload

namespace {

/// Parameters of all layers, in order.
template <class Layer>
std::vector<torch::Tensor> all_params(std::vector<Layer>& layers) {
  std::vector<torch::Tensor> ps;
  for (auto& l : layers)
    for (auto& p : l->parameters()) ps.push_back(p);
  return ps;
}

template <class Layer>
std::vector<torch::Tensor> take_all_grads(std::vector<Layer>& layers) {
  std::vector<torch::Tensor> gs;
  for (auto& l : layers)
    for (auto& g : take_grads(*l)) gs.push_back(g);
  return gs;
}

}  // namespace

TEST_CASE_TEMPLATE("MLP stack: outputs, input and parameter gradients are bitwise equal", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(0);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 4; ++i) layers.emplace_back(16, 64);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({8, 16}, test_device::options().requires_grad(true));

  auto y_ref = chain(layers, x);
  y_ref.pow(2).sum().backward();
  auto gx_ref = x.grad().clone();
  x.mutable_grad().reset();
  auto g_ref = take_all_grads(layers);

  auto y = chain(wrapped, x);
  CHECK(test_models::bitwise_equal(y, y_ref));
  CHECK(y.requires_grad());
  y.pow(2).sum().backward();
  CHECK(test_models::bitwise_equal(x.grad(), gx_ref));
  check_bitwise_equal(take_all_grads(layers), g_ref);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

TEST_CASE_TEMPLATE("transformer blocks with dropout: the recompute draws the same masks", Policy, ACTCKPT_POLICIES) {
  using actckpt::models::TransformerBlock;
  using actckpt::models::TransformerBlockOptions;
  torch::manual_seed(1);
  std::vector<TransformerBlock> layers;
  for (int i = 0; i < 3; ++i) layers.push_back(test_device::on_device(TransformerBlock(TransformerBlockOptions(32, 8, 64).dropout(0.2))));
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({2, 12, 32}, test_device::options());  // raw data: does not require grad

  torch::manual_seed(42);
  chain(layers, x).sum().backward();
  auto after_ref = torch::rand({4}, test_device::options());  // the caller's generator after a whole step
  auto g_ref = take_all_grads(layers);

  torch::manual_seed(42);
  auto y = chain(wrapped, x);
  y.sum().backward();
  auto after = torch::rand({4}, test_device::options());
  check_bitwise_equal(take_all_grads(layers), g_ref);
  // The recompute replayed the forward's RNG state, then gave the caller's state back.
  CHECK(test_models::bitwise_equal(after, after_ref));
}

TEST_CASE_TEMPLATE("no input requires grad: parameters still get gradients", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(2);
  MlpBlock block(8, 16);
  IsolatedOffload iso;
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto data = torch::randn({4, 8}, test_device::options());
  REQUIRE_FALSE(data.requires_grad());

  block(data).sum().backward();
  auto g_ref = take_grads(*block);
  auto y = wrapped(data);
  REQUIRE(y.requires_grad());
  y.sum().backward();
  auto g = take_grads(*block);
  for (const auto& t : g) REQUIRE(t.defined());
  check_bitwise_equal(g, g_ref);
}

TEST_CASE_TEMPLATE("two tensor inputs plus a non-tensor flag", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(3);
  MaskedBlock block(8);
  IsolatedOffload iso;
  Checkpointed<MaskedBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto x = torch::randn({4, 8}, test_device::options().requires_grad(true));
  auto mask = torch::rand({4, 8}, test_device::options().requires_grad(true));
  for (bool invert : {false, true}) {
    CAPTURE(invert);
    block(x, mask, invert).pow(2).sum().backward();
    auto gx = x.grad().clone(), gm = mask.grad().clone();
    x.mutable_grad().reset();
    mask.mutable_grad().reset();
    auto g_ref = take_grads(*block);

    wrapped(x, mask, invert).pow(2).sum().backward();
    CHECK(test_models::bitwise_equal(x.grad(), gx));
    CHECK(test_models::bitwise_equal(mask.grad(), gm));
    x.mutable_grad().reset();
    mask.mutable_grad().reset();
    check_bitwise_equal(take_grads(*block), g_ref);
  }
}

TEST_CASE_TEMPLATE("several outputs, a non-differentiable output and a non-tensor member", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(4);
  TwoOutputBlock block(8);
  IsolatedOffload iso;
  Checkpointed<TwoOutputBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto x = torch::randn({5, 8}, test_device::options().requires_grad(true));

  auto [ra, rb, ridx, rn] = block(x);
  (ra.sum() + (rb * 3).sum()).backward();
  auto gx = x.grad().clone();
  x.mutable_grad().reset();
  auto g_ref = take_grads(*block);

  auto [a, b, idx, n] = wrapped(x);
  CHECK(n == rn);
  CHECK(idx.scalar_type() == torch::kLong);
  CHECK_FALSE(idx.requires_grad());
  CHECK(test_models::bitwise_equal(idx, ridx));
  (a.sum() + (b * 3).sum()).backward();
  CHECK(test_models::bitwise_equal(x.grad(), gx));
  check_bitwise_equal(take_grads(*block), g_ref);

  // Only one of the outputs used: the other gets no gradient and costs nothing.
  auto [a2, b2, idx2, n2] = wrapped(x);
  (void)a2;
  (void)idx2;
  (void)n2;
  x.mutable_grad().reset();
  b2.sum().backward();
  auto [ra2, rb2, ridx2, rn2] = block(x);
  (void)ra2;
  auto gx_b = x.grad().clone();
  x.mutable_grad().reset();
  auto g_b = take_grads(*block);
  rb2.sum().backward();
  CHECK(test_models::bitwise_equal(x.grad(), gx_b));
  check_bitwise_equal(take_grads(*block), g_b);
}

TEST_CASE_TEMPLATE("an output the layer detached gets no gradient", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(5);
  DetachingBlock block(6);
  IsolatedOffload iso;
  Checkpointed<DetachingBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto x = torch::randn({3, 6}, test_device::options().requires_grad(true));
  auto ref = block(x);
  (ref[0].sum() + ref[1].sum()).backward();
  auto gx = x.grad().clone();
  x.mutable_grad().reset();
  auto g_ref = take_grads(*block);
  auto out = wrapped(x);
  REQUIRE(out.size() == 2);
  (out[0].sum() + out[1].sum()).backward();
  CHECK(test_models::bitwise_equal(x.grad(), gx));
  check_bitwise_equal(take_grads(*block), g_ref);
}

TEST_CASE_TEMPLATE("torch::autograd::grad and backward(inputs=) through checkpointed layers", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(6);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 3; ++i) layers.emplace_back(8, 16);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({4, 8}, test_device::options().requires_grad(true));
  auto params = all_params(layers);

  auto ref = torch::autograd::grad({chain(layers, x).pow(2).sum()}, params);
  auto got = torch::autograd::grad({chain(wrapped, x).pow(2).sum()}, params);
  check_bitwise_equal(got, ref);
  for (auto& p : params) CHECK_FALSE(p.grad().defined());  // grad() accumulates nothing

  // backward(inputs=) restricted to the first layer's parameters.
  auto first = layers[0]->parameters();
  torch::autograd::backward({chain(layers, x).pow(2).sum()}, {}, c10::nullopt, false, first);
  auto g_ref = take_all_grads(layers);
  torch::autograd::backward({chain(wrapped, x).pow(2).sum()}, {}, c10::nullopt, false, first);
  auto g = take_all_grads(layers);
  check_bitwise_equal(g, g_ref);
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE_TEMPLATE("BatchNorm running statistics change once per step", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(7);
  BatchNormBlock ref(6);
  BatchNormBlock mine(6);
  {
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < ref->parameters().size(); ++i) mine->parameters()[i].copy_(ref->parameters()[i]);
  }
  IsolatedOffload iso;
  Checkpointed<BatchNormBlock, Policy> wrapped(mine);
  wrapped->set_offload_context(iso.context);
  for (int step = 0; step < 3; ++step) {
    auto x = torch::randn({10, 6}, test_device::options());
    ref(x).sum().backward();
    wrapped(x).sum().backward();
  }
  CHECK(test_models::bitwise_equal(mine->bn->running_mean, ref->bn->running_mean));
  CHECK(test_models::bitwise_equal(mine->bn->running_var, ref->bn->running_var));
  CHECK(mine->bn->num_batches_tracked.item<int64_t>() == 3);
  check_bitwise_equal(take_grads(*mine), take_grads(*ref));
}

TEST_CASE_TEMPLATE("a recompute that differs from the forward: an error naming the layer (reentrant), the forward's "
                   "gradients (non-reentrant, same saved tensors)", Policy, ACTCKPT_POLICIES) {
  ShapeShiftingBlock block(4);
  IsolatedOffload iso;
  Checkpointed<ShapeShiftingBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("shifty");
  auto x = torch::randn({3, 4}, test_device::options());
  auto y = wrapped(x);
  if (!non_reentrant_form<Policy>()) {
    CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("recompute of checkpointed layer 'shifty'"),
                         actckpt::RecomputeMismatch);
  } else {
    // Non-reentrant: backward runs the forward's graph, and this recompute saved the same tensors
    // (the final narrow saves none), so the gradients are the forward's, bitwise the unwrapped
    // layer's. A recompute that saves different tensors raises (test_non_reentrant.cpp).
    y.sum().backward();
    auto g = take_grads(*block);
    block->calls = 0;  // the reference call returns the full output, as the forward did
    block(x).sum().backward();
    check_bitwise_equal(g, take_grads(*block));
  }
  y = torch::Tensor();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("an input modified in place after it was stashed raises an error", Policy, ACTCKPT_POLICIES) {
  MlpBlock block(4, 8);
  IsolatedOffload iso;
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("victim");
  auto x = torch::randn({3, 4}, test_device::options());
  auto y = wrapped(x);
  x.add_(1.0);
  // A SyncOffload stash is its own copy of x: in the non-reentrant form the change matters only
  // because the layer saved x for backward (fc1), and the error is autograd's own, as unwrapped.
  const bool own_copy = test_models::non_reentrant_form<Policy>() && Policy::options().mode == actckpt::StashMode::sync_host;
  CHECK_THROWS_WITH_AS(y.sum().backward(),
                       doctest::Contains(own_copy ? "was modified by an in-place operation after the forward saved it"
                                                  : "was modified in place after the forward stashed it"),
                       actckpt::InputMutated);
}

namespace {
/// Writes to its own input during forward (allowed in the unwrapped layer, where autograd saw it).
struct InputWritingBlockImpl : torch::nn::Module {
  explicit InputWritingBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    x.mul_(2.0);
    return fc(x);
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(InputWritingBlock);
}  // namespace

TEST_CASE_TEMPLATE("a layer that writes to its own input during forward raises an error naming it", Policy,
                   ACTCKPT_POLICIES) {
  InputWritingBlock block(4);
  IsolatedOffload iso;
  Checkpointed<InputWritingBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("writer");
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true)) * 1.0;  // not a leaf: in-place is legal
  CHECK_THROWS_WITH_AS(wrapped(x), doctest::Contains("'writer' modified its input #0 in place during forward"),
                       actckpt::InputMutated);
  CHECK(iso.context->stack().size() == 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("a parameter changed in place between forward and backward raises an error", Policy, ACTCKPT_POLICIES) {
  MlpBlock block(4, 8);
  IsolatedOffload iso;
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto y = wrapped(torch::randn({3, 4}, test_device::options()));
  {
    torch::NoGradGuard no_grad;
    block->fc1->weight.mul_(0.5);
  }
  CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("modified in place between its forward and its backward"),
                       actckpt::InputMutated);
}

TEST_CASE_TEMPLATE("a second backward through a consumed checkpoint raises, not crashes", Policy, ACTCKPT_POLICIES) {
  MlpBlock block(4, 8);
  IsolatedOffload iso;
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true));
  auto loss = wrapped(x).sum();
  loss.backward({}, /*retain_graph=*/true);
  if (!non_reentrant_form<Policy>()) {
    CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("a second time"), actckpt::StashConsumed);
  } else {
    // Non-reentrant: as the unwrapped layer, a retained graph backpropagates again (recomputing).
    auto g1 = x.grad().clone();
    loss.backward();
    CHECK(test_models::bitwise_equal(x.grad(), g1 * 2));
  }
  loss = torch::Tensor();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("eval mode and no-grad mode run the layer directly and stash nothing", Policy, ACTCKPT_POLICIES) {
  MlpBlock block(4, 8);
  IsolatedOffload iso;
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  auto x = torch::randn({3, 4}, test_device::options());
  {
    torch::NoGradGuard no_grad;
    auto y = wrapped(x);
    CHECK(test_models::bitwise_equal(y, block(x)));
    CHECK_FALSE(y.requires_grad());
  }
  wrapped->eval();
  CHECK_FALSE(block->is_training());
  auto y = wrapped(x);
  CHECK(y.requires_grad());            // grad mode on: differentiable as the plain layer is
  CHECK(y.grad_fn()->name().find("CheckpointFunction") == std::string::npos);
  CHECK(log->snapshot().empty());      // no checkpoint was made (either form announces one)
  CHECK(iso.pool->stats().peak_live_bytes == 0);
  wrapped->train();
  CHECK(block->is_training());
  CHECK(block->fc1->is_training());
  auto z = wrapped(x);                 // training again: checkpointed
  if (!non_reentrant_form<Policy>()) CHECK(z.grad_fn()->name().find("CheckpointFunction") != std::string::npos);
  CHECK(log->of(actckpt::EventKind::forward_begin).size() == 1);
}

TEST_CASE_TEMPLATE("autocast: the recompute runs under the forward's state, whatever the caller's", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(8);
  std::vector<MlpBlock> layers;
  for (int i = 0; i < 2; ++i) layers.emplace_back(16, 32);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({4, 16}, test_device::options().requires_grad(true));

  actckpt::AutocastState bf16;
  bf16.cpu_enabled = true;
  bf16.cpu_dtype = torch::kBFloat16;
  const auto plain = actckpt::AutocastState::current();
  REQUIRE_FALSE(plain.cpu_enabled);

  SUBCASE("forward under bf16 autocast, backward outside it") {
    torch::Tensor ref_loss, loss;
    {
      actckpt::AutocastReplayGuard on(bf16);
      ref_loss = chain(layers, x).to(torch::kFloat).pow(2).sum();
    }
    ref_loss.backward();
    auto gx = x.grad().clone();
    x.mutable_grad().reset();
    auto g_ref = take_all_grads(layers);
    {
      actckpt::AutocastReplayGuard on(bf16);
      loss = chain(wrapped, x).to(torch::kFloat).pow(2).sum();
    }
    CHECK(test_models::bitwise_equal(loss, ref_loss));
    loss.backward();
    CHECK(test_models::bitwise_equal(x.grad(), gx));
    check_bitwise_equal(take_all_grads(layers), g_ref);
    CHECK_FALSE(actckpt::AutocastState::current().cpu_enabled);
  }
  SUBCASE("forward in float32, backward inside a bf16 autocast region") {
    auto ref_loss = chain(layers, x).pow(2).sum();
    {
      actckpt::AutocastReplayGuard on(bf16);  // same conditions for the reference's backward
      ref_loss.backward();
    }
    auto gx = x.grad().clone();
    x.mutable_grad().reset();
    auto g_ref = take_all_grads(layers);
    // The loss is built outside autocast, so only the recompute could see bf16.
    torch::Tensor loss;
    loss = chain(wrapped, x).pow(2).sum();
    {
      actckpt::AutocastReplayGuard on(bf16);
      loss.backward();
      CHECK(actckpt::AutocastState::current().cpu_enabled);  // the caller's state came back
    }
    CHECK(test_models::bitwise_equal(x.grad(), gx));
    check_bitwise_equal(take_all_grads(layers), g_ref);
  }
}

TEST_CASE_TEMPLATE("state-dict names are identical with and without the wrapper, and save/load works both ways", Policy, ACTCKPT_POLICIES) {
  using actckpt::models::TransformerBlock;
  torch::manual_seed(9);
  TransformerBlock block(16, 4, 32);
  block->to(test_device::device());
  Checkpointed<TransformerBlock, Policy> wrapped(block);
  auto plain_names = block->named_parameters().keys();
  CHECK(wrapped->named_parameters().keys() == plain_names);
  CHECK(wrapped->named_buffers().keys() == block->named_buffers().keys());

  // A model holding wrapped layers saves under the same names as one holding plain layers.
  torch::nn::Sequential plain_model(TransformerBlock(16, 4, 32), TransformerBlock(16, 4, 32));
  plain_model->to(test_device::device());
  torch::nn::Sequential wrapped_model(Checkpointed<TransformerBlock, Policy>(16, 4, 32),
                                      Checkpointed<TransformerBlock, Policy>(16, 4, 32));
  wrapped_model->to(test_device::device());
  CHECK(wrapped_model->named_parameters().keys() == plain_model->named_parameters().keys());

  std::stringstream archive;
  torch::save(wrapped_model, archive);
  torch::load(plain_model, archive);
  for (std::size_t i = 0; i < plain_model->parameters().size(); ++i)
    CHECK(test_models::bitwise_equal(plain_model->parameters()[i], wrapped_model->parameters()[i]));

  {
    torch::NoGradGuard no_grad;
    for (auto& p : plain_model->parameters()) p.add_(1.0);
  }
  std::stringstream back;
  torch::save(plain_model, back);
  torch::load(wrapped_model, back);
  for (std::size_t i = 0; i < plain_model->parameters().size(); ++i)
    CHECK(test_models::bitwise_equal(plain_model->parameters()[i], wrapped_model->parameters()[i]));
}

TEST_CASE_TEMPLATE("clone, to(dtype), parameters() and pretty_print behave as for the layer", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(10);
  MlpBlock block(4, 8);
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_label("original");
  CHECK(wrapped->parameters().size() == block->parameters().size());
  CHECK(wrapped->layer().get() == block.get());

  auto copy = std::dynamic_pointer_cast<typename Checkpointed<MlpBlock, Policy>::Impl>(wrapped->clone());
  REQUIRE(copy != nullptr);
  CHECK(copy->label() == "original");
  CHECK(copy->layer().get() != block.get());
  for (std::size_t i = 0; i < block->parameters().size(); ++i) {
    CHECK(test_models::bitwise_equal(copy->parameters()[i], block->parameters()[i]));
    CHECK(copy->parameters()[i].data_ptr() != block->parameters()[i].data_ptr());
    CHECK(copy->layer()->parameters()[i].data_ptr() == copy->parameters()[i].data_ptr());
  }

  wrapped->to(torch::kDouble);
  CHECK(block->fc1->weight.scalar_type() == torch::kDouble);
  auto x = torch::randn({2, 4}, test_device::options(torch::kDouble));
  wrapped(x).sum().backward();
  CHECK(block->fc1->weight.grad().scalar_type() == torch::kDouble);

  std::ostringstream printed;
  printed << *wrapped;
  CHECK(printed.str().find("actckpt::Checkpointed<") != std::string::npos);
}

TEST_CASE_TEMPLATE("torch::nn::Sequential as the layer, and Checkpointed inside a Sequential", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(11);
  torch::nn::Sequential seq(torch::nn::Linear(6, 12), torch::nn::GELU(), torch::nn::Dropout(0.3), torch::nn::Linear(12, 6));
  seq->to(test_device::device());
  Checkpointed<torch::nn::Sequential, Policy> wrapped(seq);
  CHECK(wrapped->named_parameters().keys() == seq->named_parameters().keys());
  auto x = torch::randn({4, 6}, test_device::options().requires_grad(true));
  torch::manual_seed(5);
  seq->forward(x).sum().backward();
  auto g_ref = take_grads(*seq);
  torch::manual_seed(5);
  wrapped(x).sum().backward();
  check_bitwise_equal(take_grads(*seq), g_ref);

  MlpBlock inner(6, 12);
  torch::nn::Sequential outer(torch::nn::Linear(6, 6), Checkpointed<MlpBlock, Policy>(inner), torch::nn::Linear(6, 6));
  outer->to(test_device::device());
  auto y = outer->forward(x);
  y.sum().backward();
  CHECK(inner->fc1->weight.grad().defined());
}

TEST_CASE("in-place construction builds the layer from its constructor arguments") {
  Checkpointed<MlpBlock, AsyncOffload> built(4, 8, 0.1);
  CHECK(built->layer()->fc1->weight.size(0) == 8);
  CHECK(built->stash_options().mode == actckpt::StashMode::async_host);
  CHECK(built->stash_options().keep_on_device == 1);
  Checkpointed<MlpBlock, NoOffload> classic(4, 8);
  CHECK(classic->stash_options().mode == actckpt::StashMode::device);
  Checkpointed<MlpBlock, SyncOffload> sync(4, 8);
  CHECK(sync->stash_options().mode == actckpt::StashMode::sync_host);
}

TEST_CASE("compile-time contract: concepts accept layers and policies and reject the rest" * test_device::no_tensors()) {
  static_assert(actckpt::CheckpointableLayer<MlpBlock>);
  static_assert(actckpt::CheckpointableLayer<MaskedBlock>);
  static_assert(actckpt::CheckpointableLayer<TwoOutputBlock>);
  static_assert(actckpt::CheckpointableLayer<torch::nn::Sequential>);
  static_assert(actckpt::CheckpointableLayer<actckpt::models::TransformerBlock>);
  static_assert(!actckpt::CheckpointableLayer<int>);
  static_assert(!actckpt::CheckpointableLayer<MlpBlockImpl>);  // an Impl, not a holder
  static_assert(actckpt::OffloadPolicy<NoOffload> && actckpt::OffloadPolicy<SyncOffload> &&
                actckpt::OffloadPolicy<AsyncOffload>);
  static_assert(!actckpt::OffloadPolicy<int>);
  CHECK(std::string(AsyncOffload::name) == "AsyncOffload");
}
