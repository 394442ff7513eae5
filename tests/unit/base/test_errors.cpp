// actckpt's exception types (errors.hpp): each raised where it should be, caught as its own type,
// as actckpt::Error and as std::exception, its data right, its what() the message without a C++
// backtrace. Errors raised during backward pass through LibTorch's autograd engine, in both
// checkpoint forms (this file runs as unit.test_errors and unit.test_errors.reentrant): their
// type and data must survive that, as must a layer's own exception type.

#include "test_models.hpp"

#include <atomic>

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::NoOffload;
using actckpt::SyncOffload;

#define ERROR_POLICIES NoOffload, SyncOffload, AsyncOffload

namespace {

/// Catches what `f` throws as E; fails the check (and returns nullopt) if it throws anything else
/// or nothing. E's object is copied out, so its data can be checked after the throw.
template <class E, class F>
std::optional<E> caught_as(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e;
  } catch (const std::exception& e) {
    FAIL_CHECK("threw another type: ", e.what());
    return std::nullopt;
  }
  FAIL_CHECK("threw nothing");
  return std::nullopt;
}

/// The common contract: an actckpt::Error and a std::exception, the message alone.
void check_common(const actckpt::Error& e) {
  const std::string what = e.what();
  CAPTURE(what);
  CHECK(dynamic_cast<const std::exception*>(&e) != nullptr);
  CHECK(what.rfind("actckpt", 0) == 0);  // starts with the message, nothing before it
  CHECK(what.find("Exception raised from") == std::string::npos);  // c10::Error's backtrace header
  CHECK(what.find("frame #") == std::string::npos);
}

/// A layer's own exception type, thrown from its forward or its recompute.
struct LayerFailure : std::runtime_error {
  explicit LayerFailure(int c) : std::runtime_error("layer failure"), code(c) {}
  int code;
};
struct ThrowingBlockImpl : torch::nn::Module {
  explicit ThrowingBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    const bool recomputing = actckpt::recomputing();
    if (!recomputing && fail_forward) throw LayerFailure(1);
    if (recomputing && fail_recompute) throw LayerFailure(2);
    return torch::relu(fc(x));
  }
  torch::nn::Linear fc{nullptr};
  bool fail_forward = false, fail_recompute = false;
};
TORCH_MODULE(ThrowingBlock);

}  // namespace

TEST_CASE("errors: the types form one hierarchy under actckpt::Error and std::exception" * test_device::no_tensors()) {
  static_assert(std::is_base_of_v<std::runtime_error, actckpt::Error>);
  static_assert(std::is_base_of_v<actckpt::Error, actckpt::UsageError>);
  static_assert(std::is_base_of_v<actckpt::Error, actckpt::InfeasibleBudget>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::StashConsumed>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::HostPoolExhausted>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::RecomputeMismatch>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::InputMutated>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::StashCorrupted>);
  static_assert(std::is_base_of_v<actckpt::LayerError, actckpt::OffloadFailed>);
  static_assert(std::is_base_of_v<actckpt::Error, actckpt::DistributedError>);
  // Not LibTorch's: a `catch (const c10::Error&)` written for LibTorch's own errors does not
  // swallow actckpt's by accident.
  static_assert(!std::is_base_of_v<c10::Error, actckpt::Error>);
  try {
    throw actckpt::InfeasibleBudget("actckpt: test", 10, 20);
  } catch (const std::exception& e) {
    CHECK(std::string(e.what()) == "actckpt: test");
  }
}

