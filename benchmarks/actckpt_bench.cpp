// actckpt_bench: Google Benchmark fixtures, one per mode (baseline, ckpt_classic,
// ckpt_sync_offload, ckpt_async_offload, offload_saved, and ckpt_planned with --memory_budget: the memory
// planner's plan, bench_planner.hpp), templated on the checkpoint policy. One iteration is
// one full training step (forward, backward, SGD step), timed manually after a device sync.
// Counters: ms_per_iter (median step), peak_MB, host_stash_MB, floor_MB, over_floor_pct and
// the deltas against baseline. After the runs (and, with --rounds, round-robin rounds of all
// modes for drift-robust times) it prints the seed's table and writes results and memory
// timelines to --out.
//
//   actckpt_bench --help
//   OMP_NUM_THREADS=2 actckpt_bench --out=out --benchmark_out=out/benchmark.json
//   actckpt_bench --device cuda --total_tokens 12000 --num_layers 12 --hidden_dim 1024
//       --head_dim 64 --ff_dim 4096 --batch_size 48 --dtype fp16 --steps 3

#include <actckpt/actckpt.hpp>
#include <benchmark/benchmark.h>
#include <torch/version.h>

#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <memory>
#include <optional>
#include <string>

#include "bench_options.hpp"
#include "bench_planner.hpp"
#include "bench_report.hpp"
#include "train_session.hpp"

namespace bench {

using actckpt::models::NoCheckpoint;

/// --warm_allocator (default on): every mode is timed on warm host memory, as a GPU's caching
/// allocator keeps device memory. glibc otherwise returns large freed blocks to the kernel at
/// once (munmap above the mmap threshold, heap trimming above the trim threshold) and page-faults
/// them in again on the next step: the baseline, which frees ~200 MB of activations per step,
/// paid that every step, and while the round-robin rounds keep four models alive its blocks
/// were never reused warm (the rounds put the baseline 30% behind checkpointing). Blocks up to
/// 32 MiB (glibc's largest mmap threshold) now come from the heap, and the heap is never trimmed.
/// Returns the setting, for the table header and results.json.
inline std::string apply_allocator_setting(bool warm) {
  if (!warm) return "glibc malloc defaults (--warm_allocator=false)";
  constexpr int mmap_threshold = 32 << 20;
  const bool ok = mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
  if (!ok) return "glibc malloc defaults (mallopt refused the warm setting)";
  return "warm: glibc mallopt M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=2 GiB (--warm_allocator=false for the defaults)";
}
using actckpt::models::stack_mode_of;

/// What the fixtures share: the options, the per-block probes (measured once) and the results.
struct Run {
  BenchOptions options;
  RunInfo info;
  Report report;
  std::optional<BlockProbe> unwrapped_probe, checkpointed_probe;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();

  static Run& get() {
    static Run run;
    return run;
  }
  double elapsed_s() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }
  void progress(StackMode mode, const std::string& what) const {
    progress(std::string(actckpt::models::to_string(mode)), what);
  }
  /// `tag` says what is running: a mode, or "rounds" (all modes in turn).
  void progress(const std::string& tag, const std::string& what) const {
    if (options.quiet) return;
    std::fprintf(stderr, "[%-18s] %-28s elapsed %6.1f s\n", tag.c_str(), what.c_str(), elapsed_s());
  }
  const BlockProbe& probe(StackMode mode) {
    auto& slot = mode == StackMode::baseline ? unwrapped_probe : checkpointed_probe;
    if (!slot) {
      progress(mode, mode == StackMode::baseline ? "probing one unwrapped block" : "probing one checkpointed block");
      slot = probe_block(options.model, mode == StackMode::baseline ? StackMode::baseline : StackMode::ckpt_classic,
                         options.seed);
    }
    return *slot;
  }
  /// Mode ckpt_planned: the first planned session is profiled and planned for --memory_budget;
  /// every later one (repetitions, rounds) gets the same plan.
  void apply_plan(TrainSession& s) {
    if (!report.plan) {
      progress(StackMode::ckpt_planned, "profiling for the memory plan");
      report.plan = make_plan(s, options.memory_budget, options.plan_profile_steps);
    }
    report.plan->plan.apply(*s.model());
  }
};

