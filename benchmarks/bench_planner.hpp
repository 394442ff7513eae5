#pragma once
// The memory-budget planner in the benchmark: the budget flag (absolute, or relative to the
// classic / baseline peaks the planner's profile measures), the plan of mode ckpt_planned, and the
// budget sweep behind memory_budget_pareto.png (pareto.json).

#include <actckpt/planner/planner.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_options.hpp"
#include "bench_report.hpp"
#include "train_session.hpp"

namespace bench {

/// --memory_budget: "<MB>", "<F>xclassic", "<F>xbaseline" or "mid:<F>" (classic + F x (baseline -
/// classic)); --memory_budget_mb=N is "<N>". Classic's and baseline's peaks are those the
/// planner's profile measured: the planned model run with every layer checkpointed, every layer kept.
struct MemoryBudget {
  enum class Kind { mb, x_classic, x_baseline, mid };
  Kind kind = Kind::mb;
  double value = 0;
  std::string text;

  static MemoryBudget parse(const std::string& text) {
    MemoryBudget b;
    b.text = text;
    auto number = [&](const std::string& v) {
      std::size_t used = 0;
      double d = -1;
      try {
        d = std::stod(v, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != v.size() || v.empty() || !(d > 0))
        throw std::invalid_argument("--memory_budget: '" + text +
                                    "' is not a budget; use MB (512), a multiple of a measured peak (0.5xclassic, "
                                    "0.8xbaseline) or a point between them (mid:0.5), all positive");
      return d;
    };
    auto ends_with = [&](const std::string& suffix) {
      return text.size() > suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (text.rfind("mid:", 0) == 0) {
      b.kind = Kind::mid;
      b.value = number(text.substr(4));
    } else if (ends_with("xclassic")) {
      b.kind = Kind::x_classic;
      b.value = number(text.substr(0, text.size() - 8));
    } else if (ends_with("xbaseline")) {
      b.kind = Kind::x_baseline;
      b.value = number(text.substr(0, text.size() - 9));
    } else {
      b.value = number(text);
    }
    return b;
  }

  std::int64_t bytes(const actckpt::StepProfile& p) const {
    const double classic = static_cast<double>(p.step_peak_bytes[1]), baseline = static_cast<double>(p.step_peak_bytes[0]);
    switch (kind) {
      case Kind::mb: return static_cast<std::int64_t>(value * 1048576.0);
      case Kind::x_classic: return static_cast<std::int64_t>(value * classic);
      case Kind::x_baseline: return static_cast<std::int64_t>(value * baseline);
      case Kind::mid: return static_cast<std::int64_t>(classic + value * (baseline - classic));
    }
    return 0;
  }
};

/// Profiles `s`'s model (its meter: weights, gradients and optimizer state are in the bytes).
inline actckpt::StepProfile profile_session(TrainSession& s, int64_t profile_steps) {
  actckpt::PlannerOptions options;
  options.meter = &s.meter();
  options.profile_steps = static_cast<int>(std::max<int64_t>(1, profile_steps));
  return actckpt::profile_step(*s.model(), [&s] {
    s.forward_backward();
    synchronize(s.device());
  }, options);
}

inline PlanSummary make_plan(TrainSession& s, const std::string& budget_text, int64_t profile_steps) {
  PlanSummary p;
  p.budget_text = budget_text;
  p.profile = profile_session(s, profile_steps);
  p.floor_bytes = actckpt::smallest_feasible_budget(p.profile);
  p.plan = actckpt::plan_for_budget(p.profile, MemoryBudget::parse(budget_text).bytes(p.profile));
  std::printf("memory plan for ckpt_planned: budget %s = %.2f MB (profile: classic %.2f MB, baseline %.2f MB, "
              "smallest feasible %.2f MB): %s; predicted peak %.2f MB, step %.1f ms\n",
              budget_text.c_str(), static_cast<double>(p.plan.budget_bytes) / 1048576.0,
              static_cast<double>(p.profile.step_peak_bytes[1]) / 1048576.0,
              static_cast<double>(p.profile.step_peak_bytes[0]) / 1048576.0,
              static_cast<double>(p.floor_bytes) / 1048576.0, p.plan.describe().c_str(),
              static_cast<double>(p.plan.predicted_peak_bytes) / 1048576.0, p.plan.predicted_step_ms);
  std::fflush(stdout);
  return p;
}

/// ckpt_planned's floor is its plan's predicted peak (the table's "peak over floor" is then the
/// prediction's error): the keep part becomes what the cost model predicts above the other parts.
inline void use_predicted_floor(Floor& f, const actckpt::MemoryPlan& plan) {
  f.keep = 0;
  f.keep = plan.predicted_peak_bytes - f.total();
  f.keep_formula = "the plan's predicted peak minus the other parts";
}

/// One letter per layer, forward order: K keep, C checkpoint, S sync offload, A async offload,
/// O offload saved, D disk offload.
inline std::string plan_code(const actckpt::MemoryPlan& plan) {
  std::string code;
  for (auto c : plan.choices) {
    switch (c) {
      case actckpt::LayerChoice::keep: code += 'K'; break;
      case actckpt::LayerChoice::checkpoint: code += 'C'; break;
      case actckpt::LayerChoice::sync_offload: code += 'S'; break;
      case actckpt::LayerChoice::async_offload: code += 'A'; break;
      case actckpt::LayerChoice::offload_saved: code += 'O'; break;
      case actckpt::LayerChoice::disk_offload: code += 'D'; break;
    }
  }
  return code;
}

/// One point of the budget sweep: a planned run at one budget, or a uniform mode.
struct SweepPoint {
  std::string name;  // "planned @ 1.00xclassic", or the mode
  StackMode mode;
  std::optional<actckpt::MemoryPlan> plan;
  std::int64_t measured_peak_bytes = 0;
  std::vector<double> round_ms{};
};

/// --pareto_budgets=N: the planner at N budgets from its smallest feasible one to baseline's
/// peak, plus classic's peak and the midpoint between classic's and baseline's (the targets),
/// and the uniform modes. Each point's peak is measured with its model alone (a CUDA meter reads
/// the whole device); then all models run `rounds` round-robin rounds, one step each per round,
/// so their times are side by side. Writes pareto.json to `dir` and prints a table.
inline void run_pareto(const BenchOptions& options, const PlanSummary& planned, int64_t budgets, int64_t rounds,
                       const std::string& dir, const std::function<void(const std::string&)>& progress) {
  const auto& cfg = options.model;
  const auto& profile = planned.profile;
  const auto baseline = profile.step_peak_bytes[0], classic = profile.step_peak_bytes[1];
  std::vector<std::pair<std::string, std::int64_t>> wanted;
  for (int64_t i = 0; i < budgets; ++i) {
    const auto b = planned.floor_bytes + (baseline - planned.floor_bytes) * i / std::max<int64_t>(1, budgets - 1);
    wanted.emplace_back(i == 0 ? "floor" : i + 1 == budgets ? "1.00xbaseline" : fmt("%.1f MB", mib(b)), b);
  }
  wanted.emplace_back("1.00xclassic", classic);
  wanted.emplace_back("mid:0.5", (classic + baseline) / 2);
  std::sort(wanted.begin(), wanted.end(), [](const auto& a, const auto& b) { return a.second < b.second; });

  std::vector<SweepPoint> points;
  for (auto mode : {StackMode::baseline, StackMode::ckpt_classic, StackMode::ckpt_sync_offload,
                    StackMode::ckpt_async_offload})
    points.push_back(SweepPoint{std::string(actckpt::models::to_string(mode)), mode, std::nullopt});
  for (const auto& [name, bytes] : wanted) {
    try {
      points.push_back(SweepPoint{"planned @ " + name, StackMode::ckpt_planned, actckpt::plan_for_budget(profile, bytes)});
    } catch (const std::exception& e) {
      std::fprintf(stderr, "pareto: budget %s skipped: %s\n", name.c_str(), e.what());
    }
  }
  auto make_session = [&](const SweepPoint& p) {
    auto s = std::make_unique<TrainSession>(cfg, p.mode, cfg.num_layers, /*input_requires_grad=*/false, options.seed);
    if (p.plan) p.plan->apply(*s->model());
    for (int64_t i = 0; i < std::max<int64_t>(options.warmup, 1); ++i) s->timed_step();
    return s;
  };
  for (auto& p : points) {
    progress("pareto: peak of " + p.name);
    auto s = make_session(p);
    s->meter().reset_peak();
    s->timed_step();
    synchronize(s->device());
    p.measured_peak_bytes = s->meter().device_peak_bytes();
  }
  {
    // Sessions install memory meters (thread-local hooks) that must end in reverse order.
    std::vector<std::unique_ptr<TrainSession>> sessions;
    for (auto& p : points) sessions.push_back(make_session(p));
    for (int64_t r = 0; r < rounds; ++r) {
      progress("pareto: round " + std::to_string(r + 1) + "/" + std::to_string(rounds));
      for (std::size_t k = 0; k < points.size(); ++k) {
        const std::size_t i = (k + static_cast<std::size_t>(r)) % points.size();
        points[i].round_ms.push_back(sessions[i]->timed_step().wall_ms);
      }
    }
    while (!sessions.empty()) sessions.pop_back();
  }

  const auto& classic_ms = points[1].round_ms;
  auto vs_classic = [&](const SweepPoint& p) {
    std::vector<double> ratios;
    for (std::size_t i = 0; i < p.round_ms.size(); ++i) ratios.push_back(p.round_ms[i] / classic_ms[i]);
    return 100.0 * (median_of(ratios) - 1.0);
  };
  std::filesystem::create_directories(dir);
  std::ofstream out(dir + "/pareto.json");
  out << "{\n  \"config\": {\"device\": \"" << cfg.device << "\", \"dtype\": \"" << cfg.dtype
      << "\", \"total_tokens\": " << cfg.total_tokens << ", \"num_layers\": " << cfg.num_layers
      << ", \"hidden_dim\": " << cfg.hidden_dim << ", \"ff_dim\": " << cfg.ff_dim << ", \"batch_size\": " << cfg.batch_size
      << "},\n  \"rounds\": " << rounds << ",\n  \"profile\": {\"classic_peak_MB\": " << fmt("%.4f", mib(classic))
      << ", \"baseline_peak_MB\": " << fmt("%.4f", mib(baseline)) << ", \"floor_MB\": "
      << fmt("%.4f", mib(planned.floor_bytes)) << "},\n  \"points\": [";
  std::string table = "Memory-budget sweep (" + cfg.device + "; time: median of " + std::to_string(rounds) +
                      " round-robin rounds with every point's model alive; peak: each model alone)\n\n"
                      "| point | budget (MB) | predicted peak (MB) | measured peak (MB) | fits | ms/step | vs classic | plan |\n"
                      "|---|---:|---:|---:|---|---:|---:|---|\n";
  for (std::size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    const bool planned_point = p.plan.has_value();
    const double ms = median_of(p.round_ms);
    out << (i ? "," : "") << "\n    {\"name\": \"" << p.name << "\", \"mode\": \"" << actckpt::models::to_string(p.mode)
        << "\", \"measured_peak_MB\": " << fmt("%.4f", mib(p.measured_peak_bytes)) << ", \"ms_per_iter\": "
        << fmt("%.4f", ms) << ", \"time_vs_classic_pct\": " << fmt("%.4f", vs_classic(p)) << ", \"round_ms\": [";
    for (std::size_t r = 0; r < p.round_ms.size(); ++r) out << (r ? ", " : "") << fmt("%.2f", p.round_ms[r]);
    out << "]";
    if (planned_point) {
      out << ", \"budget_MB\": " << fmt("%.4f", mib(p.plan->budget_bytes)) << ", \"predicted_peak_MB\": "
          << fmt("%.4f", mib(p.plan->predicted_peak_bytes)) << ", \"predicted_ms\": "
          << fmt("%.4f", p.plan->predicted_step_ms) << ", \"fits\": "
          << (p.measured_peak_bytes <= p.plan->budget_bytes ? "true" : "false") << ", \"plan\": \""
          << p.plan->describe() << "\", \"code\": \"" << plan_code(*p.plan) << "\"";
    }
    out << "}";
    table += "| " + p.name + " | " + (planned_point ? fmt("%.2f", mib(p.plan->budget_bytes)) : "—") + " | " +
             (planned_point ? fmt("%.2f", mib(p.plan->predicted_peak_bytes)) : "—") + " | " +
             fmt("%.2f", mib(p.measured_peak_bytes)) + " | " +
             (planned_point ? (p.measured_peak_bytes <= p.plan->budget_bytes ? "yes" : "NO") : "—") + " | " +
             fmt("%.1f", ms) + " | " + fmt("%+.1f%%", vs_classic(p)) + " | " +
             (planned_point ? p.plan->describe() : "uniform") + " |\n";
  }
  out << "\n  ]\n}\n";
  std::ofstream(dir + "/pareto.md") << table;
  std::printf("\n%s\nwrote pareto.json and pareto.md to %s\n", table.c_str(), dir.c_str());
}

}  // namespace bench
