// MemoryMeter (known allocations give known bytes, per thread, through autograd and the copy
// worker; host stash bytes from the pool), MemoryTimeline (phases present, CSV and a trace that
// parses as JSON) and the benchmark model stack (modes, names, phases of the unwrapped stack).
// Cases needing CUDA carry [cuda] in their name and skip with a message where CUDA is absent.

#include "test_models.hpp"

#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>
#include "stack_config.hpp"  // benchmarks/: the benchmark's StackConfig

#include <cctype>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <variant>
#include <vector>

using actckpt::MemoryMeter;
using actckpt::MemoryTimeline;
using test_models::IsolatedOffload;
using test_models::MlpBlock;

namespace {

constexpr std::int64_t MiB = 1 << 20;

/// A float tensor of exactly `bytes` bytes (a multiple of 4).
torch::Tensor tensor_of_bytes(std::int64_t bytes) { return torch::empty({bytes / 4}, torch::kFloat); }

/// A small JSON reader, enough to check that exports parse and to look inside them.
struct Json {
  using Array = std::vector<Json>;
  using Object = std::map<std::string, Json>;
  std::variant<std::nullptr_t, bool, double, std::string, Array, Object> value;

  const Object& object() const { return std::get<Object>(value); }
  const Array& array() const { return std::get<Array>(value); }
  const std::string& string() const { return std::get<std::string>(value); }
  double number() const { return std::get<double>(value); }
  bool has(const std::string& key) const {
    return std::holds_alternative<Object>(value) && object().count(key) > 0;
  }
  const Json& operator[](const std::string& key) const { return object().at(key); }

  /// Parses all of `text`; throws std::runtime_error saying where it is not JSON.
  static Json parse(const std::string& text) {
    std::size_t pos = 0;
    Json j = parse_value(text, pos);
    skip_ws(text, pos);
    if (pos != text.size()) fail(text, pos, "trailing characters");
    return j;
  }