/// Modes whose floor is built from the unwrapped block's probe (no recompute).
constexpr bool keeps_activations(StackMode mode) { return mode == StackMode::baseline || mode == StackMode::offload_saved; }

template <class Policy>
class TrainStep : public benchmark::Fixture {
 public:
  static constexpr StackMode mode = stack_mode_of<Policy>();

  void SetUp(benchmark::State&) override {
    auto& run = Run::get();
    try {
      run.probe(keeps_activations(mode) ? StackMode::baseline : StackMode::ckpt_classic);
      run.progress(mode, "building the model");
      session_.emplace(run.options.model, mode, run.options.model.num_layers, /*input_requires_grad=*/false,
                       run.options.seed);
      if constexpr (mode == StackMode::ckpt_planned) run.apply_plan(*session_);
      for (int64_t i = 0; i < run.options.warmup; ++i) {
        run.progress(mode, "warmup " + std::to_string(i + 1) + "/" + std::to_string(run.options.warmup));
        session_->timed_step();
      }
      session_->meter().reset_peak();
      session_->offload_context().reset_telemetry();
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  }

  void TearDown(benchmark::State&) override {
    auto& run = Run::get();
    if (session_ && error_.empty()) {
      try {
        auto& result = run.report.at(mode);
        if (run.options.timeline && !result.timeline) {
          run.progress(mode, "recording a memory timeline");
          auto timeline = std::make_unique<actckpt::MemoryTimeline>(
              session_->meter(), std::string(actckpt::models::to_string(mode)), "zero_grad");
          if (const auto& disk = session_->offload_context().disk_ptr()) timeline->watch_disk(disk);
          session_->offload_context().reset_telemetry();
          session_->step(timeline.get());
          synchronize(session_->device());
          timeline->stop();
          timeline->add_copies(session_->offload_context().take_telemetry().spans);
          result.timeline = std::move(timeline);
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "[%s] timeline failed: %s\n", std::string(actckpt::models::to_string(mode)).c_str(), e.what());
      }
    }
    session_.reset();
  }

  void run(benchmark::State& state) {
    auto& run = Run::get();
    if (!error_.empty()) {
      state.SkipWithError(error_.c_str());
      for (auto _ : state) {
      }
      return;
    }
    auto& result = run.report.at(mode);
    const auto total = state.max_iterations;
    int64_t i = 0;
    ModeResult this_run;  // this repetition alone, for Google Benchmark's counters
    for (auto _ : state) {
      const auto time = session_->timed_step();  // synchronized: the step's copies are done
      auto telemetry = session_->offload_context().take_telemetry();
      telemetry.spans.clear();  // the figures are kept per step; the spans only for the timeline
      result.telemetry.push_back(std::move(telemetry));
      const double ms = time.wall_ms;
      state.SetIterationTime(ms / 1e3);
      result.step_ms.push_back(ms);
      result.step_cpu_ms.push_back(time.cpu_ms);
      this_run.step_ms.push_back(ms);
      ++i;
      char what[64];
      std::snprintf(what, sizeof what, "step %lld/%lld: %.1f ms", static_cast<long long>(i),
                    static_cast<long long>(total), ms);
      run.progress(mode, what);
    }
    synchronize(session_->device());
    auto& meter = session_->meter();
    result.peak_bytes = std::max(result.peak_bytes, meter.device_peak_bytes());
    result.allocated_peak_bytes = std::max(result.allocated_peak_bytes, meter.device_allocated_peak_bytes());
    result.host_stash_peak_bytes = std::max(result.host_stash_peak_bytes, meter.host_stash_peak_bytes());
    const auto pool = meter.pool().stats();
    result.pool_peak_stashed_bytes = std::max(result.pool_peak_stashed_bytes, static_cast<int64_t>(pool.peak_stashed_bytes));
    result.pool_peak_reserved_bytes = std::max(result.pool_peak_reserved_bytes, static_cast<int64_t>(pool.peak_reserved_bytes));
    if (const auto& disk = session_->offload_context().disk_ptr()) {
      result.disk_peak_bytes = std::max(result.disk_peak_bytes, static_cast<int64_t>(disk->stats().peak_live_bytes));
      result.host_budget_bytes = static_cast<int64_t>(meter.pool().limit());
      result.disk_io_path = disk->io_path(session_->device().type());
    }
    result.resident_bytes = meter.device_bytes();
    result.floor = analytic_floor(*session_, run.options.model, result.resident_bytes, run.probe(keeps_activations(mode) ? StackMode::baseline : StackMode::ckpt_classic),
                                  run.probe(StackMode::ckpt_classic));
    if constexpr (mode == StackMode::ckpt_planned) use_predicted_floor(result.floor, run.report.plan->plan);

    state.counters["ms_per_iter"] = this_run.median_ms();
    state.counters["peak_MB"] = mib(result.peak_bytes);
    // Only where something was stashed on the host: over repetitions, Google Benchmark's
    // coefficient of variation of an all-zero counter is 0/0, and its JSON writer prints that as
    // a bare NaN, which strict JSON readers reject. The table and results.json still show 0.
    if (result.host_stash_peak_bytes > 0) state.counters["host_stash_MB"] = mib(result.host_stash_peak_bytes);
    state.counters["floor_MB"] = mib(result.floor.total());
    state.counters["over_floor_pct"] = result.over_floor_pct();
    if (auto d = run.report.time_vs(mode, StackMode::baseline)) state.counters["time_vs_baseline_pct"] = *d;
    if (auto d = run.report.peak_vs(mode, StackMode::baseline)) state.counters["peak_vs_baseline_pct"] = *d;
  }

 private:
  std::optional<TrainSession> session_;
  std::string error_;
};

}  // namespace bench

