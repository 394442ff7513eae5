// core/dispatch.hpp and what it reads: the one dispatch both ways in share (Checkpointed and the
// functional form), the identity events carry (EventSource), and the nesting state that replaced
// the frames' dynamic_cast (core/detail/nesting.hpp).
#include <actckpt/actckpt.hpp>
#include <doctest/doctest.h>
#include <torch/torch.h>

#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "test_models.hpp"

using actckpt::EventKind;
using test_models::MlpBlock;

namespace {

/// Records each event's kind, label and layer identity.
struct IdentityLog : actckpt::Observer {
  struct Entry {
    EventKind kind;
    std::string label;
    const void* layer;
  };
  void on_event(const actckpt::Event& e) override {
    std::lock_guard<std::mutex> lock(mutex);
    entries.push_back({e.kind, std::string(e.label), e.layer});
  }
  std::vector<Entry> snapshot() {
    std::lock_guard<std::mutex> lock(mutex);
    return entries;
  }
  std::mutex mutex;
  std::vector<Entry> entries;
};

/// A policy that checkpoints nothing: StashOptions::checkpoint == false.
struct KeepEverything {
  static constexpr std::string_view name = "KeepEverything";
  static actckpt::StashOptions options() {
    auto o = actckpt::NoOffload::options();
    o.checkpoint = false;
    return o;
  }
};
static_assert(actckpt::OffloadPolicy<KeepEverything>);

/// Answers, from inside a layer's forward, what the nesting state says there.
struct ProbeImpl : torch::nn::Module {
  ProbeImpl() { fc = register_module("fc", torch::nn::Linear(8, 8)); to(test_device::device()); }
  torch::Tensor forward(torch::Tensor x) {
    if (!actckpt::recomputing()) {
      in_forward.push_back(actckpt::detail::in_checkpointed_forward());
      {
        // The user's own hooks opened on top: saved tensors go to them, not to the checkpoint.
        actckpt::SavedTensorHooks mine([](const at::Tensor& t) { return t; }, [](const at::Tensor& t) { return t; });
        under_own_hooks.push_back(actckpt::detail::in_checkpointed_forward());
      }
    } else {
      in_recompute.push_back(actckpt::detail::in_checkpointed_forward());
    }
    return torch::tanh(fc(x));
  }
  torch::nn::Linear fc{nullptr};
  std::vector<bool> in_forward, under_own_hooks, in_recompute;
};
TORCH_MODULE(Probe);

}  // namespace

TEST_CASE_TEMPLATE("dispatch: every event of a layer carries its identity, also where two layers share a label",
                   Policy, actckpt::NoOffload, actckpt::SyncOffload, actckpt::AsyncOffload, actckpt::SyncOffloadSaved) {
  torch::manual_seed(0);
  actckpt::Checkpointed<MlpBlock, Policy> a(MlpBlock(32, 64)), b(MlpBlock(32, 64));
  a->set_label("same");
  b->set_label("same");
  auto log = std::make_shared<IdentityLog>();
  {
    actckpt::ObserverScope scope(log);
    auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
    // Backward restores every stash, waiting for its copy, and a copy's completion callback
    // (offload_end) runs before its ticket finishes: every event is in by now.
    b(a(x)).sum().backward();
  }
  const void* ida = static_cast<const actckpt::CheckpointedLayer*>(a.get());
  const void* idb = static_cast<const actckpt::CheckpointedLayer*>(b.get());
  std::map<const void*, std::map<EventKind, int>> counts;
  for (const auto& e : log->snapshot()) {
    CAPTURE(actckpt::to_string(e.kind));
    CHECK(e.label == "same");
    CHECK((e.layer == ida || e.layer == idb));  // never null, never another layer's
    ++counts[e.layer][e.kind];
  }
  for (const void* id : {ida, idb}) {
    CHECK(counts[id][EventKind::forward_begin] == 1);
    CHECK(counts[id][EventKind::forward_end] == 1);
    CHECK(counts[id][EventKind::backward_begin] == 1);
  }
  if (Policy::options().mode != actckpt::StashMode::device) {
    // The copies' events (offload_end comes from the copy engine) name the layer too: at least
    // the first layer's stash moved.
    CHECK(counts[ida][EventKind::offload_begin] >= 1);
    CHECK(counts[ida][EventKind::offload_end] == counts[ida][EventKind::offload_begin]);
  }
}

TEST_CASE("dispatch: the functional form honours StashOptions::checkpoint == false (no recompute), and checkpoints "
          "otherwise") {
  torch::manual_seed(1);
  auto w = torch::randn({16, 16}, test_device::options().requires_grad(true));
  int calls = 0;
  auto fn = [&](const torch::Tensor& x) {
    ++calls;
    return torch::tanh(x.mm(w));
  };
  auto x = torch::randn({4, 16}, test_device::options().requires_grad(true));

  auto reference = fn(x).sum();
  auto grads = torch::autograd::grad({reference}, {x, w});
  calls = 0;

  auto kept = actckpt::checkpoint<KeepEverything>(fn, x).sum();
  auto kept_grads = torch::autograd::grad({kept}, {x, w});
  CHECK(calls == 1);  // ran once; backward used autograd's own saved tensors
  CHECK(test_models::bitwise_equal(kept_grads[0], grads[0]));
  CHECK(test_models::bitwise_equal(kept_grads[1], grads[1]));

  calls = 0;
  auto checkpointed = actckpt::checkpoint<actckpt::NoOffload>(fn, x).sum();
  auto checkpointed_grads = torch::autograd::grad({checkpointed}, {x, w});
  CHECK(calls == 2);  // forward, then the recompute in backward
  CHECK(test_models::bitwise_equal(checkpointed_grads[0], grads[0]));
  CHECK(test_models::bitwise_equal(checkpointed_grads[1], grads[1]));
}

TEST_CASE("dispatch: the nesting state says 'inside a checkpointed forward' exactly where its hooks are innermost") {
  Probe probe;
  actckpt::Checkpointed<Probe, actckpt::NoOffload> wrapped(probe);
  CHECK_FALSE(actckpt::detail::in_checkpointed_forward());
  auto x = torch::randn({4, 8}, test_device::options().requires_grad(true));
  auto y = wrapped(x).sum();
  CHECK_FALSE(actckpt::detail::in_checkpointed_forward());  // restored after the forward
  y.backward();
  REQUIRE(probe->in_forward.size() == 1);
  REQUIRE(probe->under_own_hooks.size() == 1);
  const bool non_reentrant =
      actckpt::resolve(actckpt::NoOffload::options().form) == actckpt::CheckpointForm::non_reentrant;
  // Non-reentrant: the forward runs under the checkpoint's slot hooks; the reentrant form opens
  // no hooks (its forward runs with grad mode off).
  CHECK(probe->in_forward[0] == non_reentrant);
  CHECK_FALSE(probe->under_own_hooks[0]);  // another scope on top: not the checkpoint's
  REQUIRE(probe->in_recompute.size() == 1);
  CHECK_FALSE(probe->in_recompute[0]);  // the recompute's own hooks are innermost
}