 private:
  [[noreturn]] static void fail(const std::string& text, std::size_t pos, const std::string& why) {
    throw std::runtime_error("invalid JSON at offset " + std::to_string(pos) + " (" + why + "): '" +
                             text.substr(pos, 40) + "'");
  }
  static void skip_ws(const std::string& t, std::size_t& p) {
    while (p < t.size() && std::isspace(static_cast<unsigned char>(t[p]))) ++p;
  }
  static void expect(const std::string& t, std::size_t& p, char c) {
    skip_ws(t, p);
    if (p >= t.size() || t[p] != c) fail(t, p, std::string("expected '") + c + "'");
    ++p;
  }
  static std::string parse_string(const std::string& t, std::size_t& p) {
    expect(t, p, '"');
    std::string s;
    while (p < t.size() && t[p] != '"') {
      char c = t[p++];
      if (static_cast<unsigned char>(c) < 0x20) fail(t, p, "control character in string");
      if (c == '\\') {
        if (p >= t.size()) fail(t, p, "unfinished escape");
        char e = t[p++];
        switch (e) {
          case '"': case '\\': case '/': s += e; break;
          case 'b': s += '\b'; break;
          case 'f': s += '\f'; break;
          case 'n': s += '\n'; break;
          case 'r': s += '\r'; break;
          case 't': s += '\t'; break;
          case 'u':
            if (p + 4 > t.size()) fail(t, p, "short \\u escape");
            for (int i = 0; i < 4; ++i)
              if (!std::isxdigit(static_cast<unsigned char>(t[p + i]))) fail(t, p, "bad \\u escape");
            s += '?';
            p += 4;
            break;
          default: fail(t, p, "bad escape");
        }
      } else {
        s += c;
      }
    }
    if (p >= t.size()) fail(t, p, "unterminated string");
    ++p;
    return s;
  }
  static Json parse_value(const std::string& t, std::size_t& p) {
    skip_ws(t, p);
    if (p >= t.size()) fail(t, p, "unexpected end");
    const char c = t[p];
    if (c == '{') {
      ++p;
      Object o;
      skip_ws(t, p);
      if (p < t.size() && t[p] == '}') {
        ++p;
        return Json{o};
      }
      for (;;) {
        std::string key = parse_string(t, p);
        expect(t, p, ':');
        o[key] = parse_value(t, p);
        skip_ws(t, p);
        if (p < t.size() && t[p] == ',') {
          ++p;
          continue;
        }
        expect(t, p, '}');
        return Json{o};
      }
    }
    if (c == '[') {
      ++p;
      Array a;
      skip_ws(t, p);
      if (p < t.size() && t[p] == ']') {
        ++p;
        return Json{a};
      }
      for (;;) {
        a.push_back(parse_value(t, p));
        skip_ws(t, p);
        if (p < t.size() && t[p] == ',') {
          ++p;
          continue;
        }
        expect(t, p, ']');
        return Json{a};
      }
    }
    if (c == '"') return Json{parse_string(t, p)};
    if (t.compare(p, 4, "true") == 0) {
      p += 4;
      return Json{true};
    }
    if (t.compare(p, 5, "false") == 0) {
      p += 5;
      return Json{false};
    }
    if (t.compare(p, 4, "null") == 0) {
      p += 4;
      return Json{nullptr};
    }
    // number: -?digits(.digits)?([eE][+-]?digits)?
    const std::size_t start = p;
    if (t[p] == '-') ++p;
    auto digits = [&] {
      const std::size_t d = p;
      while (p < t.size() && std::isdigit(static_cast<unsigned char>(t[p]))) ++p;
      if (p == d) fail(t, p, "expected a digit");
    };
    digits();
    if (p < t.size() && t[p] == '.') {
      ++p;
      digits();
    }
    if (p < t.size() && (t[p] == 'e' || t[p] == 'E')) {
      ++p;
      if (p < t.size() && (t[p] == '+' || t[p] == '-')) ++p;
      digits();
    }
    return Json{std::stod(t.substr(start, p - start))};
  }
};

/// Three checkpointed MLP blocks labelled "0", "1", "2" on an isolated offload context.
template <class Policy>
struct CheckpointedChain {
  IsolatedOffload iso;
  std::vector<actckpt::Checkpointed<MlpBlock, Policy>> layers;
  explicit CheckpointedChain(int depth = 3, int64_t dim = 64, int64_t hidden = 256) {
    for (int i = 0; i < depth; ++i) {
      layers.emplace_back(MlpBlock(dim, hidden));
      layers.back()->set_offload_context(iso.context);
      layers.back()->set_label(std::to_string(i));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& l : layers) x = l(x);
    return x;
  }
  void drain() {  // the CPU copy worker has finished every queued copy
    while (iso.context->engine().pending() > 0) std::this_thread::yield();
  }
};

std::vector<std::string> phases_of(const MemoryTimeline& t) {
  std::vector<std::string> seen;
  auto phases = t.phases();
  for (const auto& s : t.samples())
    if (seen.empty() || seen.back() != phases[s.phase]) seen.push_back(phases[s.phase]);
  return seen;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

TEST_CASE("MemoryMeter counts a known CPU allocation in current and peak bytes") {
  MemoryMeter meter;
  CHECK(meter.device_bytes() == 0);
  CHECK(meter.device_peak_bytes() == 0);
  auto t = tensor_of_bytes(10 * MiB);
  CHECK(meter.device_bytes() == 10 * MiB);
  CHECK(meter.device_peak_bytes() == 10 * MiB);
  {
    auto u = tensor_of_bytes(4 * MiB);
    CHECK(meter.device_bytes() == 14 * MiB);
  }
  CHECK(meter.device_bytes() == 10 * MiB);
  CHECK(meter.device_peak_bytes() == 14 * MiB);
  t.reset();
  CHECK(meter.device_bytes() == 0);
  CHECK(meter.device_peak_bytes() == 14 * MiB);
  meter.reset_peak();
  CHECK(meter.device_peak_bytes() == 0);
  const auto r = meter.read();
  CHECK(r.device_bytes == 0);
  CHECK(r.host_stash_bytes == 0);
}

TEST_CASE("MemoryMeter ignores the release of memory allocated before it started") {
  auto before = tensor_of_bytes(3 * MiB);
  MemoryMeter meter;
  auto t = tensor_of_bytes(1 * MiB);
  before.reset();  // not ours: must not drive the count below what this scope holds
  CHECK(meter.device_bytes() == 1 * MiB);
  CHECK(meter.device_peak_bytes() == 1 * MiB);
}

TEST_CASE("nested MemoryMeters both count, and the outer one keeps counting after the inner ends") {
  MemoryMeter outer;
  auto a = tensor_of_bytes(2 * MiB);
  torch::Tensor b;
  {
    MemoryMeter inner;
    b = tensor_of_bytes(3 * MiB);
    CHECK(inner.device_bytes() == 3 * MiB);
    CHECK(outer.device_bytes() == 5 * MiB);
    CHECK(inner.counts_this_thread());
    CHECK(outer.counts_this_thread());
  }
  auto c = tensor_of_bytes(1 * MiB);
  CHECK(outer.device_bytes() == 6 * MiB);
  CHECK(outer.device_peak_bytes() == 6 * MiB);
}

TEST_CASE("two MemoryMeters in two threads each measure their own thread") {
  std::int64_t peaks[2] = {0, 0}, currents[2] = {0, 0};
  auto work = [&](int i, std::int64_t bytes) {
    MemoryMeter meter;
    for (int round = 0; round < 20; ++round) {
      auto t = tensor_of_bytes(bytes);
      auto u = t.clone();  // a second block of the same size, from an ATen kernel
      std::this_thread::yield();
    }
    auto keep = tensor_of_bytes(bytes / 2);
    peaks[i] = meter.device_peak_bytes();
    currents[i] = meter.device_bytes();
  };
  std::thread a(work, 0, 2 * MiB), b(work, 1, 6 * MiB);
  a.join();
  b.join();
  CHECK(peaks[0] == 4 * MiB);
  CHECK(currents[0] == 1 * MiB);
  CHECK(peaks[1] == 12 * MiB);
  CHECK(currents[1] == 3 * MiB);
}

TEST_CASE("MemoryMeter sees autograd's allocations in backward") {
  MemoryMeter meter;
  auto w = torch::randn({512, 512}, torch::requires_grad());
  const auto after_w = meter.device_bytes();
  CHECK(after_w == 512 * 512 * 4);
  auto loss = torch::matmul(torch::ones({256, 512}), w).pow(2).sum();
  loss.backward();
  loss.reset();
  // w.grad stays: exactly one more weight-sized block than before.
  CHECK(meter.device_bytes() == after_w + 512 * 512 * 4);
  CHECK(meter.device_peak_bytes() > meter.device_bytes());
}

TEST_CASE_TEMPLATE("MemoryMeter reports offloaded stashes as host stash bytes of the pool, not device bytes", Policy,
                   actckpt::SyncOffload, actckpt::AsyncOffload) {
  CheckpointedChain<Policy> chain;
  CheckpointedChain<actckpt::NoOffload> classic;
  torch::manual_seed(0);
  const int64_t stash = 32 * 64 * 4;  // [32, 64] float inputs
  auto x = torch::randn({32, 64});

  std::int64_t classic_after_forward = 0;
  {
    MemoryMeter meter(torch::kCPU, classic.iso.pool);
    auto y = classic.forward(x);
    classic_after_forward = meter.device_bytes();
    CHECK(meter.host_stash_peak_bytes() == 0);
    y.sum().backward();
  }

  MemoryMeter meter(torch::kCPU, chain.iso.pool);
  CHECK(&meter.pool() == chain.iso.pool.get());
  auto y = chain.forward(x);
  chain.drain();
  const auto pool_live = static_cast<std::int64_t>(chain.iso.pool->stats().live_bytes);
  CHECK(meter.host_stash_bytes() == pool_live);
  CHECK(meter.host_stash_peak_bytes() >= pool_live);
  // Sync: all three inputs went to the host; async keeps the newest on the device. Buffers
  // are rounded up to the pool's granularity.
  const int64_t moved = std::is_same_v<Policy, actckpt::SyncOffload> ? 3 : 2;
  CHECK(pool_live >= moved * stash);
  CHECK(pool_live < moved * (stash + static_cast<int64_t>(actckpt::HostBufferPool::granularity)));
  // The inputs of layers 1 and 2 live only in their stashes: the device holds that much less
  // than classic checkpointing (x, the input of layer 0, is held by the test either way). For
  // async, the input of layer 1 was released by the copy worker: its meter is this thread's.
  const int64_t freed = std::is_same_v<Policy, actckpt::SyncOffload> ? 2 : 1;
  CHECK(classic_after_forward - meter.device_bytes() == freed * stash);

  y.sum().backward();
  y.reset();
  chain.drain();
  CHECK(meter.host_stash_bytes() == 0);
}

TEST_CASE("MemoryTimeline records phases of checkpointed layers and exports CSV and a trace that parse") {
  CheckpointedChain<actckpt::AsyncOffload> chain;
  auto x = torch::randn({32, 64});
  MemoryMeter meter(torch::kCPU, chain.iso.pool);
  MemoryTimeline timeline(meter, "async \"test\"", "begin");
  auto loss = chain.forward(x).pow(2).mean();
  timeline.mark("loss");
  loss.backward();
  loss.reset();
  chain.drain();
  timeline.mark("optimizer");
  timeline.stop();
  const auto after_stop = timeline.samples().size();
  auto extra = tensor_of_bytes(MiB);  // after stop(): not recorded
  CHECK(timeline.samples().size() == after_stop);

  const auto seen = phases_of(timeline);
  for (const char* p : {"begin", "fwd 0", "fwd 1", "fwd 2", "loss", "bwd 2", "bwd 1", "bwd 0", "optimizer"})
    CHECK_MESSAGE(contains(seen, p), "phase missing: ", p);
  // backward runs the layers in reverse
  auto index = [&](const std::string& p) { return std::find(seen.begin(), seen.end(), p) - seen.begin(); };
  CHECK(index("fwd 0") < index("fwd 2"));
  CHECK(index("fwd 2") < index("bwd 2"));
  CHECK(index("bwd 2") < index("bwd 0"));

  bool saw_alloc = false, saw_free = false, saw_host = false;
  std::int64_t last_t = -1;
  for (const auto& s : timeline.samples()) {
    saw_alloc = saw_alloc || s.what == "alloc";
    saw_free = saw_free || s.what == "free";
    saw_host = saw_host || s.host_stash_bytes > 0;
    CHECK(s.time_ns >= last_t);
    last_t = s.time_ns;
  }
  CHECK(saw_alloc);
  CHECK(saw_free);
  CHECK(saw_host);
  CHECK(timeline.peak_device_bytes() > 0);

  // CSV: a header and one row per sample, seven fields each.
  std::ostringstream csv;
  timeline.write_csv(csv);
  std::istringstream lines(csv.str());
  std::string line;
  std::getline(lines, line);
  CHECK(line == "time_ms,device_bytes,host_stash_bytes,delta_bytes,phase,what,label");
  std::size_t rows = 0;
  while (std::getline(lines, line)) {
    ++rows;
    CHECK(std::count(line.begin(), line.end(), ',') == 6);
  }
  CHECK(rows == timeline.samples().size());

  // Trace: valid JSON, counter events and phase slices, the name escaped.
  std::ostringstream trace;
  MemoryTimeline::write_trace(trace, {&timeline, &timeline});
  Json j;
  REQUIRE_NOTHROW(j = Json::parse(trace.str()));
  REQUIRE(j.has("traceEvents"));
  std::set<std::string> slices;
  std::set<double> pids;
  int counters = 0;
  std::string process_name;
  for (const auto& e : j["traceEvents"].array()) {
    const auto& ph = e["ph"].string();
    pids.insert(e["pid"].number());
    if (ph == "C") {
      ++counters;
      CHECK(e["args"].has("device MB"));
      CHECK(e["args"].has("host stash MB"));
      CHECK(e["ts"].number() >= 0);
    } else if (ph == "X") {
      slices.insert(e["name"].string());
      CHECK(e["dur"].number() > 0);
    } else if (ph == "M" && e["name"].string() == "process_name") {
      process_name = e["args"]["name"].string();
    }
  }
  CHECK(counters > 10);
  CHECK(pids.size() == 2);
  CHECK(process_name == "async \"test\"");
  for (const char* p : {"fwd 0", "fwd 2", "bwd 2", "bwd 0", "loss", "optimizer"})
    CHECK_MESSAGE(slices.count(p) == 1, "slice missing: ", p);
}

TEST_CASE("MemoryTimeline takes no phases from another thread's model") {
  CheckpointedChain<actckpt::NoOffload> mine, theirs;
  for (int i = 0; i < 3; ++i) theirs.layers[static_cast<std::size_t>(i)]->set_label("other " + std::to_string(i));
  MemoryMeter meter;
  MemoryTimeline timeline(meter, "mine");
  std::thread other([&] { theirs.forward(torch::randn({8, 64})).sum().backward(); });
  other.join();
  mine.forward(torch::randn({8, 64})).sum().backward();
  timeline.stop();
  for (const auto& p : timeline.phases()) CHECK_MESSAGE(p.find("other") == std::string::npos, "foreign phase ", p);
  CHECK(contains(phases_of(timeline), "bwd 0"));
}

TEST_CASE("the unwrapped transformer stack announces fwd blocks.i / bwd blocks.i, so baseline timelines show phases") {
  using namespace actckpt::models;
  TransformerStack stack(TransformerBlockOptions(32, 16, 64), 3, StackMode::baseline);
  auto x = torch::randn({2, 8, 32});
  MemoryMeter meter;
  MemoryTimeline timeline(meter, "baseline", "zero_grad");
  auto loss = stack(x).pow(2).mean();
  timeline.mark("loss");
  loss.backward();
  timeline.stop();
  const auto seen = phases_of(timeline);
  const std::vector<std::string> expected = {"zero_grad",    "fwd blocks.0", "fwd",          "fwd blocks.1",
                                             "fwd",          "fwd blocks.2", "fwd",          "loss",
                                             "bwd blocks.2", "bwd blocks.1", "bwd blocks.0"};
  CHECK(seen == expected);
  // The checkpointed modes name their layers the same way.
  TransformerStack classic(TransformerBlockOptions(32, 16, 64), 3, StackMode::ckpt_classic);
  auto* layer = dynamic_cast<actckpt::CheckpointedLayer*>(classic->named_modules()["blocks.1"].get());
  REQUIRE(layer != nullptr);
  CHECK(layer->label() == "blocks.1");
  CHECK_FALSE(layer->label_is_explicit());

  // Without an observer the stack adds no hooks (and therefore nothing to the graph).
  auto y = stack(x);
  CHECK(y.grad_fn()->pre_hooks().empty());
}

TEST_CASE("the transformer stack has the same parameter names in every mode and matches baseline gradients") {
  using namespace actckpt::models;
  const TransformerBlockOptions block(32, 16, 64);
  torch::manual_seed(1);
  TransformerStack base(block, 2, StackMode::baseline);
  auto x = torch::randn({2, 8, 32});
  base(x).pow(2).mean().backward();
  for (auto mode : {StackMode::ckpt_classic, StackMode::ckpt_sync_offload, StackMode::ckpt_async_offload,
                    StackMode::offload_saved}) {
    CAPTURE(to_string(mode));
    TransformerStack other(block, 2, mode);
    CHECK(other->mode() == mode);
    auto a = base->named_parameters(), b = other->named_parameters();
    REQUIRE(a.size() == b.size());
    {
      torch::NoGradGuard no_grad;
      for (const auto& p : a) b[p.key()].copy_(p.value());
    }
    other(x).pow(2).mean().backward();
    for (const auto& p : a) {
      CAPTURE(p.key());
      REQUIRE(b.contains(p.key()));
      CHECK(torch::equal(p.value().grad(), b[p.key()].grad()));
    }
  }
  CHECK(stack_mode_from_string("ckpt_async_offload") == StackMode::ckpt_async_offload);
  CHECK_FALSE(stack_mode_from_string("nope").has_value());
  CHECK(stack_mode_of<actckpt::SyncOffload>() == StackMode::ckpt_sync_offload);
  CHECK(stack_mode_from_string("offload_saved") == StackMode::offload_saved);
  CHECK(stack_mode_of<actckpt::OffloadSaved>() == StackMode::offload_saved);
  CHECK(form_name(StackMode::offload_saved) == "none");  // nothing is recomputed
}

TEST_CASE("StackConfig follows the seed's CLI and rejects what cannot run") {
  using bench::StackConfig;
  auto seed = StackConfig::seed();
  CHECK(seed.seq_len() == 250);
  CHECK(seed.num_heads() == 16);
  CHECK(seed.autocast_dtype() == c10::kHalf);
  StackConfig c;
  CHECK_NOTHROW(c.validate());
  c.head_dim = 48;  // does not divide 128
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("head_dim"), actckpt::UsageError);
  c = StackConfig{};
  c.dtype = "fp16";  // CPU autocast is bf16 only
  CHECK_THROWS_AS(c.validate(), actckpt::UsageError);
  c.dtype = "int8";
  CHECK_THROWS_WITH_AS(c.validate(), doctest::Contains("dtype"), actckpt::UsageError);
}

TEST_CASE("GptModel maps tokens to logits through the stack") {
  using namespace actckpt::models;
  GptModel gpt(GptOptions(11, 16, TransformerBlockOptions(32, 16, 64), 2).mode(StackMode::ckpt_classic));
  auto tokens = torch::randint(0, 11, {3, 16}, torch::kLong);
  auto logits = gpt(tokens);
  CHECK(logits.sizes() == torch::IntArrayRef({3, 16, 11}));
  torch::nn::functional::cross_entropy(logits.view({-1, 11}), tokens.view({-1})).backward();
  CHECK(gpt->tok_emb->weight.grad().defined());
  CHECK(gpt->named_parameters().contains("stack.blocks.1.attn.qkv.weight"));
  CHECK_THROWS_AS(gpt(torch::zeros({1, 17}, torch::kLong)), actckpt::UsageError);
}

TEST_CASE("MemoryMeter on CUDA reads the caching allocator [cuda]") {
  if (!test_models::cuda_or_skip()) return;
#if ACTCKPT_WITH_CUDA
  MemoryMeter meter(torch::Device(torch::kCUDA, 0));
  const auto start = meter.device_bytes();
  CHECK(meter.device_peak_bytes() == start);
  auto t = torch::empty({10 * MiB / 4}, torch::TensorOptions().device(torch::kCUDA));
  CHECK(meter.device_bytes() - start == 10 * MiB);
  t.reset();
  CHECK(meter.device_bytes() == start);
  CHECK(meter.device_peak_bytes() - start == 10 * MiB);

  MemoryTimeline timeline(meter, "cuda");
  auto u = torch::empty({MiB / 4}, torch::TensorOptions().device(torch::kCUDA));
  u.reset();
  timeline.stop();
  std::int64_t high = 0;
  for (const auto& s : timeline.samples()) high = std::max(high, s.device_bytes - start);
  CHECK(high == MiB);
#else
  MESSAGE("skipped: actckpt was built without ACTCKPT_WITH_CUDA");
#endif
}
