// Non-owning arguments (at::IntArrayRef, optionals of it, c10::OptionalArrayRef, string views,
// std::span): the recompute in backward must not read the caller's memory, which is gone by then.
// Each case calls the wrapped layer with an argument viewing a heap array, then overwrites the
// array with other valid values and frees it before backward: a record that kept the view would
// recompute with other values (different gradients, or an error) and, under ASan (the asan
// preset runs this file), read freed memory. Gradients must be bitwise those of the unwrapped
// layer called with the original values, under every policy.

#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "test_models.hpp"

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::NoOffload;
using actckpt::SyncOffload;
using torch::Tensor;

#define ACTCKPT_POLICIES NoOffload, SyncOffload, AsyncOffload

namespace {

/// Sums over the listed dims, scaled per dim: `c10::ArrayRef<int64_t>` and `c10::ArrayRef<double>`.
struct DimSumImpl : torch::nn::Module {
  DimSumImpl() { fc = register_module("fc", torch::nn::Linear(6, 6)); to(test_device::device()); }
  // The views are read before the last op that saves a tensor (tanh saves its output), so the
  // non-reentrant form's recompute, which stops at the last saved tensor, reads them too: a stale
  // view would change what the recompute saves and so the gradients.
  Tensor forward(const Tensor& x, at::IntArrayRef dims, c10::ArrayRef<double> scales) {
    auto y = fc(x);
    for (std::size_t i = 0; i < scales.size(); ++i) y = y * scales[i];
    return torch::tanh(y.sum(dims));
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(DimSum);

/// Reshapes to an optional shape: `c10::OptionalArrayRef<int64_t>` and `c10::optional<IntArrayRef>`.
struct OptionalShapeImpl : torch::nn::Module {
  OptionalShapeImpl() { fc = register_module("fc", torch::nn::Linear(6, 6)); to(test_device::device()); }
  Tensor forward(const Tensor& x, c10::OptionalArrayRef<int64_t> shape, const c10::optional<at::IntArrayRef>& flip) {
    auto y = torch::sigmoid(fc(x));
    if (shape.has_value()) y = y.reshape(*shape);
    if (flip.has_value()) y = y.flip(*flip);
    return y * torch::arange(y.size(-1), y.options());
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(OptionalShape);

/// Picks its activation by name: `std::string_view`, `c10::string_view`, `std::optional<std::string_view>`.
struct NamedActivationImpl : torch::nn::Module {
  NamedActivationImpl() { fc = register_module("fc", torch::nn::Linear(6, 6)); to(test_device::device()); }
  static Tensor activate(const Tensor& y, std::string_view name) {
    if (name == "tanh") return torch::tanh(y);
    if (name == "gelu") return torch::gelu(y);
    TORCH_CHECK(name == "sigmoid", "unknown activation '", std::string(name), "'");
    return torch::sigmoid(y);
  }
  Tensor forward(const Tensor& x, std::string_view first, c10::string_view second,
                 std::optional<std::string_view> third) {
    auto y = activate(fc(x), first);
    y = activate(y * 1.5, std::string_view(second.data(), second.size()));
    return third ? activate(y - 0.25, *third) : y;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(NamedActivation);

/// Weights each feature: `std::span<const float>`.
struct SpanWeightsImpl : torch::nn::Module {
  SpanWeightsImpl() { fc = register_module("fc", torch::nn::Linear(6, 6)); to(test_device::device()); }
  Tensor forward(const Tensor& x, std::span<const float> weights) {
    auto w = torch::tensor(std::vector<float>(weights.begin(), weights.end())).to(x.device());
    return torch::tanh(fc(x)) * w;
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(SpanWeights);

/// A view type of the user's own, which actckpt is taught to own through argument_storage.
struct IndexView {
  const int64_t* ptr = nullptr;
  std::size_t count = 0;
  const int64_t* data() const { return ptr; }
  std::size_t size() const { return count; }
};
struct IndexSelectImpl : torch::nn::Module {
  IndexSelectImpl() { fc = register_module("fc", torch::nn::Linear(6, 6)); to(test_device::device()); }
  Tensor forward(const Tensor& x, IndexView rows) {
    auto index = torch::tensor(std::vector<int64_t>(rows.ptr, rows.ptr + rows.count)).to(x.device());
    return torch::tanh(fc(x)).index_select(0, index);
  }
  torch::nn::Linear fc{nullptr};
};
TORCH_MODULE(IndexSelect);

}  // namespace

template <>
struct actckpt::argument_storage<IndexView> {
  using stored_type = std::vector<int64_t>;
  static stored_type store(const IndexView& v) { return stored_type(v.ptr, v.ptr + v.count); }
  static IndexView view(const stored_type& s) { return IndexView{s.data(), s.size()}; }
};

namespace {

/// Runs `call(module)` on the layer and on the layer wrapped in Checkpointed<Layer, Policy>, each
/// from the same seed. `call` makes its view arguments from heap memory it overwrites and frees
/// (through `spoil`) before it returns; only then does backward run. The wrapped call must be
/// checkpointed, and its output, input gradient and parameter gradients bitwise equal the layer's.
template <class Policy, class Layer, class Call>
void check_views_outlive_the_call(Layer layer, const Tensor& x, Call call) {
  IsolatedOffload iso;
  Checkpointed<Layer, Policy> wrapped(layer);
  wrapped->set_offload_context(iso.context);
  auto run = [&](auto& module, bool expect_checkpointed) {
    torch::manual_seed(7);
    auto log = std::make_shared<EventLog>();
    Tensor y = [&] {
      actckpt::ObserverScope scope(log);
      return call(module);
    }();
    if (expect_checkpointed) {
      REQUIRE(y.grad_fn() != nullptr);
      // Checkpointed: the layer announced its checkpointed forward; in the reentrant form the
      // output also comes out of the checkpoint's autograd function.
      CHECK(log->of(actckpt::EventKind::forward_begin).size() == 1);
      if (!non_reentrant_form<Policy>())
        CHECK(y.grad_fn()->name().find("CheckpointFunction") != std::string::npos);
    }
    y.pow(2).sum().backward();
    std::vector<Tensor> grads{y.detach(), x.grad().clone()};
    x.mutable_grad().reset();
    for (auto& g : take_grads(*layer)) grads.push_back(g);
    return grads;
  };
  const auto expected = run(layer, false);
  const auto got = run(wrapped, true);
  check_bitwise_equal(got, expected);
  CHECK(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

/// A heap copy of `values`; `spoil` fills it with `other` (valid values a stale view would pick up)
/// and frees it.
template <class T>
struct HeapArray {
  explicit HeapArray(std::vector<T> values) : data(std::make_unique<std::vector<T>>(std::move(values))) {}
  void spoil(const T& other) {
    std::fill(data->begin(), data->end(), other);
    data.reset();
  }
  std::unique_ptr<std::vector<T>> data;
};

}  // namespace

TEST_CASE_TEMPLATE("ConvTranspose2d with an explicit output_size (optional<IntArrayRef>) freed after the call",
                   Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(1);
  torch::nn::ConvTranspose2d deconv(torch::nn::ConvTranspose2dOptions(3, 4, 3).stride(2));
  deconv->to(test_device::device());
  const auto x = leaf({2, 3, 7, 7});
  check_views_outlive_the_call<Policy>(deconv, x, [&](auto& module) {
    HeapArray<int64_t> size({16, 16});  // 15 x 15 without output_size
    Tensor y = module(x, c10::optional<at::IntArrayRef>(*size.data));
    CHECK(y.sizes() == at::IntArrayRef({2, 4, 16, 16}));
    size.spoil(15);  // still a valid output size: a stale view would recompute 15 x 15 silently
    return y;
  });
}

TEST_CASE_TEMPLATE("IntArrayRef and ArrayRef<double> arguments freed after the call", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(2);
  DimSum layer;
  const auto x = leaf({3, 4, 6});
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    HeapArray<int64_t> dims({0, 2});
    HeapArray<double> scales({0.5, 3.0});
    Tensor y = module(x, at::IntArrayRef(*dims.data), c10::ArrayRef<double>(*scales.data));
    dims.spoil(1);
    scales.spoil(-2.0);
    return y;
  });
}

TEST_CASE_TEMPLATE("OptionalArrayRef and optional<IntArrayRef> arguments freed after the call, set and empty",
                   Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(3);
  OptionalShape layer;
  const auto x = leaf({4, 6});
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    HeapArray<int64_t> shape({3, 8});
    HeapArray<int64_t> flip({1});
    Tensor y = module(x, c10::OptionalArrayRef<int64_t>(at::IntArrayRef(*shape.data)),
                      c10::optional<at::IntArrayRef>(*flip.data));
    shape.spoil(2);  // [2, 2] fails the reshape, a stale [8, 3] would not
    flip.spoil(0);
    return y;
  });
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    return module(x, c10::OptionalArrayRef<int64_t>(), c10::optional<at::IntArrayRef>());
  });
}

TEST_CASE_TEMPLATE("std::string_view, c10::string_view and optional<string_view> arguments freed after the call",
                   Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(4);
  NamedActivation layer;
  const auto x = leaf({3, 6});
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    // The strings live on the heap (make_unique) and are freed before backward.
    auto first = std::make_unique<std::string>("tanh");
    auto second = std::make_unique<std::string>("gelu");
    auto third = std::make_unique<std::string>("sigmoid");
    Tensor y = module(x, std::string_view(*first), c10::string_view(second->data(), second->size()),
                      std::optional<std::string_view>(*third));
    *first = "gelu";  // other valid names: a stale view recomputes another function silently
    *second = "tanh";
    third->assign("tanh");
    first.reset();
    second.reset();
    third.reset();
    return y;
  });
}

TEST_CASE_TEMPLATE("std::span<const float> argument freed after the call", Policy, ACTCKPT_POLICIES) {
  torch::manual_seed(5);
  SpanWeights layer;
  const auto x = leaf({3, 6});
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    HeapArray<float> weights({0.5f, 1.0f, 1.5f, 2.0f, 2.5f, 3.0f});
    Tensor y = module(x, std::span<const float>(*weights.data));
    weights.spoil(-1.0f);
    return y;
  });
}

