// A tensor stash (offload/tensor_stash.hpp): its checksum catches a host buffer corrupted in
// flight, and backward fails naming the layer; a restored stash has its original's sizes, strides,
// values and alignment in every mode; the size threshold decides which stashes move.

#include "offload_fixtures.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

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

namespace {

/// A stash of `t` made with `mode` (async: keep_on_device 0, so it starts moving at once), left to
/// finish its copy, then restored.
struct StashRoundTrip {
  actckpt::TensorStash::Location location;  // where the stash was before restore
  torch::Tensor restored;
  std::size_t bytes;
};

StashRoundTrip round_trip(const torch::Tensor& t, actckpt::StashMode mode, const IsolatedOffload& iso) {
  actckpt::StashOptions options;
  options.mode = mode;
  options.keep_on_device = 0;
  options.min_offload_bytes = 1;
  actckpt::TensorStash stash(t, options, iso.context, actckpt::EventSource{"stashed"});
  REQUIRE(wait_until_idle(*iso.context));
  StashRoundTrip out{stash.location(), stash.restore(), stash.bytes()};
  return out;
}

std::uintptr_t line_offset(const torch::Tensor& t) { return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % 64; }

}  // namespace

// The recompute must see its input laid out as the forward did: BLAS kernels round differently for
// other strides and alignments (the file comment of tensor_stash.hpp), and an expanded input must
// come back expanded (same sizes) while only its unexpanded bytes travel.
TEST_CASE("tensor stash: restore gives back the original's sizes, strides, values and alignment in every mode") {
  IsolatedOffload iso;
  const auto base = torch::randn({6, 10}, test_device::options());
  struct Case {
    std::string name;
    torch::Tensor tensor;
    std::size_t bytes;  // what moves
  };
  const std::vector<Case> cases{
      {"contiguous", base.clone(), 60 * sizeof(float)},
      {"transposed (dense, not contiguous)", base.t(), 60 * sizeof(float)},
      {"a slice with gaps (strides kept)", base.narrow(1, 0, 7), 42 * sizeof(float)},
      {"starting 4 bytes into a cache line", base.reshape({-1}).narrow(0, 1, 50).view({5, 10}), 50 * sizeof(float)},
      {"expanded (a dimension of stride 0)", base.narrow(0, 0, 1).expand({4, 10}), 10 * sizeof(float)},
  };
  for (const auto mode : {actckpt::StashMode::device, actckpt::StashMode::sync_host, actckpt::StashMode::async_host}) {
    for (const auto& c : cases) {
      CAPTURE(static_cast<int>(mode));
      CAPTURE(c.name);
      const auto r = round_trip(c.tensor, mode, iso);
      CHECK(r.location == (mode == actckpt::StashMode::device ? actckpt::TensorStash::Location::device
                                                              : actckpt::TensorStash::Location::host));
      CHECK(r.bytes == c.bytes);
      CHECK(r.restored.sizes() == c.tensor.sizes());
      CHECK(r.restored.strides() == c.tensor.strides());
      CHECK(r.restored.dtype() == c.tensor.dtype());
      CHECK(r.restored.device() == c.tensor.device());
      CHECK(line_offset(r.restored) == line_offset(c.tensor));
      CHECK(bitwise_equal(r.restored, c.tensor));
      // A stash that went to the host comes back as a copy of its own, never the original.
      if (mode != actckpt::StashMode::device) CHECK(r.restored.data_ptr() != c.tensor.data_ptr());
    }
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

// StashOptions::min_offload_bytes: stashes smaller than it stay on the device, a stash of exactly
// that size moves (it is a minimum); empty stashes always stay.
TEST_CASE("tensor stash: a stash of exactly min_offload_bytes moves, one element less stays, empty stays") {
  IsolatedOffload iso;
  for (const auto mode : {actckpt::StashMode::sync_host, actckpt::StashMode::async_host}) {
    CAPTURE(static_cast<int>(mode));
    actckpt::StashOptions options;
    options.mode = mode;
    options.keep_on_device = 0;
    options.min_offload_bytes = 16 * sizeof(float);
    for (const auto& size_moves : std::vector<std::pair<int64_t, bool>>{{16, true}, {15, false}, {17, true}, {0, false}}) {
      const int64_t elements = size_moves.first;
      const bool moves = size_moves.second;
      CAPTURE(elements);
      const auto t = torch::randn({elements}, test_device::options());
      actckpt::TensorStash stash(t, options, iso.context, actckpt::EventSource{"threshold"});
      REQUIRE(wait_until_idle(*iso.context));
      CHECK(stash.location() == (moves ? actckpt::TensorStash::Location::host : actckpt::TensorStash::Location::device));
      // Only stashes that move join the async stack (keep-N counts tensors that move).
      CHECK(iso.context->stack().size() == (mode == actckpt::StashMode::async_host && moves ? 1u : 0u));
      CHECK(iso.pool->stats().stashed_bytes == (moves ? static_cast<std::size_t>(elements) * sizeof(float) : 0u));
      CHECK(bitwise_equal(stash.restore(), t));
      CHECK(iso.pool->stats().stashed_bytes == 0);
    }
  }
}