namespace bench {

// One fixture per mode; registered in main once the flags (steps) are known.
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, baseline, NoCheckpoint)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_classic, actckpt::NoOffload)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_sync_offload, actckpt::SyncOffload)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_async_offload, actckpt::AsyncOffload)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, offload_saved, actckpt::OffloadSaved)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_classic_reentrant, actckpt::Reentrant<actckpt::NoOffload>)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_sync_offload_reentrant, actckpt::Reentrant<actckpt::SyncOffload>)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_async_offload_reentrant, actckpt::Reentrant<actckpt::AsyncOffload>)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_disk_offload, actckpt::DiskOffload)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_disk_spill, actckpt::models::DiskSpill)(benchmark::State& state) { run(state); }
BENCHMARK_TEMPLATE_DEFINE_F(TrainStep, ckpt_planned, actckpt::models::PlannedCheckpoint)(benchmark::State& state) {
  run(state);
}

/// --steps measured iterations each (0: Google Benchmark decides), timed manually.
void configure(benchmark::internal::Benchmark* b) {
  if (const auto steps = Run::get().options.model.steps; steps > 0) b->Iterations(steps);
  b->UseManualTime()->Unit(benchmark::kMillisecond);
}

/// Called once the flags are parsed (the iteration count is a flag); baseline first, so the
/// others can report their deltas against it.
void register_fixtures() {
  BENCHMARK_REGISTER_F(TrainStep, baseline)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_classic)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_sync_offload)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_async_offload)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, offload_saved)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_classic_reentrant)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_sync_offload_reentrant)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_async_offload_reentrant)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_disk_offload)->Apply(configure);
  BENCHMARK_REGISTER_F(TrainStep, ckpt_disk_spill)->Apply(configure);
  if (!Run::get().options.memory_budget.empty()) BENCHMARK_REGISTER_F(TrainStep, ckpt_planned)->Apply(configure);
}

