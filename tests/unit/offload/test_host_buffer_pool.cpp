// The host buffer pool's slab placement (issue 18, "pinned memory that costs what it holds"):
// stashes placed inside slabs at their exact size (alignment aside), coalescing, the bound and
// exhaustion, trim returning slabs, reuse fences, a pool destroyed while buffers are out, and the
// bytes held against the bytes stashed at the peak for a training step's pattern. CPU slabs run
// the same placement logic as pinned ones, so it is tested here without a GPU.

#include <doctest/doctest.h>

#include <actckpt/offload/host_buffer_pool.hpp>

#include "offload_fixtures.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using actckpt::HostBuffer;
using actckpt::HostBufferPool;

namespace {

constexpr std::size_t KiB = 1024;
constexpr std::size_t MiB = 1024 * 1024;

std::size_t aligned(std::size_t n) {
  return (n + HostBufferPool::alignment - 1) / HostBufferPool::alignment * HostBufferPool::alignment;
}

std::uintptr_t address(const std::shared_ptr<HostBuffer>& b) { return reinterpret_cast<std::uintptr_t>(b->data()); }

/// Fills a buffer's requested bytes with a pattern derived from `tag`.
void fill(const std::shared_ptr<HostBuffer>& b, std::size_t bytes, std::uint32_t tag) {
  auto* p = static_cast<unsigned char*>(b->data());
  for (std::size_t i = 0; i < bytes; ++i) p[i] = static_cast<unsigned char>((tag * 2654435761u + i * 40503u) >> 7);
}
bool intact(const std::shared_ptr<HostBuffer>& b, std::size_t bytes, std::uint32_t tag) {
  const auto* p = static_cast<const unsigned char*>(b->data());
  for (std::size_t i = 0; i < bytes; ++i)
    if (p[i] != static_cast<unsigned char>((tag * 2654435761u + i * 40503u) >> 7)) return false;
  return true;
}

/// One training step's stash pattern: every layer stashes `sizes` in order, backward frees them
/// in reverse. Returns nothing; the pool's statistics say what it cost.
void training_step(HostBufferPool& pool, int layers, const std::vector<std::size_t>& sizes) {
  std::vector<std::shared_ptr<HostBuffer>> stack;
  for (int l = 0; l < layers; ++l)
    for (std::size_t s : sizes) {
      auto b = pool.try_acquire(s, false);
      REQUIRE(b != nullptr);
      stack.push_back(std::move(b));
    }
  while (!stack.empty()) stack.pop_back();
}

}  // namespace

TEST_CASE("host pool: stashes are placed at their exact size, aligned, one after another in a slab" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{1} << 30);
  const std::vector<std::size_t> sizes = {1000, 1, 4096, 12345, 64, 65};
  std::vector<std::shared_ptr<HostBuffer>> out;
  for (std::size_t s : sizes) out.push_back(pool->try_acquire(s, false));
  std::size_t expected_live = 0, expected_stashed = 0;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    REQUIRE(out[i] != nullptr);
    CHECK(out[i]->capacity() == aligned(sizes[i]));
    CHECK(address(out[i]) % HostBufferPool::alignment == 0);
    CHECK_FALSE(out[i]->pinned());
    if (i > 0) CHECK(address(out[i]) == address(out[i - 1]) + out[i - 1]->capacity());  // packed, no gap
    expected_live += aligned(sizes[i]);
    expected_stashed += sizes[i];
  }
  const auto s = pool->stats();
  CHECK(s.slabs == 1);
  CHECK(s.system_allocations == 1);
  CHECK(s.live_bytes == expected_live);
  CHECK(s.stashed_bytes == expected_stashed);
  CHECK(s.live_buffers == sizes.size());
  CHECK(s.free_ranges == 1);
  CHECK(s.largest_free_bytes == s.reserved_bytes - expected_live);
  // view_as sees the buffer's bytes.
  auto t = out[2]->view_as({1024}, at::kFloat, 4096);
  t.fill_(2.5f);
  float first = 0;
  std::memcpy(&first, out[2]->data(), sizeof first);
  CHECK(first == 2.5f);
}