TEST_CASE("errors: InfeasibleBudget carries the budget asked and the smallest feasible one" * test_device::no_tensors()) {
  // A synthetic chain of two layers: keeping one costs 100 bytes, checkpointing it 10.
  actckpt::StepProfile p;
  p.start_bytes = 1000;
  p.head_peak_bytes = 1000;
  p.tail_peak_bytes = 5;
  for (std::size_t i = 0; i < 2; ++i) {
    actckpt::LayerProfile l;
    l.label = "blocks." + std::to_string(i);
    l.module_index = i;
    l.stash_bytes = 10;
    l.held_bytes[0] = 100;
    l.held_bytes[1] = l.held_bytes[2] = 10;
    l.forward_peak_bytes[0] = l.forward_peak_bytes[1] = l.forward_peak_bytes[2] = 100;
    l.backward_peak_bytes[0] = l.backward_peak_bytes[1] = l.backward_peak_bytes[2] = 100;
    l.forward_ms[0] = l.forward_ms[1] = l.forward_ms[2] = 1;
    l.backward_ms[0] = l.backward_ms[1] = l.backward_ms[2] = 1;
    l.recompute_ms = 1;
    p.layers.push_back(l);
  }
  p.step_ms[0] = p.step_ms[1] = p.step_ms[2] = 4;
  const auto floor = actckpt::smallest_feasible_budget(p);
  REQUIRE(floor > p.start_bytes);
  const auto e = caught_as<actckpt::InfeasibleBudget>([&] { actckpt::plan_for_budget(p, floor - 1); });
  REQUIRE(e);
  check_common(*e);
  CHECK(e->budget_bytes() == floor - 1);
  CHECK(e->smallest_feasible_budget() == floor);
  CHECK(std::string(e->what()).find("(" + std::to_string(floor) + " bytes)") != std::string::npos);
  // What a program does with it: plan again at the floor.
  CHECK(actckpt::plan_for_budget(p, e->smallest_feasible_budget()).predicted_peak_bytes <= floor);
  // Bad arguments are UsageErrors.
  const auto bad = caught_as<actckpt::UsageError>([&] { actckpt::plan_for_budget(p, 0); });
  REQUIRE(bad);
  check_common(*bad);
  CHECK(std::string(bad->what()).find("budget must be positive") != std::string::npos);
}

TEST_CASE_TEMPLATE("errors: a recompute mismatch raised inside backward arrives typed, naming the layer", Policy,
                   ERROR_POLICIES) {
  IsolatedOffload iso;
  ChangingBlock block(4);
  Checkpointed<ChangingBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("changer");
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true));
  auto y = wrapped(x);
  const auto e = caught_as<actckpt::RecomputeMismatch>([&] { y.sum().backward(); });
  REQUIRE(e);
  check_common(*e);
  CHECK(e->layer() == "changer");
  CHECK(std::string(e->what()).find("recompute of checkpointed layer 'changer'") != std::string::npos);
  y = torch::Tensor();
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("errors: an input modified in place after the forward is InputMutated", Policy, ERROR_POLICIES) {
  IsolatedOffload iso;
  MlpBlock block(4, 8);
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("mutated");
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true));
  auto h = x * 2;  // not a leaf: may be modified in place
  auto y = wrapped(h);
  {
    torch::NoGradGuard no_grad;
    h.add_(1);
  }
  const auto e = caught_as<actckpt::InputMutated>([&] { y.sum().backward(); });
  REQUIRE(e);
  check_common(*e);
  CHECK(e->layer() == "mutated");
}

TEST_CASE("errors: a second backward through consumed stashes is StashConsumed (reentrant form)") {
  using Policy = actckpt::Reentrant<NoOffload>;
  MlpBlock block(4, 8);
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_label("once");
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true));
  auto loss = wrapped(x).sum();
  loss.backward({}, /*retain_graph=*/true);
  const auto e = caught_as<actckpt::StashConsumed>([&] { loss.backward(); });
  REQUIRE(e);
  check_common(*e);
  CHECK(e->layer() == "once");
  CHECK(std::string(e->what()).find("a second time") != std::string::npos);
}