/// --rounds: every mode that ran gets a model of its own, all alive at once; then each round runs
/// one step of every mode, the order rotated from round to round. On a machine whose speed
/// drifts (a shared VM: measured 330 vs 530 ms for the same step minutes apart), two steps of a
/// round run seconds apart, so the per-round ratio cancels most of the drift that Google
/// Benchmark's per-mode medians keep.
void run_rounds(Run& run) {
  std::vector<StackMode> modes;
  for (auto mode : actckpt::models::all_stack_modes)
    if (run.report.find(mode)) modes.push_back(mode);
  if (modes.size() < 2) return;  // nothing to pair
  const auto& cfg = run.options.model;
  // Sessions install memory meters (thread-local hooks) that must end in reverse order.
  std::vector<std::unique_ptr<TrainSession>> sessions;
  try {
    for (auto mode : modes) {
      run.progress(mode, "building the model for the rounds");
      sessions.push_back(std::make_unique<TrainSession>(cfg, mode, cfg.num_layers, /*input_requires_grad=*/false,
                                                        run.options.seed));
      if (mode == StackMode::ckpt_planned) run.apply_plan(*sessions.back());
      for (int64_t i = 0; i < std::max<int64_t>(run.options.warmup, 1); ++i) sessions.back()->timed_step();
    }
    const std::size_t n = modes.size();
    for (int64_t r = 0; r < run.options.rounds; ++r) {
      std::string line = "round " + std::to_string(r + 1) + "/" + std::to_string(run.options.rounds) + ":";
      for (std::size_t k = 0; k < n; ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(r)) % n;
        const double ms = sessions[i]->timed_step().wall_ms;
        run.report.at(modes[i]).round_ms.push_back(ms);
        char part[64];
        std::snprintf(part, sizeof part, "%s %s %.0f", k ? "," : "", std::string(actckpt::models::to_string(modes[i])).c_str(), ms);
        line += part;
      }
      run.progress("rounds", line + " ms");
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "actckpt_bench: the round-robin rounds failed (%s); the table reports Google Benchmark's "
                         "steps instead\n", e.what());
    for (auto mode : modes) run.report.at(mode).round_ms.clear();
  }
  while (!sessions.empty()) sessions.pop_back();
}

}  // namespace bench