TEST_CASE("host pool: freed ranges coalesce with their free neighbours; first fit reuses the lowest address" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{1} << 30);
  auto a = pool->try_acquire(1 * KiB, false);
  auto b = pool->try_acquire(2 * KiB, false);
  auto c = pool->try_acquire(3 * KiB, false);
  auto d = pool->try_acquire(100, false);
  REQUIRE((a && b && c && d));
  const auto base = address(a);
  CHECK(pool->stats().slabs == 1);
  CHECK(pool->stats().free_ranges == 1);  // the tail
  a.reset();
  c.reset();
  CHECK(pool->stats().free_ranges == 3);  // [a], [c], tail: not adjacent
  b.reset();
  CHECK(pool->stats().free_ranges == 2);  // [a b c] merged, tail
  CHECK(pool->stats().largest_free_bytes >= 6 * KiB);
  auto e = pool->try_acquire(5 * KiB + 500, false);  // first fit: the merged range before d, not the tail
  REQUIRE(e != nullptr);
  CHECK(address(e) == base);
  e.reset();
  d.reset();
  const auto s = pool->stats();
  CHECK(s.free_ranges == 1);  // the whole slab is one range again
  CHECK(s.largest_free_bytes == s.reserved_bytes);
  CHECK(s.live_bytes == 0);
  CHECK(s.stashed_bytes == 0);
}

TEST_CASE("host pool: bytes held stay within 5% of bytes stashed at the peak over training steps" * test_device::no_tensors()) {
  struct Pattern {
    std::string name;
    int layers;
    std::vector<std::size_t> sizes;
  };
  // Checkpoint inputs only (one equal stash per layer), and every saved activation of a
  // transformer block (hidden-sized, 4x hidden, attention scores, small statistics).
  const std::vector<Pattern> patterns = {
      {"checkpoint inputs, 24 x 3 MiB", 24, {3 * MiB}},
      {"checkpoint inputs, 12 x 200 KB", 12, {200000}},
      {"saved activations of a block", 12, {786432, 786432, 3145728, 3145728, 786432, 1572864, 6144, 6144, 786432}},
      {"many small stashes", 64, {4000, 120, 16384, 4000}},
  };
  for (const auto& p : patterns) {
    CAPTURE(p.name);
    auto pool = HostBufferPool::create(std::size_t{8} << 30);
    training_step(*pool, p.layers, p.sizes);
    const auto first = pool->stats();
    for (int step = 0; step < 5; ++step) training_step(*pool, p.layers, p.sizes);
    const auto s = pool->stats();
    // The pool stops growing after the first step: every stash lands where it did then.
    CHECK(s.system_allocations == first.system_allocations);
    CHECK(s.reserved_bytes == first.reserved_bytes);
    CHECK(s.live_bytes == 0);
    CHECK(s.peak_stashed_bytes > 0);
    const double held_over_stashed = static_cast<double>(s.peak_reserved_bytes) / static_cast<double>(s.peak_stashed_bytes);
    MESSAGE(p.name << ": held " << s.peak_reserved_bytes << " B for " << s.peak_stashed_bytes << " B stashed (x"
                   << held_over_stashed << ", " << s.slabs << " slabs)");
    CHECK(held_over_stashed <= 1.05);
  }
}

// docs/offload.md states the bytes held against the bytes stashed at the peak; this is the check
// behind those figures, over random patterns (layer counts, stash sizes) and random free orders:
// backward frees in reverse, in reverse with neighbours swapped (asynchronous copies finishing
// out of order), or in a random order. Within 2.5% for steps that stash at least 1 MiB (measured:
// at most 2.35%; the free order changed nothing); below that, a slab's rounding to 4 KiB pages
// and a slab's room for more stashes of its size are a visible share (6 stashes of 6 KiB: 48 KiB
// held for 36 KiB), so there the bound is 64 KiB held beyond what is stashed (measured: 32 KiB).
// (docs/offload.md said "within 1%" from four fixed patterns; this found 2.35%.)
constexpr double documented_held_over_stashed = 1.025;
constexpr std::size_t documented_from_bytes = MiB;

