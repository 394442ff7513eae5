// The functional form (wrap/functional.hpp), non-reentrant under every policy: checkpoint() of a
// callable capturing tensors, checkpoint_sequential() over segments, and the refusal of an
// explicit reentrant policy. CPU float32, bitwise against the plain call.

#include "test_models.hpp"

using namespace test_models;
using actckpt::NonReentrant;
using actckpt::Reentrant;

TEST_CASE_TEMPLATE("functional: checkpoint(lambda capturing tensors, args...) matches the plain call", Policy,
                   NR_POLICIES) {
  torch::manual_seed(22);
  auto w1 = torch::randn({16, 32}, test_device::options().requires_grad(true));
  auto w2 = torch::randn({32, 16}, test_device::options().requires_grad(true));
  auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
  auto scale = torch::randn({16}, test_device::options().requires_grad(true));
  auto fn = [&](const torch::Tensor& in, double alpha, const std::vector<torch::Tensor>& extra) {
    auto h = torch::gelu(in.mm(w1));  // w1, w2 captured by reference
    return std::make_tuple(h.mm(w2) * alpha + in * extra[0], h.sum(-1), std::string("tag"));
  };
  const std::vector<torch::Tensor> all{x, w1, w2, scale};
  auto [ra, rb, rs] = fn(x, 0.5, {scale});
  (ra.pow(2).sum() + rb.sum()).backward();
  auto ref = take_grads(all);
  IsolatedOffload iso;
  actckpt::OffloadContextScope context(iso.context);
  auto [a, b, s] = actckpt::checkpoint<Policy>(fn, x, 0.5, std::vector<torch::Tensor>{scale});
  CHECK(s == "tag");
  CHECK(bitwise_equal(a, ra));
  (a.pow(2).sum() + b.sum()).backward();
  auto got = take_grads(all);
  for (const auto& g : got) REQUIRE(g.defined());
  check_bitwise_equal(got, ref);
  CHECK(iso.pool->stats().live_bytes == 0);
  // Grad mode off: the callable runs directly.
  torch::NoGradGuard no_grad;
  CHECK_FALSE(std::get<0>(actckpt::checkpoint<Policy>(fn, x, 0.5, std::vector<torch::Tensor>{scale})).requires_grad());
}

TEST_CASE_TEMPLATE("functional: checkpoint_sequential over segments, BatchNorm inside, matches the plain Sequential",
                   Policy, NR_POLICIES) {
  torch::manual_seed(23);
  auto make = [] {
    torch::manual_seed(5);
    return test_device::on_device(torch::nn::Sequential(torch::nn::Linear(16, 32), torch::nn::ReLU(),
                                                        torch::nn::BatchNorm1d(32), torch::nn::Linear(32, 32),
                                                        torch::nn::Tanh(), torch::nn::Linear(32, 16), torch::nn::GELU()));
  };
  auto ref = make(), seq = make();
  IsolatedOffload iso;
  actckpt::OffloadContextScope context(iso.context);
  for (int64_t segments : {1, 2, 3, 7}) {
    CAPTURE(segments);
    auto x = torch::randn({24, 16}, test_device::options().requires_grad(true));
    ref->forward(x).pow(2).sum().backward();
    auto gx = take_grads({x});
    actckpt::checkpoint_sequential<Policy>(seq, segments, x).pow(2).sum().backward();
    check_bitwise_equal(take_grads({x}), gx);
    check_bitwise_equal(take_grads(*seq), take_grads(*ref));
    for (const auto& item : ref->named_buffers()) {
      CAPTURE(item.key());
      CHECK(bitwise_equal(item.value(), seq->named_buffers()[item.key()]));
    }
  }
  CHECK_THROWS_WITH_AS(actckpt::checkpoint_sequential<Policy>(seq, 8, torch::randn({2, 16}, test_device::options())),
                       doctest::Contains("segments must be between 1 and the number of modules (7)"),
                       actckpt::UsageError);
}

TEST_CASE("functional: an explicit reentrant policy is refused (captured tensors would get no gradient)") {
  auto w = torch::randn({4, 4}, test_device::options().requires_grad(true));
  CHECK_THROWS_WITH_AS(actckpt::checkpoint<Reentrant<actckpt::NoOffload>>([&](const torch::Tensor& x) { return x.mm(w); },
                                                                          torch::randn({2, 4}, test_device::options())),
                       doctest::Contains("non-reentrant only"), actckpt::UsageError);
}
