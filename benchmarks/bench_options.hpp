#pragma once
// The benchmark's own flags (the seed's CLI names plus output options). Google Benchmark's flags
// (--benchmark_*) are taken out first by benchmark::Initialize; what is left must be ours.
// Each flag is read as --name=value or --name value; its default can come from the environment
// as ACTCKPT_<NAME> (upper case), e.g. ACTCKPT_TOTAL_TOKENS=4096.

#include "stack_config.hpp"

#include <cstdlib>
#include <functional>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace bench {

struct BenchOptions {
  StackConfig model = StackConfig::cpu_default();
  std::string out = ".";      // folder for results.{json,csv,md} and the timelines
  bool timeline = true;       // record one extra step per mode as a memory timeline
  int64_t warmup = 1;         // untimed steps before the measured ones
  int64_t rounds = 0;         // round-robin rounds after the Google Benchmark runs (0: none)
  int64_t threads = 0;        // intra-op threads (0: LibTorch's default, from OMP_NUM_THREADS)
  int64_t seed = 0;
  bool quiet = false;         // no per-step progress lines
  bool table = true;          // print the results table at the end
  bool warm_allocator = true; // time every mode on warm host memory (mallopt; see actckpt_bench.cpp)
  std::string memory_budget;  // mode ckpt_planned's budget (bench_planner.hpp's MemoryBudget); empty: no such mode
  int64_t pareto_budgets = 0;  // the budget sweep of pareto.json (0: none)
  int64_t plan_profile_steps = 2;  // measured sample steps per configuration of the planner's profile
};

namespace detail {

struct Flag {
  std::string name;
  std::string help;
  std::function<void(const std::string&)> set;
  std::function<std::string()> show;
};

inline int64_t to_int(const std::string& name, const std::string& v) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw std::invalid_argument("--" + name + " wants an integer, got '" + v + "'");
  return n;
}
inline double to_double(const std::string& name, const std::string& v) {
  std::size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty()) throw std::invalid_argument("--" + name + " wants a number, got '" + v + "'");
  return d;
}
inline bool to_bool(const std::string& name, const std::string& v) {
  if (v == "1" || v == "true" || v == "on" || v == "yes") return true;
  if (v == "0" || v == "false" || v == "off" || v == "no") return false;
  throw std::invalid_argument("--" + name + " wants true/false, got '" + v + "'");
}

inline std::vector<Flag> flags(BenchOptions& o) {
  auto& m = o.model;
  auto int_flag = [](std::string name, std::string help, int64_t& field) {
    return Flag{name, std::move(help), [&field, name](const std::string& v) { field = to_int(name, v); },
                [&field] { return std::to_string(field); }};
  };
  auto str_flag = [](std::string name, std::string help, std::string& field) {
    return Flag{std::move(name), std::move(help), [&field](const std::string& v) { field = v; }, [&field] { return field; }};
  };
  return {
      str_flag("device", "cpu, cuda or cuda:N", m.device),
      int_flag("total_tokens", "tokens per step; seq len = total_tokens / batch_size", m.total_tokens),
      int_flag("num_layers", "transformer blocks", m.num_layers),
      int_flag("hidden_dim", "model width", m.hidden_dim),
      int_flag("head_dim", "attention head width (heads = hidden_dim / head_dim)", m.head_dim),
      int_flag("ff_dim", "MLP width", m.ff_dim),
      int_flag("batch_size", "sequences per step", m.batch_size),
      int_flag("steps", "measured training steps per mode (Google Benchmark iterations)", m.steps),
      str_flag("dtype", "float32, bf16 or fp16 (autocast; weights stay float32)", m.dtype),
      Flag{"dropout", "dropout in each block", [&m](const std::string& v) { m.dropout = to_double("dropout", v); },
           [&m] { return std::to_string(m.dropout); }},
      str_flag("out", "output folder (results.json/csv/md, timeline_<mode>.csv, memory_timeline.json)", o.out),
      Flag{"timeline", "record one extra step per mode as a memory timeline (true/false)",
           [&o](const std::string& v) { o.timeline = to_bool("timeline", v); },
           [&o] { return std::string(o.timeline ? "true" : "false"); }},
      int_flag("warmup", "untimed steps per mode before the measured ones", o.warmup),
      int_flag("rounds",
               "then N round-robin rounds, one step of every mode that ran per round (all its models\n"
               "                              at once): the table's times become round medians and its deltas\n"
               "                              medians of per-round ratios, robust to a machine whose speed drifts",
               o.rounds),
      int_flag("threads", "intra-op threads (0: LibTorch's default, from OMP_NUM_THREADS)", o.threads),
      int_flag("seed", "random seed", o.seed),
      Flag{"quiet", "no per-step progress lines (true/false)", [&o](const std::string& v) { o.quiet = to_bool("quiet", v); },
           [&o] { return std::string(o.quiet ? "true" : "false"); }},
      Flag{"table", "print the results table at the end (true/false; it is written to --out either way)",
           [&o](const std::string& v) { o.table = to_bool("table", v); },
           [&o] { return std::string(o.table ? "true" : "false"); }},
      Flag{"warm_allocator",
           "time every mode on warm host memory: glibc keeps freed blocks up to 32 MiB instead of\n"
           "                              returning them to the kernel (true/false; false: malloc defaults)",
           [&o](const std::string& v) { o.warm_allocator = to_bool("warm_allocator", v); },
           [&o] { return std::string(o.warm_allocator ? "true" : "false"); }},
      str_flag("memory_budget",
               "adds mode ckpt_planned: the memory planner's fastest plan under this budget. MB (512),\n"
               "                              a multiple of the planner's measured classic or baseline peak\n"
               "                              (0.5xclassic, 0.8xbaseline), or mid:F = classic + F x (baseline - classic)",
               o.memory_budget),
      Flag{"memory_budget_mb", "the same as --memory_budget=N (MB = 2^20 bytes)",
           [&o](const std::string& v) { o.memory_budget = std::to_string(to_double("memory_budget_mb", v)); },
           [&o] { return o.memory_budget.empty() ? std::string("0") : o.memory_budget; }},
      int_flag("pareto_budgets",
               "with --memory_budget: then the planner at N budgets from its smallest feasible one to\n"
               "                              baseline's peak (plus classic's peak and mid:0.5) and the uniform modes,\n"
               "                              peaks measured alone, times in 3-5 round-robin rounds (--rounds clamped):\n"
               "                              pareto.json, pareto.md (0: none)",
               o.pareto_budgets),
      int_flag("plan_profile_steps", "measured sample steps per configuration of the planner's profile", o.plan_profile_steps),
  };
}

