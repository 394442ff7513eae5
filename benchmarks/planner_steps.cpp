// actckpt_planner_steps: the memory planner on training steps that are not chains (issue 28),
// beside actckpt_bench's planner mode (which plans the transformer stack, a chain). Two steps:
//  - gan:  a DCGAN-shaped step, MLP-sized (pytorch/examples' dcgan): the discriminator's forward
//          three times (real, detached fakes, fakes for the generator's loss), three backward
//          calls, the generator's forward once; BatchNorm in both;
//  - unet: a U-Net-shaped step whose decoder concatenates the encoder's outputs (skips held).
// For each: the profile, then ckpt_planned at the smallest feasible budget and halfway to keeping
// every layer (mid:0.5), against checkpointing every layer and keeping every layer: predicted
// and measured peak (the meter, started before the model), median step time over --steps steps,
// and the planner's search time. Prints a markdown table; --out writes it and a JSON file.
//
//   actckpt_planner_steps [--device cpu|cuda] [--steps N] [--batch N] [--width N] [--out DIR]

#include <actckpt/actckpt.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

struct DenseImpl : torch::nn::Module {
  DenseImpl(int64_t in, int64_t out, bool norm, int act) : act_(act) {
    fc = register_module("fc", torch::nn::Linear(in, out));
    if (norm) bn = register_module("bn", torch::nn::BatchNorm1d(out));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = fc(x);
    if (bn) x = bn(x);
    if (act_ == 0) return torch::relu(x);
    if (act_ == 1) return torch::leaky_relu(x, 0.2);
    if (act_ == 2) return torch::tanh(x);
    return x;
  }
  int act_;
  torch::nn::Linear fc{nullptr};
  torch::nn::BatchNorm1d bn{nullptr};
};
TORCH_MODULE(Dense);
using Layer = actckpt::Checkpointed<Dense, actckpt::NoOffload>;

