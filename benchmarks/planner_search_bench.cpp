// The planner's search on deep chains, as a Google Benchmark: plan_for_budget on synthetic step
// profiles of issue 20's kind (benchmarks/synthetic_chain.hpp, the chains
// tests/unit/planner/test_search_depth.cpp plans too) with 32, 128 and 512 layers, unlike and
// uniform, at budgets 30% and 70% of the way from the smallest feasible one to keeping every
// layer. docs/planner.md quotes its times, with this command:
//   build/<tree>/benchmarks/actckpt_planner_bench --benchmark_repetitions=3
// It needs no model and no torch::nn: the search plans from a profile alone.

#include <actckpt/planner/search.hpp>
#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "synthetic_chain.hpp"

namespace {

void plan_deep_chain(benchmark::State& state) {
  const auto n = static_cast<std::size_t>(state.range(0));
  const bool uniform = state.range(1) != 0;
  const double at = static_cast<double>(state.range(2)) / 100.0;
  const auto profile = synthetic_chain::chain(7 + n, n, uniform);  // the test's seeds
  const auto floor = actckpt::smallest_feasible_budget(profile);
  const auto top = synthetic_chain::keep_all_peak(profile);
  const auto budget = floor + static_cast<std::int64_t>(static_cast<double>(top - floor) * at);
  double predicted_ms = 0.0;
  for (auto _ : state) {
    const auto plan = actckpt::plan_for_budget(profile, budget);
    // (Not DoNotOptimize on the double itself: Google Benchmark 1.7's "+m,r" constraint lets GCC
    // put a double in a general register and hand back garbage, its issue #1340.)
    benchmark::DoNotOptimize(plan.choices.data());
    predicted_ms = plan.predicted_step_ms;
  }
  state.SetLabel(std::to_string(n) + (uniform ? " uniform" : " unlike") + " layers, predicted step " +
                 std::to_string(predicted_ms) + " ms");
}

}  // namespace

BENCHMARK(plan_deep_chain)
    ->ArgNames({"layers", "uniform", "budget_pct"})
    ->ArgsProduct({{32, 128, 512}, {0, 1}, {30, 70}})
    ->Unit(benchmark::kMillisecond);

BENCHMARK_MAIN();
