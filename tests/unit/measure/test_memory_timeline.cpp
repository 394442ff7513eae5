// MemoryTimeline (measure/memory_timeline.hpp): phases present, CSV and a trace that parses as
// JSON, no phases from another thread's model; the phases of one small checkpointed step in order.

#include "memory_fixtures.hpp"

#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/measure/memory_timeline.hpp>
#include <actckpt/models/transformer_stack.hpp>

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
using namespace memory_fixtures;

namespace {

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

}  // namespace

TEST_CASE("MemoryTimeline records phases of checkpointed layers and exports CSV and a trace that parse" * test_device::cpu_only("samples LibTorch's CPU allocator")) {
  CheckpointedChain<actckpt::AsyncOffload> chain;
  auto x = torch::randn({32, 64}, test_device::options());
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

TEST_CASE("MemoryTimeline takes no phases from another thread's model" * test_device::cpu_only("samples LibTorch's CPU allocator per thread")) {
  CheckpointedChain<actckpt::NoOffload> mine, theirs;
  for (int i = 0; i < 3; ++i) theirs.layers[static_cast<std::size_t>(i)]->set_label("other " + std::to_string(i));
  MemoryMeter meter;
  MemoryTimeline timeline(meter, "mine");
  std::thread other([&] { theirs.forward(torch::randn({8, 64}, test_device::options())).sum().backward(); });
  other.join();
  mine.forward(torch::randn({8, 64}, test_device::options())).sum().backward();
  timeline.stop();
  for (const auto& p : timeline.phases()) CHECK_MESSAGE(p.find("other") == std::string::npos, "foreign phase ", p);
  CHECK(contains(phases_of(timeline), "bwd 0"));
}

TEST_CASE("MemoryTimeline: one checkpointed step's phases in order, and device bytes that add up sample by sample" * test_device::cpu_only("samples LibTorch's CPU allocator")) {
  CheckpointedChain<actckpt::NoOffload> chain(2);
  auto x = torch::randn({16, 64}, test_device::options());
  MemoryMeter meter;
  MemoryTimeline timeline(meter, "step", "start");
  auto loss = chain.forward(x).pow(2).mean();
  timeline.mark("loss");
  loss.backward();
  loss.reset();
  timeline.mark("optimizer");
  timeline.stop();

  // The layers' own phases and the marks, in the order the step went through them: forward in
  // layer order, backward in reverse, each once.
  std::vector<std::string> named;
  for (const auto& p : phases_of(timeline))
    if (p.rfind("fwd ", 0) == 0 || p.rfind("bwd ", 0) == 0 || p == "loss" || p == "optimizer") named.push_back(p);
  CHECK(named == std::vector<std::string>{"fwd 0", "fwd 1", "loss", "bwd 1", "bwd 0", "optimizer"});
  const auto spans = timeline.phase_spans();
  REQUIRE_FALSE(spans.empty());
  CHECK(spans.front().phase == "start");
  CHECK(spans.back().phase == "optimizer");
  for (const auto& span : spans) CHECK(span.begin_ns <= span.end_ns);

  // Every allocation and release moves the device bytes by exactly its delta; the forward and
  // the recompute allocate (each layer's fwd and bwd phase has an alloc of its own).
  const auto samples = timeline.samples();
  const auto phases = timeline.phases();
  std::set<std::string> allocating;
  for (std::size_t k = 1; k < samples.size(); ++k) {
    if (samples[k].delta_bytes == 0) continue;
    CAPTURE(k);
    CHECK(samples[k].device_bytes == samples[k - 1].device_bytes + samples[k].delta_bytes);
    if (samples[k].delta_bytes > 0) allocating.insert(phases[samples[k].phase]);
  }
  for (const char* p : {"fwd 0", "fwd 1", "bwd 1", "bwd 0"}) CHECK_MESSAGE(allocating.count(p) == 1, "no alloc in ", p);
  // Each layer's begin and end events are points of the timeline, once per layer.
  std::map<std::string, int> events;
  for (const auto& sample : samples) ++events[std::string(sample.what)];
  CHECK(events["forward_begin"] == 2);
  CHECK(events["forward_end"] == 2);
  CHECK(events["backward_begin"] == 2);
  CHECK(events["backward_end"] == 2);
  CHECK(events["mark"] == 2);
  CHECK(timeline.peak_device_bytes() >= samples.front().device_bytes);
}