TEST_CASE_TEMPLATE("errors: an exhausted host pool is HostPoolExhausted with the size, the limit and the layer", Policy,
                   actckpt::BasicSyncOffload<actckpt::PoolExhaustion::throw_error>,
                   actckpt::BasicAsyncOffload<1, 1024, actckpt::PoolExhaustion::throw_error>) {
  IsolatedOffload iso;
  iso.pool->set_limit(4096);
  std::vector<MlpBlock> blocks;
  for (int i = 0; i < 4; ++i) blocks.emplace_back(32, 64);
  std::vector<Checkpointed<MlpBlock, Policy>> wrapped;
  for (std::size_t i = 0; i < blocks.size(); ++i) {
    wrapped.emplace_back(blocks[i]);
    wrapped.back()->set_offload_context(iso.context);
    wrapped.back()->set_label("blocks." + std::to_string(i));
  }
  auto x = torch::randn({16, 32}, test_device::options());  // every stash is 16 x 32 floats: 2048 bytes
  const auto e = caught_as<actckpt::HostPoolExhausted>([&] { chain(wrapped, x); });
  REQUIRE(e);
  check_common(*e);
  CHECK(e->requested_bytes() == 2048);
  CHECK(e->limit_bytes() == 4096);
  CHECK(e->live_bytes() + e->requested_bytes() > e->limit_bytes());
  CHECK(e->layer().rfind("blocks.", 0) == 0);
  CHECK(std::string(e->what()).find("'" + e->layer() + "'") != std::string::npos);
  CHECK(std::string(e->what()).find("host buffer pool exhausted") != std::string::npos);
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("errors: a stash corrupted in host memory is StashCorrupted, raised inside backward" * test_device::cpu_only("the CPU copy worker's test hooks (fault injector, after-copy hook) are what this case drives; CUDA copies do not pass through them"), Policy,
                   SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  MlpBlock block(32, 64);
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("checked");
  auto options = wrapped->stash_options();
  options.verify_checksums = true;
  options.min_offload_bytes = 1;
  options.keep_on_device = 0;  // the only stash moves too
  wrapped->set_stash_options(options);
  auto corrupted = std::make_shared<std::atomic<int>>(0);
  iso.context->engine().set_after_copy_hook([corrupted](actckpt::CopyDirection d, torch::Tensor& dst) {
    if (d != actckpt::CopyDirection::device_to_host || corrupted->fetch_add(1) != 0) return;
    static_cast<unsigned char*>(dst.data_ptr())[5] ^= 0x40;
  });
  const auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto y = wrapped(x);
  const auto e = caught_as<actckpt::StashCorrupted>([&] { y.sum().backward(); });
  iso.context->engine().set_after_copy_hook(nullptr);
  REQUIRE(e);
  check_common(*e);
  CHECK(e->layer() == "checked");
  CHECK(corrupted->load() >= 1);
}

TEST_CASE_TEMPLATE("errors: a failed copy to or from host memory is OffloadFailed with the cause" * test_device::cpu_only("the CPU copy worker's fault injector is what this case drives; CUDA copies do not pass through it"), Policy, SyncOffload,
                   AsyncOffload) {
  IsolatedOffload iso;
  iso.context->engine().set_fault_injector([] { throw std::runtime_error("injected copy failure"); });
  MlpBlock block(32, 64);
  Checkpointed<MlpBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  wrapped->set_label("mover");
  auto options = wrapped->stash_options();
  options.min_offload_bytes = 1;
  options.keep_on_device = 0;
  wrapped->set_stash_options(options);
  const auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  // Sync: the forward waits for its copy and reports it; async: the backward that needs it.
  const auto e = caught_as<actckpt::OffloadFailed>([&] { wrapped(x).sum().backward(); });
  iso.context->engine().set_fault_injector(nullptr);
  REQUIRE(e);
  check_common(*e);
  CHECK(e->layer() == "mover");
  CHECK(std::string(e->what()).find("injected copy failure") != std::string::npos);
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("errors: a layer's own exception keeps its type, from its forward and from its recompute", Policy,
                   ERROR_POLICIES) {
  IsolatedOffload iso;
  ThrowingBlock block(4);
  Checkpointed<ThrowingBlock, Policy> wrapped(block);
  wrapped->set_offload_context(iso.context);
  auto x = torch::randn({3, 4}, test_device::options().requires_grad(true));
  block->fail_forward = true;
  const auto in_forward = caught_as<LayerFailure>([&] { wrapped(x); });
  REQUIRE(in_forward);
  CHECK(in_forward->code == 1);
  block->fail_forward = false;
  block->fail_recompute = true;
  auto y = wrapped(x);
  const auto in_backward = caught_as<LayerFailure>([&] { y.sum().backward(); });
  REQUIRE(in_backward);
  CHECK(in_backward->code == 2);
  y = torch::Tensor();
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("errors: wrong usage is a UsageError") {
  std::vector<MlpBlock> blocks{MlpBlock(4, 8), MlpBlock(4, 8)};
  const auto k0 = caught_as<actckpt::UsageError>([&] { actckpt::wrap_every<NoOffload>(blocks, 0); });
  REQUIRE(k0);
  check_common(*k0);
  CHECK(std::string(k0->what()).find("k must be at least 1") != std::string::npos);
  const auto empty = caught_as<actckpt::UsageError>([&] { Checkpointed<MlpBlock, NoOffload> w(MlpBlock(nullptr)); });
  REQUIRE(empty);
  check_common(*empty);
  torch::nn::Sequential seq(MlpBlock(4, 8));
  const auto segments = caught_as<actckpt::UsageError>(
      [&] { actckpt::checkpoint_sequential<NoOffload>(seq, 2, torch::randn({2, 4}, test_device::options())); });
  REQUIRE(segments);
  check_common(*segments);
}