inline std::string env_name(const std::string& flag) {
  std::string e = "ACTCKPT_";
  for (char c : flag) e += static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return e;
}

}  // namespace detail

inline void print_usage(std::ostream& out) {
  BenchOptions defaults;
  out << "actckpt_bench: one training step (forward, backward, SGD step) per iteration of a stack of\n"
         "pre-norm transformer blocks, in four modes: baseline, ckpt_classic, ckpt_sync_offload,\n"
         "ckpt_async_offload; offload_saved (no recompute, every saved activation in the host pool);\n"
         "ckpt_disk_offload and ckpt_disk_spill (the disk tier: DiskOffload, and async offload with a\n"
         "host budget of a quarter of what it stashes, the rest on disk; the store's directory is\n"
         "$ACTCKPT_DISK_DIR, else $TMPDIR, else /tmp);\n"
         "and ckpt_planned with --memory_budget (the memory planner's plan).\n"
         "Prints the results table and writes it, with memory timelines, to --out.\n\n"
         "Model and output flags (--name=value or --name value; default also from $ACTCKPT_<NAME>):\n";
  for (const auto& f : detail::flags(defaults)) {
    std::string lhs = "  --" + f.name + "=" + f.show();
    out << lhs << std::string(lhs.size() < 30 ? 30 - lhs.size() : 1, ' ') << f.help << "\n";
  }
  out << "\nSeed configuration (GPU): --device cuda --total_tokens 12000 --num_layers 12 --hidden_dim 1024\n"
         "  --head_dim 64 --ff_dim 4096 --batch_size 48 --dtype fp16 --steps 3\n"
         "Select modes with --benchmark_filter (e.g. --benchmark_filter='baseline|async').\n\n"
         "Google Benchmark flags:\n";
}

/// Reads ACTCKPT_* variables, then the flags left in argv after benchmark::Initialize. Throws
/// std::invalid_argument on an unknown flag or a bad value.
inline BenchOptions parse_options(int argc, char** argv) {
  BenchOptions o;
  auto fs = detail::flags(o);
  for (auto& f : fs) {
    if (const char* v = std::getenv(detail::env_name(f.name).c_str()); v != nullptr && *v != '\0') f.set(v);
  }
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) throw std::invalid_argument("unexpected argument '" + arg + "' (flags start with --)");
    std::string name = arg.substr(2), value;
    const auto eq = name.find('=');
    bool has_value = eq != std::string::npos;
    if (has_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    detail::Flag* flag = nullptr;
    for (auto& f : fs)
      if (f.name == name) flag = &f;
    if (flag == nullptr) throw std::invalid_argument("unknown flag --" + name + " (see --help)");
    if (!has_value) {
      if (i + 1 >= argc) throw std::invalid_argument("--" + name + " needs a value");
      value = argv[++i];
    }
    flag->set(value);
  }
  o.model.validate();
  if (o.warmup < 0) throw std::invalid_argument("--warmup must not be negative");
  if (o.rounds < 0) throw std::invalid_argument("--rounds must not be negative");
  if (o.pareto_budgets < 0 || o.pareto_budgets == 1)
    throw std::invalid_argument("--pareto_budgets must be 0 (none) or at least 2 (the floor and baseline's peak)");
  if (o.pareto_budgets > 0 && o.memory_budget.empty())
    throw std::invalid_argument("--pareto_budgets needs --memory_budget (the sweep reuses mode ckpt_planned's profile)");
  if (o.plan_profile_steps < 1) throw std::invalid_argument("--plan_profile_steps must be at least 1");
  return o;
}

}  // namespace bench
