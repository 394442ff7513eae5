// Layers whose forward has default arguments: the wrapped layer takes the same short calls as the
// layer itself, directly (`wrapped(x)`) and inside torch::nn::Sequential (LibTorch's
// FORWARD_HAS_DEFAULT_ARGS), with outputs and gradients bitwise equal to the unwrapped layer's.
// LibTorch's own modules with defaults are the main subjects; two small user layers cover a
// non-tensor default and a layer that declares no FORWARD_HAS_DEFAULT_ARGS.

#include "test_models.hpp"

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::NoOffload;
using actckpt::SyncOffload;
using torch::Tensor;

#define ACTCKPT_POLICIES NoOffload, SyncOffload, AsyncOffload

namespace {

/// A forward with a non-tensor and an optional-tensor default, declared to LibTorch.
struct ScaledBlockImpl : torch::nn::Module {
  explicit ScaledBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  Tensor forward(const Tensor& x, double scale = 2.0, c10::optional<Tensor> shift = c10::nullopt) {
    auto y = torch::tanh(fc(x)) * scale;
    return shift ? y + *shift : y;
  }
  torch::nn::Linear fc{nullptr};

 protected:
  FORWARD_HAS_DEFAULT_ARGS({1, torch::nn::AnyValue(2.0)}, {2, torch::nn::AnyValue(c10::optional<Tensor>())})
};
TORCH_MODULE(ScaledBlock);

/// The same forward with C++ defaults only: no FORWARD_HAS_DEFAULT_ARGS.
struct UndeclaredDefaultsBlockImpl : torch::nn::Module {
  explicit UndeclaredDefaultsBlockImpl(int64_t dim) { fc = register_module("fc", torch::nn::Linear(dim, dim)); to(test_device::device()); }
  Tensor forward(const Tensor& x, double scale = 2.0) { return torch::tanh(fc(x)) * scale; }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(UndeclaredDefaultsBlock);

/// A loss over every floating-point tensor in a forward result (tuples, nested tuples).
template <class R>
Tensor loss_of(R& result) {
  Tensor loss = torch::zeros({}, test_device::options());
  actckpt::detail::for_each_result_tensor(result, [&](Tensor& t) {
    if (t.defined() && t.is_floating_point()) loss = loss + t.pow(2).sum();
  });
  return loss;
}

/// The first tensor of a forward result.
template <class R>
Tensor first_tensor(R& result) {
  Tensor first;
  actckpt::detail::for_each_result_tensor(result, [&](Tensor& t) {
    if (!first.defined()) first = t;
  });
  return first;
}

/// Runs `call(module)` on `layer` and on `layer` wrapped in Checkpointed<Layer, Policy> (the two
/// share parameters), each from the same RNG seed, then backward. The wrapped call must be
/// checkpointed, and its loss, input gradients and parameter gradients bitwise equal the
/// layer's. `inputs` are the tensors the call reads that require grad.
template <class Policy, class Layer, class Call>
void check_short_call_parity(Layer layer, const std::vector<Tensor>& inputs, Call call) {
  IsolatedOffload iso;
  Checkpointed<Layer, Policy> wrapped(layer);
  wrapped->set_offload_context(iso.context);
  auto run = [&](auto& module, bool expect_checkpointed) {
    torch::manual_seed(7);
    auto log = std::make_shared<EventLog>();
    auto result = [&] {
      actckpt::ObserverScope scope(log);
      return call(module);
    }();
    if (expect_checkpointed) {
      auto first = first_tensor(result);
      REQUIRE(first.grad_fn() != nullptr);
      // Checkpointed: the layer announced its checkpointed forward; in the reentrant form the
      // output also comes out of the checkpoint's autograd function.
      CHECK(log->of(actckpt::EventKind::forward_begin).size() == 1);
      if (!non_reentrant_form<Policy>())
        CHECK(first.grad_fn()->name().find("CheckpointFunction") != std::string::npos);
    }
    auto loss = loss_of(result);
    loss.backward();
    std::vector<Tensor> grads;
    for (const auto& x : inputs) {
      grads.push_back(x.grad().clone());
      x.mutable_grad().reset();
    }
    for (auto& g : take_grads(*layer)) grads.push_back(g);
    return std::pair{loss.detach(), grads};
  };
  auto [loss_ref, grads_ref] = run(layer, false);
  auto [loss, grads] = run(wrapped, true);
  CHECK(bitwise_equal(loss, loss_ref));
  check_bitwise_equal(grads, grads_ref);
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

/// `call` run on `module` placed alone in a torch::nn::Sequential: AnyModule fills in the
/// defaults through FORWARD_HAS_DEFAULT_ARGS.
template <class R, class... A>
auto in_sequential(A&... args) {
  return [&args...](auto& module) {
    torch::nn::Sequential sequential(module);
    return sequential->template forward<R>(args...);
  };
}

}  // namespace

TEST_CASE_TEMPLATE("MultiheadAttention: query, key, value only (4 defaults), direct and in Sequential", Policy,
                   ACTCKPT_POLICIES) {
  torch::manual_seed(0);
  torch::nn::MultiheadAttention attention(torch::nn::MultiheadAttentionOptions(16, 4).dropout(0.1));
  attention->to(test_device::device());
  auto q = leaf({5, 2, 16}), k = leaf({6, 2, 16}), v = leaf({6, 2, 16});
  SUBCASE("direct, three arguments") {
    check_short_call_parity<Policy>(attention, {q, k, v}, [&](auto& m) { return m(q, k, v); });
  }
  SUBCASE("direct, five of seven arguments (no weights returned)") {
    auto mask = torch::zeros({2, 6}, test_device::options(torch::kBool));
    mask.index_put_({1, 5}, true);
    check_short_call_parity<Policy>(attention, {q, k, v}, [&](auto& m) { return m(q, k, v, mask, false); });
  }
  SUBCASE("in Sequential") {
    check_short_call_parity<Policy>(attention, {q, k, v}, in_sequential<std::tuple<Tensor, Tensor>>(q, k, v));
  }
}

TEST_CASE_TEMPLATE("TransformerEncoderLayer with dropout: src only, direct and in Sequential", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(1);
  torch::nn::TransformerEncoderLayer layer(torch::nn::TransformerEncoderLayerOptions(16, 4).dim_feedforward(32).dropout(0.2));
  layer->to(test_device::device());
  auto src = leaf({5, 2, 16});
  SUBCASE("direct") { check_short_call_parity<Policy>(layer, {src}, [&](auto& m) { return m(src); }); }
  SUBCASE("in Sequential") { check_short_call_parity<Policy>(layer, {src}, in_sequential<Tensor>(src)); }
}

TEST_CASE_TEMPLATE("TransformerDecoderLayer with dropout: tgt and memory only, direct and in Sequential", Policy,
                   ACTCKPT_POLICIES) {
  torch::manual_seed(2);
  torch::nn::TransformerDecoderLayer layer(torch::nn::TransformerDecoderLayerOptions(16, 4).dim_feedforward(32).dropout(0.2));
  layer->to(test_device::device());
  auto tgt = leaf({4, 2, 16}), memory = leaf({6, 2, 16});
  SUBCASE("direct") { check_short_call_parity<Policy>(layer, {tgt, memory}, [&](auto& m) { return m(tgt, memory); }); }
  SUBCASE("in Sequential") { check_short_call_parity<Policy>(layer, {tgt, memory}, in_sequential<Tensor>(tgt, memory)); }
}

TEST_CASE_TEMPLATE("GRU, LSTM and GRUCell without an initial hidden state, direct and in Sequential", Policy,
                   ACTCKPT_POLICIES) {
  torch::manual_seed(3);
  auto x = leaf({5, 2, 8});
  SUBCASE("GRU") {
    torch::nn::GRU gru(torch::nn::GRUOptions(8, 16).num_layers(2));
    gru->to(test_device::device());
    check_short_call_parity<Policy>(gru, {x}, [&](auto& m) { return m(x); });
    check_short_call_parity<Policy>(gru, {x}, in_sequential<std::tuple<Tensor, Tensor>>(x));
  }
  SUBCASE("LSTM: the optional (h, c) pair left out; a nested tuple comes back") {
    torch::nn::LSTM lstm(torch::nn::LSTMOptions(8, 16));
    lstm->to(test_device::device());
    check_short_call_parity<Policy>(lstm, {x}, [&](auto& m) { return m(x); });
    check_short_call_parity<Policy>(lstm, {x}, in_sequential<std::tuple<Tensor, std::tuple<Tensor, Tensor>>>(x));
  }
  SUBCASE("GRUCell") {
    torch::nn::GRUCell cell(8, 16);
    cell->to(test_device::device());
    auto step = leaf({2, 8});
    check_short_call_parity<Policy>(cell, {step}, [&](auto& m) { return m(step); });
    check_short_call_parity<Policy>(cell, {step}, in_sequential<Tensor>(step));
  }
}

TEST_CASE_TEMPLATE("a user layer's non-tensor and optional-tensor defaults apply in forward and recompute", Policy,
                   ACTCKPT_POLICIES) {
  torch::manual_seed(4);
  ScaledBlock block(8);
  auto x = leaf({3, 8});
  auto shift = leaf({3, 8});
  check_short_call_parity<Policy>(block, {x}, [&](auto& m) { return m(x); });
  check_short_call_parity<Policy>(block, {x}, [&](auto& m) { return m(x, 0.5); });
  check_short_call_parity<Policy>(block, {x, shift}, [&](auto& m) { return m(x, 0.5, c10::optional<Tensor>(shift)); });
  check_short_call_parity<Policy>(block, {x}, in_sequential<Tensor>(x));
  // The default (2.0) was used, not a value-initialized double: the result is not tanh(fc(x)).
  Checkpointed<ScaledBlock, Policy> wrapped(block);
  CHECK(torch::allclose(wrapped(x), 2.0 * torch::tanh(block->fc(x))));
}

TEST_CASE("short calls: a layer without FORWARD_HAS_DEFAULT_ARGS, and too few arguments in Sequential") {
  torch::manual_seed(5);
  auto x = leaf({3, 8});
  SUBCASE("C++ defaults alone serve a direct call; Sequential's error says what to declare") {
    UndeclaredDefaultsBlock block(8);
    check_short_call_parity<NoOffload>(block, {x}, [&](auto& m) { return m(x); });
    torch::nn::Sequential sequential{Checkpointed<UndeclaredDefaultsBlock>(block)};
    CHECK_THROWS_WITH_AS(sequential->forward(x), doctest::Contains("FORWARD_HAS_DEFAULT_ARGS"), c10::Error);
  }
  SUBCASE("fewer than the required arguments: LibTorch's count error, nothing stashed") {
    IsolatedOffload iso;
    Checkpointed<torch::nn::MultiheadAttention> wrapped(torch::nn::MultiheadAttention(8, 2));
    wrapped->to(test_device::device());
    wrapped->set_offload_context(iso.context);
    torch::nn::Sequential sequential(wrapped);
    CHECK_THROWS_WITH_AS((sequential->forward<std::tuple<Tensor, Tensor>>(x)), doctest::Contains("at least 3 argument"),
                         c10::Error);
    CHECK(iso.context->stack().size() == 0);
    CHECK(iso.pool->stats().live_bytes == 0);
  }
}
