// Offload policies: where stashes live and when they move (release before the next layer, keep-N,
// size threshold, prefetch order), the host buffer pool (reuse, bound, exhaustion), lifetime of
// copy sources, and that no stash memory survives an exception or a dropped graph.
// Cases needing CUDA carry [cuda] in their name and skip with a message where CUDA is absent.

#include "test_models.hpp"

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

namespace {

std::vector<MlpBlock> mlp_stack(int depth, int64_t dim = 32, int64_t hidden = 64) {
  std::vector<MlpBlock> layers;
  for (int i = 0; i < depth; ++i) layers.emplace_back(dim, hidden);
  return layers;
}

c10::weak_intrusive_ptr<c10::StorageImpl> weak_storage(const torch::Tensor& t) {
  return c10::weak_intrusive_ptr<c10::StorageImpl>(t.storage().getWeakStorageImpl());
}

}  // namespace

TEST_CASE_TEMPLATE("offloading policies release the device copy of an input before the next layer runs", Policy,
                   SyncOffload, AsyncOffload) {
  auto layers = mlp_stack(4);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  // Inputs of layers 1..3 are produced inside the chain; watch whether their memory survives.
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> inputs;
  auto h = torch::randn({16, 32}, torch::requires_grad());
  for (auto& l : wrapped) {
    auto next = l(h);
    h = next;
    inputs.push_back(weak_storage(h));
  }
  // Async copies finish on the worker, and only then release their source.
  wait_until_idle(*iso.context, std::chrono::seconds(2));
  // Input of layer 1 and 2 (outputs of layers 0 and 1) are gone from the device: only the host
  // copies remain. (Async keeps the newest stash, layer 3's input, on the device.)
  CHECK(inputs[0].expired());
  CHECK(inputs[1].expired());
  CHECK(iso.pool->stats().live_bytes >= 2 * 16 * 32 * sizeof(float));
  h.sum().backward();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("classic checkpointing keeps inputs on the device and uses no host memory") {
  auto layers = mlp_stack(3);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<NoOffload>(layers, iso);
  auto h = torch::randn({16, 32}, torch::requires_grad());
  h = wrapped[0](h);
  auto first_output = weak_storage(h);
  h = wrapped[1](h);
  h = wrapped[2](h);
  CHECK_FALSE(first_output.expired());  // layer 1's stash holds it
  CHECK(iso.pool->stats().peak_live_bytes == 0);
  h.sum().backward();
}

TEST_CASE("sync offload: each stash is on the host before the next layer starts") {
  auto layers = mlp_stack(3);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<SyncOffload>(layers, iso);
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  chain(wrapped, torch::randn({16, 32})).sum().backward();
  for (int i = 0; i + 1 < 3; ++i) {
    CAPTURE(i);
    auto done = log->index_of(EventKind::offload_end, std::to_string(i));
    auto next = log->index_of(EventKind::forward_begin, std::to_string(i + 1));
    REQUIRE(done >= 0);
    CHECK(done < next);
  }
}

TEST_CASE("async offload keeps the newest N stashes on the device") {
  IsolatedOffload iso;
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  SUBCASE("N = 1 (default)") {
    auto layers = mlp_stack(4);
    auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
    auto y = chain(wrapped, torch::randn({16, 32}));
    for (int i = 0; i < 3; ++i) CHECK(log->index_of(EventKind::offload_begin, std::to_string(i)) >= 0);
    CHECK(log->index_of(EventKind::offload_begin, "3") == -1);
    CHECK(iso.context->stack().size() == 4);
    y.sum().backward();
    CHECK(iso.context->stack().size() == 0);
  }
  SUBCASE("N = 2") {
    auto layers = mlp_stack(4);
    auto wrapped = wrap_stack<actckpt::BasicAsyncOffload<2>>(layers, iso);
    auto y = chain(wrapped, torch::randn({16, 32}));
    CHECK(log->index_of(EventKind::offload_begin, "1") >= 0);
    CHECK(log->index_of(EventKind::offload_begin, "2") == -1);
    CHECK(log->index_of(EventKind::offload_begin, "3") == -1);
    y.sum().backward();
  }
}

TEST_CASE("async offload leaves stashes under the size threshold on the device") {
  IsolatedOffload iso;
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  auto layers = mlp_stack(4, 8, 16);  // 4x8 floats = 128 bytes per input, under 1 KiB
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto y = chain(wrapped, torch::randn({4, 8}));
  CHECK(iso.context->stack().size() == 0);
  CHECK(log->index_of(EventKind::offload_begin, "0") == -1);
  CHECK(iso.pool->stats().peak_live_bytes == 0);
  y.sum().backward();

  auto big = mlp_stack(3, 64, 64);
  auto wrapped_big = wrap_stack<actckpt::BasicAsyncOffload<1, (1 << 20)>>(big, iso);
  chain(wrapped_big, torch::randn({16, 64})).sum().backward();  // 4 KiB < 1 MiB threshold
  CHECK(iso.pool->stats().peak_live_bytes == 0);
}

TEST_CASE("async offload: while layer i recomputes, the input of layer i-1 is already being prefetched") {
  IsolatedOffload iso;
  auto layers = mlp_stack(5);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto y = chain(wrapped, torch::randn({16, 32}, torch::requires_grad()));
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  y.sum().backward();
  // Backward visits layers 4, 3, 2, 1, 0. Layer 4's input never left the device; the input of
  // each layer i-1 (i = 4..1) starts coming back when layer i's backward begins, before its
  // recompute ends, and before layer i-1 asks for it.
  for (int i = 4; i >= 1; --i) {
    CAPTURE(i);
    const auto begin_i = log->index_of(EventKind::backward_begin, std::to_string(i));
    const auto recomputed_i = log->index_of(EventKind::recompute_end, std::to_string(i));
    const auto prefetch_prev = log->index_of(EventKind::prefetch_begin, std::to_string(i - 1));
    const auto begin_prev = log->index_of(EventKind::backward_begin, std::to_string(i - 1));
    REQUIRE(prefetch_prev >= 0);
    CHECK(begin_i < prefetch_prev);
    CHECK(prefetch_prev < recomputed_i);
    CHECK(prefetch_prev < begin_prev);
  }
  CHECK(log->index_of(EventKind::prefetch_begin, "4") == -1);
}

TEST_CASE_TEMPLATE("the host pool is reused across steps: no growth over 50 steps", Policy, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto step = [&] {
    chain(wrapped, torch::randn({16, 32})).pow(2).mean().backward();
    for (auto& l : layers) l->zero_grad();
  };
  step();
  const auto after_first = iso.pool->stats();
  CHECK(after_first.system_allocations > 0);
  CHECK(after_first.live_bytes == 0);
  for (int i = 0; i < 49; ++i) step();
  const auto after_50 = iso.pool->stats();
  CHECK(after_50.system_allocations == after_first.system_allocations);
  CHECK(after_50.reserved_bytes == after_first.reserved_bytes);
  CHECK(after_50.peak_reserved_bytes == after_first.peak_reserved_bytes);
  CHECK(after_50.reuses >= 49 * after_first.system_allocations);
  CHECK(after_50.live_bytes == 0);
}

TEST_CASE("host buffer pool: bounded, reusable, statistics readable, trimmed on demand") {
  auto pool = actckpt::HostBufferPool::create(64 * 1024);
  auto a = pool->try_acquire(10000, false);
  REQUIRE(a != nullptr);
  CHECK(a->capacity() >= 10000);
  CHECK(a->capacity() % actckpt::HostBufferPool::alignment == 0);
  CHECK(pool->stats().live_bytes == a->capacity());
  auto b = pool->try_acquire(40000, false);
  REQUIRE(b != nullptr);
  CHECK(pool->try_acquire(40000, false) == nullptr);  // over the 64 KiB bound: refused, never waits
  CHECK(pool->stats().exhaustions == 1);
  const void* a_memory = a->data();
  a.reset();
  CHECK(pool->stats().live_bytes == b->capacity());
  auto c = pool->try_acquire(9000, false);  // placed where a was (first fit in the slab a and b share)
  REQUIRE(c != nullptr);
  CHECK(c->data() == a_memory);
  CHECK(pool->stats().reuses == 2);              // b and c were placed in the slab made for a
  CHECK(pool->stats().system_allocations == 1);
  c.reset();
  b.reset();
  CHECK(pool->stats().live_bytes == 0);
  CHECK(pool->stats().peak_live_bytes >= 40000);
  pool->trim();
  CHECK(pool->stats().reserved_bytes == 0);
  pool->set_limit(1 << 20);
  CHECK(pool->try_acquire(500000, false) != nullptr);
}

TEST_CASE_TEMPLATE("pool exhaustion: documented fallback keeps stashes on the device", Policy, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  iso.pool->set_limit(4096);  // smaller than one 16x32 float stash (8 KiB)
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({16, 32}, torch::requires_grad());
  chain(layers, x).pow(2).sum().backward();
  auto g_ref = take_grads(*layers[0]);
  x.mutable_grad().reset();
  for (auto& l : layers) l->zero_grad();
  chain(wrapped, x).pow(2).sum().backward();
  check_bitwise_equal(take_grads(*layers[0]), g_ref);
  CHECK(iso.pool->stats().exhaustions > 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

using StrictSync = actckpt::BasicSyncOffload<actckpt::PoolExhaustion::throw_error>;
using StrictAsync = actckpt::BasicAsyncOffload<1, 1024, actckpt::PoolExhaustion::throw_error>;

TEST_CASE_TEMPLATE("pool exhaustion with throw_error: a clear error, nothing leaked, next step trains", Policy,
                   StrictSync, StrictAsync) {
  IsolatedOffload iso;
  iso.pool->set_limit(4096);
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({16, 32});
  CHECK_THROWS_WITH_AS(chain(wrapped, x), doctest::Contains("host buffer pool exhausted"),
                       actckpt::HostPoolExhausted);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  iso.pool->set_limit(std::size_t{1} << 26);
  chain(wrapped, x).sum().backward();
  CHECK(layers[0]->fc1->weight.grad().defined());
}

TEST_CASE_TEMPLATE("an exception inside a layer in forward or in backward leaves no stash memory", Policy,
                   NoOffload, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  std::vector<FaultyBlock> layers;
  for (int i = 0; i < 4; ++i) layers.emplace_back(32);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({16, 32});
  std::vector<c10::weak_intrusive_ptr<c10::StorageImpl>> outputs;

  SUBCASE("in forward") {
    layers[2]->fail_every_forward = true;
    auto run = [&] {
      auto h = x;
      for (auto& l : wrapped) {
        h = l(h);
        outputs.push_back(weak_storage(h));
      }
    };
    CHECK_THROWS_WITH(run(), doctest::Contains("injected forward failure"));
    layers[2]->fail_every_forward = false;
  }
  SUBCASE("in the recompute during backward") {
    layers[1]->fail_recompute = true;
    auto h = x;
    for (auto& l : wrapped) {
      h = l(h);
      outputs.push_back(weak_storage(h));
    }
    auto loss = h.sum();
    h = torch::Tensor();
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("injected recompute failure"));
    loss = torch::Tensor();  // the graph goes with the loss
    layers[1]->fail_recompute = false;
  }
  for (auto& o : outputs) CHECK(o.expired());  // no stash keeps a device tensor alive
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  CHECK(iso.context->engine().pending() == 0);
  // The next step trains, and correctly.
  for (auto& l : layers) l->zero_grad();
  chain(layers, x).sum().backward();
  auto g_ref = take_grads(*layers[0]);
  chain(wrapped, x).sum().backward();
  check_bitwise_equal(take_grads(*layers[0]), g_ref);
}

TEST_CASE_TEMPLATE("a graph dropped without backward returns every stash", Policy, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(5);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  {
    auto y = chain(wrapped, torch::randn({16, 32}));
    CHECK(iso.pool->stats().live_bytes > 0);
  }
  CHECK(iso.context->stack().size() == 0);
  // CPU copies may still be finishing on the worker: they hold the buffers until done.
  for (int i = 0; i < 200 && iso.pool->stats().live_bytes != 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("async copy: the device source stays alive until its copy is done") {
  IsolatedOffload iso;
  std::mutex m;
  std::condition_variable cv;
  bool release = false;
  iso.context->engine().set_fault_injector([&] {  // holds the worker before each copy
    std::unique_lock<std::mutex> lock(m);
    cv.wait(lock, [&] { return release; });
  });
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto h = wrapped[0](torch::randn({16, 32}));
  auto first_output = weak_storage(h);
  h = wrapped[1](h);  // pushes layer 1's stash: layer 0's... (layer 0's input is the data)
  h = wrapped[2](h);  // layer 1's input (= first_output) starts its offload, held by the worker
  CHECK(iso.context->engine().pending() > 0);
  CHECK_FALSE(first_output.expired());  // the queued copy still reads it
  {
    std::lock_guard<std::mutex> lock(m);
    release = true;
  }
  cv.notify_all();
  wait_until_idle(*iso.context, std::chrono::seconds(2));
  CHECK(iso.context->engine().pending() == 0);
  CHECK(first_output.expired());  // copied: the device copy was released
  iso.context->engine().set_fault_injector(nullptr);
  h.sum().backward();
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("async copy failure: backward reports it clearly, memory is returned, the next step trains") {
  IsolatedOffload iso;
  iso.context->engine().set_fault_injector([] { throw std::runtime_error("injected copy failure"); });
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<AsyncOffload>(layers, iso);
  auto x = torch::randn({16, 32});
  {
    auto loss = chain(wrapped, x).sum();
    CHECK_THROWS_WITH(loss.backward(), doctest::Contains("injected copy failure"));
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  iso.context->engine().set_fault_injector(nullptr);
  chain(layers, x).sum().backward();
  auto g_ref = take_grads(*layers[0]);
  chain(wrapped, x).sum().backward();
  check_bitwise_equal(take_grads(*layers[0]), g_ref);
}

TEST_CASE("copy engine: a completion callback that throws fails its ticket with a message naming it") {
  actckpt::CopyEngine engine;
  auto src = torch::arange(64, torch::kFloat);
  auto dst = torch::empty({64});
  auto ticket = engine.copy(dst, src, {}, [] { throw std::runtime_error("callback boom"); });
  std::string message = "<no error>";
  try {
    ticket->synchronize();
  } catch (const std::exception& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("completion callback") != std::string::npos);
  CHECK(message.find("callback boom") != std::string::npos);
  // The worker survived and keeps copying.
  auto dst2 = torch::empty({64});
  engine.copy(dst2, src)->synchronize();
  CHECK(torch::equal(dst2, src));
  CHECK(engine.pending() == 0);
}

namespace {
struct ThrowingObserver : actckpt::Observer {
  std::atomic<int> calls{0};
  void on_event(const actckpt::Event& e) override {
    ++calls;
    throw std::runtime_error("observer boom at " + std::string(actckpt::to_string(e.kind)));
  }
};
}  // namespace

TEST_CASE_TEMPLATE("an observer that throws from every event changes nothing: same gradients, failures counted",
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  // Events come from destructors and (AsyncOffload on CPU) the copy worker: an exception there
  // would end the process. They are caught and counted instead.
  auto layers = mlp_stack(4);
  auto x = torch::randn({16, 32});
  chain(layers, x).sum().backward();
  std::vector<std::vector<torch::Tensor>> expected;
  for (auto& l : layers) expected.push_back(take_grads(*l));

  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto thrower = std::make_shared<ThrowingObserver>();
  const auto failures_before = actckpt::observer_failures().count;
  {
    actckpt::ObserverScope scope(thrower);
    chain(wrapped, x).sum().backward();
    REQUIRE(wait_until_idle(*iso.context, std::chrono::seconds(2)));  // every offload_end emitted
  }
  const auto failures = actckpt::observer_failures();
  CHECK(thrower->calls.load() > 0);
  CHECK(failures.count - failures_before == static_cast<std::uint64_t>(thrower->calls.load()));
  CHECK(failures.last_message.find("observer boom") != std::string::npos);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CAPTURE(i);
    check_bitwise_equal(take_grads(*layers[i]), expected[i]);
  }
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
}

TEST_CASE("stashes of two contexts never mix: each thread has its own default context") {
  auto main_context = actckpt::OffloadContext::current();
  std::shared_ptr<actckpt::OffloadContext> other;
  std::thread([&] { other = actckpt::OffloadContext::current(); }).join();
  CHECK(main_context != other);
  CHECK(main_context == actckpt::OffloadContext::current());
  IsolatedOffload iso;
  {
    actckpt::OffloadContextScope scope(iso.context);
    CHECK(actckpt::OffloadContext::current() == iso.context);
    auto layers = mlp_stack(3);
    std::vector<Checkpointed<MlpBlock, AsyncOffload>> wrapped;
    for (auto& l : layers) wrapped.emplace_back(l);  // no explicit context: the scope's is used
    auto y = chain(wrapped, torch::randn({16, 32}));
    CHECK(iso.context->stack().size() == 3);
    CHECK(main_context->stack().size() == 0);
    y.sum().backward();
  }
  CHECK(actckpt::OffloadContext::current() == main_context);
}

TEST_CASE("CPU stashes live in the host pool, outside LibTorch's CPU allocator") {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<SyncOffload>(layers, iso);
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  auto x = torch::randn({16, 32});
  auto y = chain(wrapped, x);
  // Three stashes of 16x32 floats, each at its exact size rounded up to the pool's alignment.
  constexpr std::size_t align = actckpt::HostBufferPool::alignment;
  CHECK(iso.pool->stats().live_bytes == 3 * align * ((16 * 32 * 4 + align - 1) / align));
  for (const auto& e : log->snapshot())
    if (e.kind == EventKind::offload_begin) CHECK(e.bytes == 16 * 32 * 4);
  y.sum().backward();
}

TEST_CASE_TEMPLATE("[cuda] gradients on CUDA are equal to the unwrapped model's, with offload over side streams",
                   Policy, NoOffload, SyncOffload, AsyncOffload) {
  if (!cuda_or_skip()) return;
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

TEST_CASE_TEMPLATE("[cuda] offload telemetry and the memory meter on CUDA", Policy, SyncOffload, AsyncOffload) {
  if (!cuda_or_skip()) return;
  torch::manual_seed(0);
  auto layers = mlp_stack(6, 256, 1024);
  for (auto& l : layers) l->to(torch::kCUDA);
  IsolatedOffload iso;
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto x = torch::randn({512, 256}, torch::kCUDA);
  chain(wrapped, x).pow(2).mean().backward();  // warm-up: pinned buffers, streams
  torch::cuda::synchronize();
  actckpt::MemoryMeter meter(torch::Device(torch::kCUDA, 0), iso.pool);
  iso.context->reset_telemetry();
  chain(wrapped, x).pow(2).mean().backward();
  torch::cuda::synchronize();
  const auto t = iso.context->take_telemetry();
  const std::int64_t stash = 512 * 256 * 4;
  const std::uint64_t moved = std::is_same_v<Policy, SyncOffload> ? 6 : 5;  // async keeps the newest
  CHECK(t.pending_copies == 0);
  CHECK(t.d2h_copies == moved);
  CHECK(t.h2d_copies == moved);
  CHECK(t.d2h_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.h2d_bytes == t.d2h_bytes);
  CHECK(t.d2h_ms > 0);
  CHECK(t.h2d_ms > 0);
  CHECK(t.overlap() >= 0);
  CHECK(t.overlap() <= 1);
  CHECK(t.spans.size() == 2 * moved);
  MESSAGE(Policy::name << ": copy " << t.copy_ms() << " ms, stall " << t.stall_ms << " ms, overlap "
                       << 100 * t.overlap() << "%, D2H " << t.d2h_gbps() << " GB/s, H2D " << t.h2d_gbps() << " GB/s");
  // Active bytes include sources whose copies were in flight; allocated bytes do not.
  const auto r = meter.read();
  CHECK(r.device_peak_bytes >= r.device_allocated_peak_bytes);
  CHECK(r.device_peak_bytes > 0);
  CHECK(iso.pool->stats().live_bytes == 0);
}

TEST_CASE("[cuda] async offload under fp16 autocast matches the unwrapped model and frees device memory") {
  if (!cuda_or_skip()) return;
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

// ---------------------------------------------------------------------------------------------
// Offload telemetry and stash checksums

namespace {

/// One training step of `wrapped` on x, with the context's telemetry reset before it and taken
/// after it.
template <class W>
actckpt::OffloadTelemetry telemetry_of_step(std::vector<W>& wrapped, IsolatedOffload& iso, const torch::Tensor& x) {
  iso.context->reset_telemetry();
  chain(wrapped, x).sum().backward();
  REQUIRE(wait_until_idle(*iso.context));
  return iso.context->take_telemetry();
}

}  // namespace

TEST_CASE_TEMPLATE("offload telemetry: bytes, copies, copy time and spans of one step, each way", Policy, SyncOffload,
                   AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  const auto x = torch::randn({16, 32});
  const std::int64_t stash = 16 * 32 * 4;
  // Sync moves every layer's input; async keeps the newest one (layer 3's) on the device.
  const std::uint64_t moved = std::is_same_v<Policy, SyncOffload> ? 4 : 3;
  telemetry_of_step(wrapped, iso, x);  // warm-up: pool buffers exist
  const auto t = telemetry_of_step(wrapped, iso, x);
  CHECK(t.d2h_copies == moved);
  CHECK(t.h2d_copies == moved);
  CHECK(t.copies() == 2 * moved);
  CHECK(t.d2h_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.h2d_bytes == static_cast<std::int64_t>(moved) * stash);
  CHECK(t.d2h_ms > 0);
  CHECK(t.h2d_ms > 0);
  CHECK(t.d2h_gbps() > 0);
  CHECK(t.h2d_gbps() > 0);
  CHECK(t.stall_ms >= 0);
  CHECK(t.overlap() >= 0);
  CHECK(t.overlap() <= 1);
  CHECK(t.overlap() == doctest::Approx(std::clamp(1.0 - t.stall_ms / t.copy_ms(), 0.0, 1.0)));
  CHECK(t.pending_copies == 0);
  REQUIRE(t.spans.size() == 2 * moved);
  std::uint64_t d2h_spans = 0;
  for (const auto& s : t.spans) {
    CHECK(s.end >= s.begin);
    CHECK(s.bytes == stash);
    CHECK((s.label == "0" || s.label == "1" || s.label == "2" || s.label == "3"));
    if (s.direction == actckpt::CopyDirection::device_to_host) ++d2h_spans;
  }
  CHECK(d2h_spans == moved);
  // Taken: the next read starts from zero.
  const auto after = iso.context->telemetry();
  CHECK(after.copies() == 0);
  CHECK(after.stall_ms == 0);
  CHECK(after.spans.empty());
}

TEST_CASE("offload telemetry: classic checkpointing moves nothing and reports full overlap") {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<NoOffload>(layers, iso);
  const auto t = telemetry_of_step(wrapped, iso, torch::randn({16, 32}));
  CHECK(t.copies() == 0);
  CHECK(t.d2h_bytes + t.h2d_bytes == 0);
  CHECK(t.stall_ms == 0);
  CHECK(t.overlap() == 1.0);
}

TEST_CASE_TEMPLATE("offload telemetry: a slow copy path is a stall, not hidden behind compute", Policy, SyncOffload,
                   AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  const auto x = torch::randn({16, 32});
  telemetry_of_step(wrapped, iso, x);
  // Every copy now waits 20 ms on the worker before it starts: whoever needs it waits too.
  iso.context->engine().set_fault_injector([] { std::this_thread::sleep_for(std::chrono::milliseconds(20)); });
  const auto t = telemetry_of_step(wrapped, iso, x);
  iso.context->engine().set_fault_injector(nullptr);
  CAPTURE(t.stall_ms);
  CAPTURE(t.copy_ms());
  CHECK(t.stalls >= 1);
  // Sync waits for each of its 3 offloads and 3 restores; async at least for its first restore.
  CHECK(t.stall_ms >= (std::is_same_v<Policy, SyncOffload> ? 6 * 20.0 : 20.0) * 0.9);
  CHECK(t.stall_ms > t.copy_ms());  // the copies themselves are microseconds
  CHECK(t.overlap() == 0.0);
}

TEST_CASE_TEMPLATE("stash checksums: a host buffer corrupted in flight fails backward naming the layer", Policy,
                   SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  for (auto& w : wrapped) {
    auto options = w->stash_options();
    options.verify_checksums = true;
    w->set_stash_options(options);
  }
  const auto x = torch::randn({16, 32}, torch::requires_grad());
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