TEST_CASE("host pool: bytes held within 2.5% of bytes stashed from 1 MiB up (one page per slab below), random "
          "patterns and free orders" * test_device::no_tensors()) {
  std::mt19937 rng(27);
  auto draw = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const std::size_t menu[] = {6144, 200000, 786432, 1572864, 3 * MiB, 3145728 + 4096, 4000, 16384};
  double worst = 0.0, worst_small = 0.0;
  std::size_t worst_small_excess = 0;
  std::string worst_case;
  int runs = 0, large = 0;
  for (int pattern = 0; pattern < 40; ++pattern) {
    const int layers = draw(2, 32);
    std::vector<std::size_t> sizes(static_cast<std::size_t>(draw(1, 6)));
    for (auto& size : sizes) size = menu[draw(0, 7)];
    for (int order = 0; order < 3; ++order) {
      auto pool = HostBufferPool::create(std::size_t{8} << 30);
      for (int step = 0; step < 6; ++step) {
        std::vector<std::shared_ptr<HostBuffer>> stashes;
        for (int l = 0; l < layers; ++l)
          for (std::size_t size : sizes) {
            auto b = pool->try_acquire(size, false);
            REQUIRE(b != nullptr);
            stashes.push_back(std::move(b));
          }
        std::reverse(stashes.begin(), stashes.end());  // backward's order
        if (order == 1)
          for (std::size_t i = 0; i + 1 < stashes.size(); ++i)
            if (draw(0, 2) == 0) std::swap(stashes[i], stashes[i + 1]);
        if (order == 2) std::shuffle(stashes.begin(), stashes.end(), rng);
        for (auto& b : stashes) b.reset();
      }
      const auto s = pool->stats();
      REQUIRE(s.peak_stashed_bytes > 0);
      CHECK(s.live_bytes == 0);
      const double ratio = static_cast<double>(s.peak_reserved_bytes) / static_cast<double>(s.peak_stashed_bytes);
      ++runs;
      CAPTURE(layers);
      CAPTURE(order);
      CAPTURE(s.peak_stashed_bytes);
      CAPTURE(s.peak_reserved_bytes);
      CAPTURE(s.slabs);
      if (s.peak_stashed_bytes < documented_from_bytes) {
        worst_small = std::max(worst_small, ratio);
        worst_small_excess = std::max(worst_small_excess, s.peak_reserved_bytes - s.peak_stashed_bytes);
        CHECK(s.peak_reserved_bytes <= s.peak_stashed_bytes + 64 * KiB);
        continue;
      }
      ++large;
      if (ratio > worst) {
        worst = ratio;
        worst_case = std::to_string(layers) + " layers x " + std::to_string(sizes.size()) + " stashes, free order " +
                     (order == 0 ? "reverse" : order == 1 ? "reverse with swaps" : "random");
      }
      CHECK(ratio <= documented_held_over_stashed);
    }
  }
  MESSAGE("held over stashed at the peak, ", runs, " random patterns and orders: ", large, " stashing 1 MiB or more, largest x",
          worst, " (", worst_case, "); below 1 MiB largest x", worst_small, ", at most ", worst_small_excess,
          " B held beyond what was stashed");
  CHECK(runs == 120);
  CHECK(large >= 60);
}

TEST_CASE("host pool: randomized sizes and frees never overlap, stay in bounds and coalesce back" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{256} << 20);
  std::mt19937 rng(18);
  std::uniform_int_distribution<int> kind(0, 9);
  struct Live {
    std::shared_ptr<HostBuffer> buffer;
    std::size_t bytes;
    std::uint32_t tag;
  };
  std::vector<Live> live;
  std::uint32_t next_tag = 1;
  auto random_size = [&]() -> std::size_t {
    switch (kind(rng) % 4) {
      case 0: return std::uniform_int_distribution<std::size_t>(1, 256)(rng);
      case 1: return std::uniform_int_distribution<std::size_t>(257, 64 * KiB)(rng);
      case 2: return std::uniform_int_distribution<std::size_t>(64 * KiB, 1 * MiB)(rng);
      default: return std::uniform_int_distribution<std::size_t>(1 * MiB, 3 * MiB)(rng);
    }
  };
  std::size_t stashed = 0;
  for (int op = 0; op < 3000; ++op) {
    if (live.empty() || (live.size() < 150 && kind(rng) < 5)) {
      const std::size_t bytes = random_size();
      auto b = pool->try_acquire(bytes, false);
      REQUIRE(b != nullptr);
      CHECK(b->capacity() == aligned(bytes));
      CHECK(address(b) % HostBufferPool::alignment == 0);
      fill(b, bytes, next_tag);
      live.push_back({std::move(b), bytes, next_tag++});
      stashed += bytes;
    } else {
      const std::size_t i = std::uniform_int_distribution<std::size_t>(0, live.size() - 1)(rng);
      REQUIRE(intact(live[i].buffer, live[i].bytes, live[i].tag));  // nobody else wrote into it
      stashed -= live[i].bytes;
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    if (op % 100 == 0) {
      // No two live ranges overlap.
      std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
      for (const auto& l : live) ranges.emplace_back(address(l.buffer), address(l.buffer) + l.buffer->capacity());
      std::sort(ranges.begin(), ranges.end());
      for (std::size_t k = 1; k < ranges.size(); ++k) REQUIRE(ranges[k - 1].second <= ranges[k].first);
      const auto s = pool->stats();
      CHECK(s.stashed_bytes == stashed);
      CHECK(s.live_buffers == live.size());
      CHECK(s.live_bytes <= s.reserved_bytes);
      CHECK(s.reserved_bytes <= pool->limit());
    }
  }
  for (const auto& l : live) CHECK(intact(l.buffer, l.bytes, l.tag));
  live.clear();
  const auto s = pool->stats();
  CHECK(s.live_bytes == 0);
  CHECK(s.stashed_bytes == 0);
  CHECK(s.free_ranges == s.slabs);  // every slab coalesced back into one free range
  MESSAGE("randomized: peak held " << s.peak_reserved_bytes << " B, peak stashed " << s.peak_stashed_bytes << " B, "
                                   << s.slabs << " slabs");
  pool->trim();
  CHECK(pool->stats().reserved_bytes == 0);
  CHECK(pool->stats().slabs == 0);
}