namespace {

void print_help() {
  bench::print_usage(std::cout);
  benchmark::PrintDefaultHelp();
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv, print_help);  // takes out --benchmark_* flags (and --help)
  auto& run = bench::Run::get();
  try {
    run.options = bench::parse_options(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "actckpt_bench: " << e.what() << "\n";
    return 2;
  }
  const auto& cfg = run.options.model;
  run.info.allocator = bench::apply_allocator_setting(run.options.warm_allocator);
  if (run.options.threads > 0) torch::set_num_threads(static_cast<int>(run.options.threads));
  if (cfg.torch_device().is_cuda() && !torch::cuda::is_available()) {
    std::cerr << "actckpt_bench: --device " << cfg.device << " but no CUDA device is available\n";
    return 2;
  }

  auto& info = run.info;
  info.options = run.options;
  info.intra_op_threads = torch::get_num_threads();
  info.inter_op_threads = torch::get_num_interop_threads();
  const char* omp = std::getenv("OMP_NUM_THREADS");
  info.omp_num_threads = omp ? omp : "(unset)";
  const char* wait_policy = std::getenv("OMP_WAIT_POLICY");
  info.torch_version = TORCH_VERSION;
  {
    actckpt::models::TransformerStack probe(cfg.block_options(), cfg.num_layers, actckpt::models::StackMode::baseline);
    for (const auto& p : probe->parameters()) info.parameters += p.numel();
  }
  std::printf("actckpt_bench: LibTorch %s, device %s, dtype %s; threads: intra-op %d (OMP_NUM_THREADS=%s, "
              "OMP_WAIT_POLICY=%s), inter-op %d\n",
              TORCH_VERSION, cfg.device.c_str(), cfg.dtype.c_str(), info.intra_op_threads, info.omp_num_threads.c_str(),
              wait_policy ? wait_policy : "(unset)", info.inter_op_threads);
  std::printf("allocator: %s\n", info.allocator.c_str());
  std::printf("model: %lld layers, hidden %lld, %lld heads of %lld, ff %lld, batch %lld x seq %lld = %lld tokens, "
              "%.2f M parameters; %lld warmup + %lld measured steps per mode\n",
              static_cast<long long>(cfg.num_layers), static_cast<long long>(cfg.hidden_dim),
              static_cast<long long>(cfg.num_heads()), static_cast<long long>(cfg.head_dim),
              static_cast<long long>(cfg.ff_dim), static_cast<long long>(cfg.batch_size),
              static_cast<long long>(cfg.seq_len()), static_cast<long long>(cfg.batch_size * cfg.seq_len()),
              static_cast<double>(info.parameters) / 1e6, static_cast<long long>(run.options.warmup),
              static_cast<long long>(cfg.steps));
  std::fflush(stdout);
  benchmark::AddCustomContext("actckpt_device", cfg.device);
  benchmark::AddCustomContext("actckpt_dtype", cfg.dtype);
  benchmark::AddCustomContext("actckpt_model",
                              std::to_string(cfg.num_layers) + " layers, hidden " + std::to_string(cfg.hidden_dim) +
                                  ", head " + std::to_string(cfg.head_dim) + ", ff " + std::to_string(cfg.ff_dim) +
                                  ", batch " + std::to_string(cfg.batch_size) + ", tokens " +
                                  std::to_string(cfg.total_tokens));
  benchmark::AddCustomContext("intra_op_threads", std::to_string(info.intra_op_threads));
  benchmark::AddCustomContext("OMP_NUM_THREADS", info.omp_num_threads);
  benchmark::AddCustomContext("OMP_WAIT_POLICY", wait_policy ? wait_policy : "(unset)");
  benchmark::AddCustomContext("torch_version", TORCH_VERSION);
  benchmark::AddCustomContext("allocator", info.allocator);

  // Registered here, not at static-initialization time, because the iteration count is a flag.
  bench::register_fixtures();

  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();

  if (run.report.empty()) {
    std::cerr << "actckpt_bench: no mode ran (check --benchmark_filter)\n";
    return 1;
  }
  if (run.options.rounds > 0) bench::run_rounds(run);
  int status = 0;
  if (run.options.pareto_budgets > 0 && run.report.plan) {
    try {
      // Twelve-odd models per round: 3 to 5 rounds (--rounds, clamped) keep the sweep near a minute on CPU.
      const int64_t sweep_rounds = std::clamp<int64_t>(run.options.rounds, 3, 5);
      bench::run_pareto(run.options, *run.report.plan, run.options.pareto_budgets, sweep_rounds,
                        run.options.out, [&](const std::string& what) { run.progress(bench::StackMode::ckpt_planned, what); });
    } catch (const std::exception& e) {
      std::cerr << "actckpt_bench: the memory-budget sweep failed: " << e.what() << "\n";
      status = 1;
    }
  }
  if (run.options.table) {
    std::cout << "\n";
    run.report.write_table(std::cout, info);
  }
  try {
    run.report.write_files(run.options.out, info);
    std::cout << "\nwrote results.{json,csv,md}" << (run.options.timeline ? ", timeline_<mode>.csv, memory_timeline.json" : "")
              << " to " << run.options.out << "\n";
  } catch (const std::exception& e) {
    std::cerr << "actckpt_bench: writing results to " << run.options.out << " failed: " << e.what() << "\n";
    return 1;
  }
  return status;
}
