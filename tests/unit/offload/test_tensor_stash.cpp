// A tensor stash (offload/tensor_stash.hpp): its checksum catches a host buffer corrupted in
// flight, and backward fails naming the layer.

#include "offload_fixtures.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <thread>
#include <type_traits>

using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::NoOffload;
using actckpt::SyncOffload;

TEST_CASE_TEMPLATE("stash checksums: a host buffer corrupted in flight fails backward naming the layer" * test_device::cpu_only("the CPU copy worker's test hooks (fault injector, after-copy hook) are what this case drives; CUDA copies do not pass through them"), Policy,
                   SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  for (auto& w : wrapped) {
    auto options = w->stash_options();
    options.verify_checksums = true;
    w->set_stash_options(options);
  }
  const auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
  // Clean run: verification passes and changes nothing.
  chain(layers, x).sum().backward();
  const auto g_ref = take_grads(*layers[1]);
  chain(wrapped, x).sum().backward();
  check_bitwise_equal(take_grads(*layers[1]), g_ref);

  // Flip one byte of the first stash that reaches host memory (layer 0's input).
  auto corrupted = std::make_shared<std::atomic<int>>(0);
  iso.context->engine().set_after_copy_hook([corrupted](actckpt::CopyDirection d, torch::Tensor& dst) {
    if (d != actckpt::CopyDirection::device_to_host || corrupted->fetch_add(1) != 0) return;
    auto* bytes = static_cast<unsigned char*>(dst.data_ptr());
    bytes[5] ^= 0x40;
  });
  std::string message = "<no error>";
  try {
    chain(wrapped, x).sum().backward();
  } catch (const std::exception& e) {
    message = e.what();
  }
  iso.context->engine().set_after_copy_hook(nullptr);
  CAPTURE(message);
  CHECK(corrupted->load() >= 1);
  CHECK(message.find("layer '0'") != std::string::npos);
  CHECK(message.find("different from what left the device") != std::string::npos);
  REQUIRE(wait_until_idle(*iso.context));
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);

  // Without the option the same corruption goes unnoticed: the gradients are silently wrong.
  for (auto& w : wrapped) {
    auto options = w->stash_options();
    options.verify_checksums = false;
    w->set_stash_options(options);
  }
  corrupted->store(0);
  iso.context->engine().set_after_copy_hook([corrupted](actckpt::CopyDirection d, torch::Tensor& dst) {
    if (d != actckpt::CopyDirection::device_to_host || corrupted->fetch_add(1) != 0) return;
    static_cast<float*>(dst.data_ptr())[0] += 1.0f;
  });
  take_grads(*layers[0]);  // clears them
  CHECK_NOTHROW(chain(wrapped, x).sum().backward());
  iso.context->engine().set_after_copy_hook(nullptr);
  CHECK(corrupted->load() >= 1);
  const auto g_wrong = take_grads(*layers[0]);
  chain(layers, x).sum().backward();
  const auto g_right = take_grads(*layers[0]);
  REQUIRE(!g_wrong.empty());
  CHECK_FALSE(torch::equal(g_wrong[0], g_right[0]));
}