TEST_CASE("host pool: the limit counts slab bytes; at the limit requests are refused, never waited for" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(256 * KiB);
  auto a = pool->try_acquire(100 * KiB, false);
  REQUIRE(a != nullptr);
  auto s = pool->stats();
  CHECK(s.reserved_bytes <= 256 * KiB);
  auto b = pool->try_acquire(100 * KiB, false);
  REQUIRE(b != nullptr);
  CHECK(pool->stats().reserved_bytes <= 256 * KiB);
  CHECK(pool->try_acquire(100 * KiB, false) == nullptr);
  CHECK(pool->try_acquire(300 * KiB, false) == nullptr);  // larger than the limit itself
  s = pool->stats();
  CHECK(s.exhaustions == 2);
  CHECK(s.live_buffers == 2);
  CHECK(s.stashed_bytes == 200 * KiB);
  // Freed room is used again; a full free slab is returned to make room for a different size.
  a.reset();
  auto c = pool->try_acquire(90 * KiB, false);
  CHECK(c != nullptr);
  c.reset();
  b.reset();
  auto big = pool->try_acquire(250 * KiB, false);  // needs the free slabs trimmed first
  REQUIRE(big != nullptr);
  CHECK(pool->stats().reserved_bytes <= 256 * KiB);
  big.reset();
  // Lowering the limit below what is held returns free slabs at once.
  pool->set_limit(0);
  CHECK(pool->stats().reserved_bytes == 0);
  CHECK(pool->try_acquire(1, false) == nullptr);
}

TEST_CASE("host pool: a buffer out keeps its slab; trim returns only slabs with nothing in them" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{1} << 30);
  auto a = pool->try_acquire(10 * MiB, false);  // a slab of its own (larger than a grown slab)
  auto b = pool->try_acquire(20 * MiB, false);
  REQUIRE((a && b));
  CHECK(pool->stats().slabs == 2);
  b.reset();
  pool->trim();
  auto s = pool->stats();
  CHECK(s.slabs == 1);
  CHECK(s.reserved_bytes >= 10 * MiB);
  CHECK(s.reserved_bytes < 20 * MiB);
  a.reset();
  pool->trim();
  CHECK(pool->stats().reserved_bytes == 0);
  CHECK(pool->stats().slabs == 0);
}

TEST_CASE("host pool: a freed range's fence runs before its bytes are handed out again, not at release" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{1} << 30);
  auto a = pool->try_acquire(64 * KiB, false);
  auto b = pool->try_acquire(64 * KiB, false);
  REQUIRE((a && b));
  const auto a_address = address(a);
  int fence_runs = 0;
  a->set_reuse_fence([&] { ++fence_runs; });
  a.reset();
  CHECK(fence_runs == 0);  // releasing never waits for the device
  // A request elsewhere (the tail) does not touch a's bytes: no fence.
  auto far = pool->try_acquire(1 * MiB, false);
  REQUIRE(far != nullptr);
  CHECK(fence_runs == 0);
  // Part of a's range: the fence runs first, once.
  auto c = pool->try_acquire(1000, false);
  REQUIRE(c != nullptr);
  CHECK(address(c) == a_address);
  CHECK(fence_runs == 1);
  auto d = pool->try_acquire(1000, false);  // the rest of a's range: already fenced
  CHECK(address(d) == a_address + c->capacity());
  CHECK(fence_runs == 1);
  // Trim runs the fences of freed ranges before it frees the slab.
  int trim_fence = 0;
  b->set_reuse_fence([&] { ++trim_fence; });
  b.reset();
  c.reset();
  d.reset();
  far.reset();
  CHECK(trim_fence == 0);
  pool->trim();
  CHECK(trim_fence == 1);
  CHECK(pool->stats().reserved_bytes == 0);
}

