// Offload on CUDA end to end: gradients equal to the unwrapped model's with copies over side
// streams, async offload under fp16 autocast, offload-saved and the reentrant form on CUDA, the
// copy engine's CUDA events and the pinned slab pool's reuse fence, and the disk tier's CUDA
// paths (cuFile where it works, pinned staging with gpu_direct off). scripts/gpu-check.sh runs
// these (ctest unit.cuda) first on the GPU; the rest of the suite runs there too, on CUDA
// tensors, through the device switch (tests/support/test_device.hpp).
// Cases needing CUDA carry [cuda] in their name and test_device::needs_cuda(): reported skipped where CUDA is absent.

#include "offload_fixtures.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <string>
#include <unistd.h>
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

TEST_CASE_TEMPLATE("[cuda] gradients on CUDA are equal to the unwrapped model's, with offload over side streams" * test_device::needs_cuda(),
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  test_device::require_cuda();
  torch::manual_seed(0);
  std::vector<actckpt::models::TransformerBlock> layers;
  for (int i = 0; i < 4; ++i) {
    layers.emplace_back(actckpt::models::TransformerBlockOptions(64, 16, 128).dropout(0.1));
    layers.back()->to(torch::kCUDA);
  }
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({2, 32, 64}, torch::kCUDA);
  torch::manual_seed(3);
  chain(layers, x).pow(2).mean().backward();
  std::vector<torch::Tensor> g_ref;
  for (auto& l : layers)
    for (auto& g : take_grads(*l)) g_ref.push_back(g);
  torch::manual_seed(3);
  chain(wrapped, x).pow(2).mean().backward();
  std::vector<torch::Tensor> g;
  for (auto& l : layers)
    for (auto& t : take_grads(*l)) g.push_back(t);
  REQUIRE(g.size() == g_ref.size());
  // fp32: the recompute runs the same kernels on the same inputs with the forward's RNG state
  // (dropout's Philox offset included), so the gradients are the same bits.
  double max_diff = 0;
  for (std::size_t i = 0; i < g.size(); ++i) max_diff = std::max(max_diff, (g[i] - g_ref[i]).abs().max().item<double>());
  MESSAGE("largest gradient difference on CUDA: " << max_diff);
  check_bitwise_equal(g, g_ref);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("[cuda] async offload under fp16 autocast matches the unwrapped model and frees device memory" * test_device::needs_cuda()) {
  test_device::require_cuda();
  torch::manual_seed(1);
  auto layers = mlp_stack(6, 256, 1024);
  for (auto& l : layers) l->to(torch::kCUDA);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  actckpt::AutocastState fp16;
  fp16.cuda_enabled = true;
  fp16.cuda_dtype = torch::kHalf;
  auto x = torch::randn({512, 256}, torch::kCUDA);
  torch::Tensor ref_loss, loss;
  {
    actckpt::AutocastReplayGuard on(fp16);
    ref_loss = chain(layers, x).to(torch::kFloat).pow(2).mean();
  }
  ref_loss.backward();
  std::vector<torch::Tensor> g_ref;
  for (auto& l : layers)
    for (auto& g : take_grads(*l)) g_ref.push_back(g);
  {
    actckpt::AutocastReplayGuard on(fp16);
    loss = chain(wrapped, x).to(torch::kFloat).pow(2).mean();
  }
  CHECK(iso.pool->stats().live_bytes > 0);  // stashes went to pinned host memory
  loss.backward();
  torch::cuda::synchronize();
  std::vector<torch::Tensor> g;
  for (auto& l : layers)
    for (auto& t : take_grads(*l)) g.push_back(t);
  for (std::size_t i = 0; i < g.size(); ++i) CHECK(torch::allclose(g[i], g_ref[i], 1e-3, 1e-4));
  CHECK(iso.pool->stats().live_bytes == 0);
}

namespace {

/// Gradients of every layer of `layers`, in order (cloned, then cleared).
template <class Layer>
std::vector<torch::Tensor> stack_grads(std::vector<Layer>& layers) {
  std::vector<torch::Tensor> g;
  for (auto& l : layers)
    for (auto& t : take_grads(*l)) g.push_back(t);
  return g;
}

/// Four transformer blocks with dropout on the GPU, and an input: fp32, so a checkpointed step
/// on CUDA gives the unwrapped model's gradients bit for bit (same kernels, same Philox offsets).
struct CudaStack {
  CudaStack() {
    torch::manual_seed(0);
    for (int i = 0; i < 4; ++i) {
      layers.emplace_back(actckpt::models::TransformerBlockOptions(64, 16, 128).dropout(0.1));
      layers.back()->to(torch::kCUDA);
    }
    x = torch::randn({2, 32, 64}, torch::kCUDA);
  }
  std::vector<torch::Tensor> reference() {
    torch::manual_seed(3);
    chain(layers, x).pow(2).mean().backward();
    return stack_grads(layers);
  }
  std::vector<actckpt::models::TransformerBlock> layers;
  torch::Tensor x;
};

}  // namespace

TEST_CASE_TEMPLATE("[cuda] offload-saved on CUDA: every saved activation through pinned host memory over side streams, "
                   "gradients bitwise equal to the unwrapped model's" * test_device::needs_cuda(),
                   Policy, actckpt::OffloadSaved, actckpt::SyncOffloadSaved) {
  test_device::require_cuda();
  CudaStack s;
  const auto g_ref = s.reference();
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(s.layers, iso);
  torch::manual_seed(3);
  auto loss = chain(wrapped, s.x).pow(2).mean();
  // Saved activations left the device for the pool's pinned slabs (at least min_pinned_slab:
  // a CPU stash's slab starts at 64 KiB).
  CHECK(iso.pool->stats().live_bytes > 0);
  CHECK(iso.pool->stats().reserved_bytes >= actckpt::HostBufferPool::min_pinned_slab);
  loss.backward();
  torch::cuda::synchronize();
  check_bitwise_equal(stack_grads(s.layers), g_ref);
  const auto t = iso.context->telemetry();
  CHECK(t.d2h_bytes > 0);
  CHECK(t.h2d_bytes == t.d2h_bytes);
  CHECK(t.pending_copies == 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE_TEMPLATE("[cuda] the reentrant form on CUDA: gradients bitwise equal to the unwrapped model's, with "
                   "offload over side streams" * test_device::needs_cuda(),
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  test_device::require_cuda();
  CudaStack s;
  const auto g_ref = s.reference();
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(s.layers, iso);
  for (auto& w : wrapped) {
    auto o = Policy::options();
    o.form = actckpt::CheckpointForm::reentrant;  // whatever ACTCKPT_CHECKPOINT_FORM says
    w->set_stash_options(o);
  }
  torch::manual_seed(3);
  chain(wrapped, s.x).pow(2).mean().backward();
  torch::cuda::synchronize();
  check_bitwise_equal(stack_grads(s.layers), g_ref);
  CHECK(iso.pool->stats().live_bytes == 0);
  if (!std::is_same_v<Policy, NoOffload>) CHECK(iso.context->telemetry().d2h_bytes > 0);
}

#if ACTCKPT_WITH_CUDA
namespace {
actckpt::CopyOptions going(actckpt::CopyDirection direction) {
  actckpt::CopyOptions o;
  o.direction = direction;
  return o;
}
}  // namespace

TEST_CASE("[cuda] copy engine: a CUDA tensor goes to pinned host memory and back on side streams, fenced by CUDA "
          "events, the compute stream waiting without the host" * test_device::needs_cuda()) {
  test_device::require_cuda();
  actckpt::CopyEngine engine;
  auto pool = actckpt::HostBufferPool::create(std::size_t{1} << 30);
  const auto src = torch::randn({256, 1024}, torch::kCUDA);
  const std::size_t bytes = static_cast<std::size_t>(src.numel()) * sizeof(float);
  auto host = pool->try_acquire(bytes, /*pinned=*/true);
  REQUIRE(host != nullptr);
  CHECK(host->pinned());
  auto host_view = host->view_as(src.sizes(), torch::kFloat, bytes);
  CHECK(host_view.is_pinned());  // LibTorch sees the pool's slab as pinned: the copy can be asynchronous

  auto down = engine.copy(host_view, src, host, {}, going(actckpt::CopyDirection::device_to_host));
  REQUIRE(down->cuda_event() != nullptr);        // fenced by an event, not by the CPU worker
  REQUIRE(down->cuda_start_event() != nullptr);  // timed on the copy stream
  down->synchronize();
  CHECK(down->done());
  CHECK(torch::equal(host_view, src.cpu()));

  auto back = torch::empty_like(src);
  auto up = engine.copy(back, host_view, host, {}, going(actckpt::CopyDirection::host_to_device));
  REQUIRE(up->cuda_event() != nullptr);
  up->make_compute_wait();  // the compute stream waits for the copy's event; the host does not
  CHECK(torch::equal(back, src));  // read on the compute stream, after the copy
  const auto t = engine.telemetry().snapshot();
  CHECK(t.d2h_copies == 1);
  CHECK(t.h2d_copies == 1);
}

TEST_CASE("[cuda] pinned slab pool: CUDA stashes take pinned slabs, and bytes handed out again wait for the copy "
          "that used them (the reuse fence)" * test_device::needs_cuda()) {
  test_device::require_cuda();
  torch::manual_seed(4);
  auto layers = mlp_stack(4, 256, 1024);
  for (auto& l : layers) l->to(torch::kCUDA);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  const auto x = torch::randn({512, 256}, torch::kCUDA);
  auto step = [&] {
    chain(wrapped, x).pow(2).mean().backward();
    torch::cuda::synchronize();
  };
  step();
  const auto first = iso.pool->stats();
  step();
  step();
  const auto stats = iso.pool->stats();
  CHECK(stats.live_bytes == 0);
  CHECK(stats.reserved_bytes >= actckpt::HostBufferPool::min_pinned_slab);  // pinned slabs (plain ones start at 64 KiB)
  CHECK(stats.reuses > first.reuses);                            // steps 2 and 3 reused step 1's slabs...
  CHECK(stats.system_allocations == first.system_allocations);  // ...and took no new one

  // The fence itself: a buffer whose device-to-host copy is in flight is handed out again only
  // after that copy's event completed.
  auto pool = actckpt::HostBufferPool::create(std::size_t{1} << 30);
  actckpt::CopyEngine engine;
  const auto big = torch::randn({4096, 4096}, torch::kCUDA);  // 64 MiB: the copy takes a while
  const std::size_t bytes = static_cast<std::size_t>(big.numel()) * sizeof(float);
  auto host = pool->try_acquire(bytes, true);
  REQUIRE(host != nullptr);
  auto* const address = static_cast<char*>(host->data());
  auto view = host->view_as(big.sizes(), torch::kFloat, bytes);
  auto ticket = engine.copy(view, big, host, {}, going(actckpt::CopyDirection::device_to_host));
  REQUIRE(ticket->cuda_event() != nullptr);
  bool fence_ran = false;
  bool copy_done_when_fenced = false;
  auto event = ticket->cuda_event();
  host->set_reuse_fence([&, event] {
    event->synchronize();
    fence_ran = true;
    copy_done_when_fenced = event->query();
  });
  view.reset();
  host.reset();
  CHECK(!fence_ran);  // releasing never waits for the device
  auto again = pool->try_acquire(bytes, true);
  REQUIRE(again != nullptr);
  CHECK(static_cast<char*>(again->data()) == address);  // the same bytes...
  CHECK(fence_ran);                                       // ...after the fence
  CHECK(copy_done_when_fenced);
  CHECK(ticket->done());
}
TEST_CASE("[cuda] disk store: CUDA tensors round-trip bitwise through cuFile (gpu_direct auto) and through pinned "
          "staging (gpu_direct off), buffered and O_DIRECT, into strided destinations" * test_device::needs_cuda()) {
  test_device::require_cuda();
  const char* base = std::getenv("TMPDIR");
  std::string dir = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/actckpt-cufile-test-XXXXXX";
  REQUIRE(::mkdtemp(dir.data()) != nullptr);
  actckpt::CopyEngine engine;  // its ready marks: the events the stash records before the disk I/O
  torch::manual_seed(7);
  for (const auto gpu_direct : {actckpt::GpuDirect::automatic, actckpt::GpuDirect::off}) {
    for (const bool direct : {false, true}) {
      const std::string mode(actckpt::to_string(gpu_direct));
      CAPTURE(mode);
      CAPTURE(direct);
      actckpt::DiskStoreOptions o;
      o.directory = dir;
      o.capacity_bytes = 64 << 20;
      o.direct_io = direct;
      o.gpu_direct = gpu_direct;
      auto store = actckpt::DiskStore::open(o);
      const std::string path = store->io_path(c10::DeviceType::CUDA);
      CAPTURE(path);
      // The GPU check prints this line: which path the GPU machine took (GDS, cuFile's compatibility mode, or staging and why).
      std::cout << "[disk io_path] gpu_direct=" << mode << " direct_io=" << direct << ": " << path
                << std::endl;
      if (gpu_direct == actckpt::GpuDirect::off) {
        CHECK(path == "pinned staging (cuFile: DiskStoreOptions::gpu_direct is off)");
      } else {
        CHECK((path.rfind("cufile: ", 0) == 0 || path.rfind("pinned staging (cuFile: ", 0) == 0));
      }
      // Larger than the staging buffer and not a multiple of the alignment; made on the compute stream.
      const auto src = torch::randn({static_cast<int64_t>(actckpt::DiskStore::staging_bytes / 4 + 1001)}, torch::kCUDA) * 3;
      auto extent = store->acquire(src.nbytes(), "x");
      store->write(*extent, src, engine.mark_ready(src).get());
      auto back = torch::empty_like(src);
      store->read(*extent, back, engine.mark_ready(back).get());
      CHECK(test_models::bitwise_equal(back, src));
      const auto matrix = torch::randn({64, 48}, torch::kCUDA);
      auto e2 = store->acquire(matrix.nbytes(), "m");
      store->write(*e2, matrix, engine.mark_ready(matrix).get());
      auto transposed = torch::empty({48, 64}, torch::kCUDA).t();  // a strided destination
      store->read(*e2, transposed, engine.mark_ready(transposed).get());
      CHECK(test_models::bitwise_equal(transposed, matrix));
      // No cuFile error turned the store to staging on the way.
      CHECK(store->io_path(c10::DeviceType::CUDA) == path);
      CHECK(store->io_path() == (direct ? "host: O_DIRECT through an aligned staging buffer" : "host: pread/pwrite through the page cache"));
    }
  }
  CHECK(::rmdir(dir.c_str()) == 0);  // the stores left nothing behind
}
#endif