TEST_CASE_TEMPLATE("a user view type taught to actckpt through argument_storage is owned too", Policy,
                   ACTCKPT_POLICIES) {
  torch::manual_seed(6);
  IndexSelect layer;
  const auto x = leaf({5, 6});
  check_views_outlive_the_call<Policy>(layer, x, [&](auto& module) {
    HeapArray<int64_t> rows({4, 0, 2});
    Tensor y = module(x, IndexView{rows.data->data(), rows.data->size()});
    rows.spoil(1);
    return y;
  });
}

TEST_CASE("argument storage: what each view is kept as, and which types are refused" * test_device::no_tensors()) {
  using actckpt::stored_argument_t;
  CHECK(std::is_same_v<stored_argument_t<at::IntArrayRef>, std::vector<int64_t>>);
  CHECK(std::is_same_v<stored_argument_t<const c10::optional<at::IntArrayRef>&>, std::optional<std::vector<int64_t>>>);
  CHECK(std::is_same_v<stored_argument_t<c10::OptionalArrayRef<int64_t>>, std::optional<std::vector<int64_t>>>);
  CHECK(std::is_same_v<stored_argument_t<std::string_view>, std::string>);
  CHECK(std::is_same_v<stored_argument_t<c10::string_view>, std::string>);
  CHECK(std::is_same_v<stored_argument_t<std::span<const float>>, std::vector<float>>);
  CHECK(std::is_same_v<stored_argument_t<c10::ArrayRef<bool>>, c10::SmallVector<bool, 8>>);
  // Owning types are kept as copies, tensors as themselves.
  CHECK(std::is_same_v<stored_argument_t<const std::string&>, std::string>);
  CHECK(std::is_same_v<stored_argument_t<c10::optional<int64_t>>, c10::optional<int64_t>>);
  CHECK(std::is_same_v<stored_argument_t<std::array<int64_t, 2>>, std::array<int64_t, 2>>);
  CHECK(std::is_same_v<stored_argument_t<const Tensor&>, Tensor>);
  // Refused (each has a compile-fail case with its message in tests/compile_fail).
  using actckpt::detail::argument_supported;
  CHECK_FALSE(argument_supported<const float*>());
  CHECK_FALSE(argument_supported<const char*>());
  CHECK_FALSE(argument_supported<at::TensorList>());
  CHECK_FALSE(argument_supported<std::span<float>>());
  CHECK_FALSE(argument_supported<int64_t&>());
  CHECK_FALSE(argument_supported<std::reference_wrapper<const int>>());
  struct ForeignView {
    const char* p;
    std::size_t n;
    const char* data() const { return p; }
  };
  CHECK_FALSE(argument_supported<ForeignView>());
  // Optionals are judged by what they hold, containers by their elements.
  CHECK_FALSE(argument_supported<c10::optional<at::TensorList>>());
  CHECK_FALSE(argument_supported<std::vector<at::IntArrayRef>>());
  CHECK_FALSE(argument_supported<std::pair<int64_t, const char*>>());
  CHECK(argument_supported<std::optional<std::string_view>>());
  CHECK(argument_supported<std::vector<std::vector<int64_t>>>());
  CHECK(argument_supported<std::tuple<int64_t, std::string, std::array<double, 2>>>());
  CHECK(argument_supported<Tensor&&>());
  CHECK(argument_supported<void (*)(int)>());
  CHECK(argument_supported<IndexView>());  // taught above
}