TEST_CASE("host pool: buffers out when the pool is destroyed stay valid and run their fence" * test_device::no_tensors()) {
  std::shared_ptr<HostBuffer> survivor;
  int freed_fence = 0, survivor_fence = 0;
  {
    auto pool = HostBufferPool::create(std::size_t{1} << 30);
    survivor = pool->try_acquire(5000, false);
    auto freed = pool->try_acquire(5000, false);
    REQUIRE((survivor && freed));
    fill(survivor, 5000, 7);
    freed->set_reuse_fence([&] { ++freed_fence; });
    freed.reset();
    survivor->set_reuse_fence([&] { ++survivor_fence; });
  }
  CHECK(freed_fence == 1);  // the pool ran it before freeing the slab
  CHECK(survivor_fence == 0);
  CHECK(intact(survivor, 5000, 7));  // the slab's memory lives as long as the buffer's view
  survivor.reset();
  CHECK(survivor_fence == 1);
}

TEST_CASE("host pool: a fence that fails fails the request, and nothing is lost" * test_device::no_tensors()) {
  auto pool = HostBufferPool::create(std::size_t{1} << 30);
  auto a = pool->try_acquire(4000, false);
  REQUIRE(a != nullptr);
  int calls = 0;
  a->set_reuse_fence([&] {
    if (++calls == 1) throw std::runtime_error("device wait failed");
  });
  a.reset();
  CHECK_THROWS_WITH_AS(pool->try_acquire(4000, false), "device wait failed", std::runtime_error);
  auto s = pool->stats();
  CHECK(s.live_bytes == 0);
  CHECK(s.live_buffers == 0);
  CHECK(s.stashed_bytes == 0);
  CHECK(s.free_ranges == 1);
  // The fence is still pending: the next request of those bytes runs it again, then gets them.
  auto b = pool->try_acquire(4000, false);
  REQUIRE(b != nullptr);
  CHECK(calls == 2);
  b.reset();
  pool->trim();
  CHECK(pool->stats().reserved_bytes == 0);
}

// ---------------------------------------------------------------------------------------------
// The pool in use by the offload policies: reuse across steps, bound and statistics, exhaustion
// (fallback and throw_error), CPU stashes outside LibTorch's allocator.

namespace {
using namespace test_models;
using actckpt::AsyncOffload;
using actckpt::Checkpointed;
using actckpt::EventKind;
using actckpt::NoOffload;
using actckpt::SyncOffload;
}  // namespace

TEST_CASE_TEMPLATE("the host pool is reused across steps: no growth over 50 steps", Policy, SyncOffload, AsyncOffload) {
  IsolatedOffload iso;
  auto layers = mlp_stack(4);
  auto wrapped = wrap_stack<Policy>(layers, iso);
  auto step = [&] {
    chain(wrapped, torch::randn({16, 32}, test_device::options())).pow(2).mean().backward();
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

TEST_CASE("host buffer pool: bounded, reusable, statistics readable, trimmed on demand" * test_device::no_tensors()) {
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
  auto x = torch::randn({16, 32}, test_device::options().requires_grad(true));
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
  auto x = torch::randn({16, 32}, test_device::options());
  CHECK_THROWS_WITH_AS(chain(wrapped, x), doctest::Contains("host buffer pool exhausted"),
                       actckpt::HostPoolExhausted);
  CHECK(iso.pool->stats().live_bytes == 0);
  CHECK(iso.context->stack().size() == 0);
  iso.pool->set_limit(std::size_t{1} << 26);
  chain(wrapped, x).sum().backward();
  CHECK(layers[0]->fc1->weight.grad().defined());
}

TEST_CASE("CPU stashes live in the host pool, outside LibTorch's CPU allocator" * test_device::cpu_only("checks LibTorch's CPU allocator does not see the stashes")) {
  IsolatedOffload iso;
  auto layers = mlp_stack(3);
  auto wrapped = wrap_stack<SyncOffload>(layers, iso);
  auto log = std::make_shared<EventLog>();
  actckpt::ObserverScope scope(log);
  auto x = torch::randn({16, 32}, test_device::options());
  auto y = chain(wrapped, x);
  // Three stashes of 16x32 floats, each at its exact size rounded up to the pool's alignment.
  constexpr std::size_t align = actckpt::HostBufferPool::alignment;
  CHECK(iso.pool->stats().live_bytes == 3 * align * ((16 * 32 * 4 + align - 1) / align));
  for (const auto& e : log->snapshot())
    if (e.kind == EventKind::offload_begin) CHECK(e.bytes == 16 * 32 * 4);
  y.sum().backward();
}