/// A model, its training step (gradients zeroed in place; no optimizer step) and its meter.
struct Step {
  explicit Step(torch::Device d) : device(d), meter(d) {}
  torch::Device device;
  actckpt::MemoryMeter meter;  // before the model: weights and gradients are in every figure
  std::shared_ptr<torch::nn::Module> model = std::make_shared<torch::nn::Module>();
  std::function<void()> body;
  Layer layer(int64_t in, int64_t out, bool norm, int act) {
    Layer l(Dense(in, out, norm, act));
    l->to(device);
    return l;
  }
  void run() {
    for (auto& p : model->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
    body();
  }
};

std::unique_ptr<Step> gan(torch::Device d, int64_t batch, int64_t width) {
  auto s = std::make_unique<Step>(d);
  torch::manual_seed(0);
  const int64_t nz = width / 8, image = width / 2;
  auto g = s->model->register_module("g", torch::nn::Sequential(s->layer(nz, width, true, 0), s->layer(width, width, true, 0),
                                                                s->layer(width, image, false, 2)));
  auto dn = s->model->register_module("d", torch::nn::Sequential(s->layer(image, width, false, 1), s->layer(width, width, true, 1),
                                                                 s->layer(width, 1, false, 3)));
  auto real = torch::rand({batch, image}, torch::TensorOptions().device(d)) * 2 - 1;
  s->body = [g, dn, real, batch, nz, d]() mutable {
    auto bce = [](const torch::Tensor& logits, double target) {
      return torch::binary_cross_entropy_with_logits(logits, torch::full_like(logits, target));
    };
    bce(dn->forward(real), 1.0).backward();
    auto fake = g->forward(torch::randn({batch, nz}, torch::TensorOptions().device(d)));
    bce(dn->forward(fake.detach()), 0.0).backward();
    bce(dn->forward(fake), 1.0).backward();
  };
  return s;
}

std::unique_ptr<Step> unet(torch::Device d, int64_t batch, int64_t width) {
  auto s = std::make_unique<Step>(d);
  torch::manual_seed(0);
  const int64_t in = width / 4;
  auto e1 = s->layer(in, width, true, 0), e2 = s->layer(width, width / 2, true, 0), mid = s->layer(width / 2, width / 2, true, 0);
  auto d2 = s->layer(width, width, true, 0), d1 = s->layer(2 * width, in, false, 3);
  s->model->register_module("unet", torch::nn::Sequential(e1, e2, mid, d2, d1));
  auto x = torch::randn({batch, in}, torch::TensorOptions().device(d));
  s->body = [=]() mutable {
    auto a = e1(x);
    auto b = e2(a);
    auto c = d2(torch::cat({mid(b), b}, 1));
    d1(torch::cat({c, a}, 1)).pow(2).mean().backward();
  };
  return s;
}

struct Row {
  std::string shape, mode, plan;
  std::int64_t budget = 0, predicted = 0, measured = 0;
  double predicted_ms = 0, measured_ms = 0, search_ms = 0;
};

/// Applies `choices`, runs a warm-up step, then `steps` measured ones: the peak and the median time.
void measure(Step& s, const actckpt::MemoryPlan& plan, int steps, Row& row) {
  plan.apply(*s.model);
  s.run();
  std::vector<double> ms;
  s.meter.reset_peak();
  for (int i = 0; i < steps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    s.run();
#if ACTCKPT_WITH_CUDA
    if (s.device.is_cuda()) torch::cuda::synchronize();
#endif
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  row.measured = s.meter.device_peak_bytes();
  std::sort(ms.begin(), ms.end());
  row.measured_ms = ms[ms.size() / 2];
}

actckpt::MemoryPlan uniform(const actckpt::StepProfile& p, actckpt::LayerChoice c) {
  actckpt::MemoryPlan plan;
  plan.choices.assign(p.layers.size(), c);
  for (const auto& l : p.layers) plan.labels.push_back(l.label), plan.module_index.push_back(l.module_index);
  const auto e = actckpt::evaluate_plan(p, plan.choices);
  plan.predicted_peak_bytes = e.peak_bytes;
  plan.predicted_step_ms = e.step_ms;
  return plan;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device_name = "cpu", out;
  int steps = 5;
  int64_t batch = 512, width = 1024;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--device") device_name = value();
    else if (a == "--steps") steps = std::stoi(value());
    else if (a == "--batch") batch = std::stoll(value());
    else if (a == "--width") width = std::stoll(value());
    else if (a == "--out") out = value();
    else throw std::invalid_argument("unknown flag " + a + " (--device, --steps, --batch, --width, --out)");
  }
  if (steps < 1 || batch < 2 || width < 16) throw std::invalid_argument("--steps >= 1, --batch >= 2, --width >= 16");
  const torch::Device device(device_name);
  std::vector<Row> rows;
  for (const std::string shape : {"gan", "unet"}) {
    auto s = shape == "gan" ? gan(device, batch, width) : unet(device, batch, width);
    s->model->train();
    actckpt::label_layers(*s->model);
    actckpt::PlannerOptions options;
    options.meter = &s->meter;
    const auto profile = actckpt::profile_step(*s->model, [&] { s->run(); }, options);
    const auto t0 = std::chrono::steady_clock::now();
    const auto floor = actckpt::smallest_feasible_budget(profile);
    const double floor_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    const auto keep = uniform(profile, actckpt::LayerChoice::keep);
    const auto ckpt = uniform(profile, actckpt::LayerChoice::checkpoint);
    const std::int64_t budgets[] = {floor, floor + (keep.predicted_peak_bytes - floor) / 2};
    const char* names[] = {"ckpt_planned @ floor", "ckpt_planned @ mid:0.5"};
    for (int b = 0; b < 2; ++b) {
      const auto t1 = std::chrono::steady_clock::now();
      const auto plan = actckpt::plan_for_budget(profile, budgets[b]);
      Row r{shape, names[b], plan.describe(), budgets[b], plan.predicted_peak_bytes, 0, plan.predicted_step_ms};
      r.search_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t1).count() + (b == 0 ? floor_ms : 0);
      measure(*s, plan, steps, r);
      rows.push_back(r);
    }
    for (const auto* p : {&ckpt, &keep}) {
      Row r{shape, p == &ckpt ? "checkpoint every layer" : "keep every layer", p->describe(), 0, p->predicted_peak_bytes, 0,
            p->predicted_step_ms};
      measure(*s, *p, steps, r);
      rows.push_back(r);
    }
    std::printf("%s: %s, %zu layers, %zu calls, %zu segments\n", shape.c_str(), profile.is_chain() ? "chain" : "call level",
                profile.layers.size(), profile.calls.size(), profile.points.size());
  }
  std::ostringstream md, js;
  auto mib = [](std::int64_t b) { return static_cast<double>(b) / 1048576.0; };
  md << "| step | mode | budget MiB | predicted peak MiB | measured peak MiB | predicted ms | measured ms | search ms | plan |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|\n";
  js << "[\n";
  char line[512];
  for (std::size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    std::snprintf(line, sizeof line, "| %s | %s | %s | %.2f | %.2f | %.1f | %.1f | %s | %s |\n", r.shape.c_str(), r.mode.c_str(),
                  r.budget ? std::to_string(mib(r.budget)).substr(0, 6).c_str() : "—", mib(r.predicted), mib(r.measured),
                  r.predicted_ms, r.measured_ms, r.budget ? std::to_string(r.search_ms).substr(0, 5).c_str() : "—", r.plan.c_str());
    md << line;
    std::snprintf(line, sizeof line,
                  "  {\"step\": \"%s\", \"mode\": \"%s\", \"budget_bytes\": %lld, \"predicted_peak_bytes\": %lld, "
                  "\"measured_peak_bytes\": %lld, \"predicted_ms\": %.3f, \"measured_ms\": %.3f, \"search_ms\": %.3f}%s\n",
                  r.shape.c_str(), r.mode.c_str(), static_cast<long long>(r.budget), static_cast<long long>(r.predicted),
                  static_cast<long long>(r.measured), r.predicted_ms, r.measured_ms, r.search_ms, i + 1 < rows.size() ? "," : "");
    js << line;
  }
  js << "]\n";
  std::printf("\n%s", md.str().c_str());
  if (!out.empty()) {
    std::filesystem::create_directories(out);
    std::ofstream(out + "/planner_steps.md") << md.str();
    std::ofstream(out + "/planner_steps.json") << js.str();
  }
  return 0;
}
