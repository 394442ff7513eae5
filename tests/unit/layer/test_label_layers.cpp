// label_layers (label_layers.hpp): wrapped layers named by their path in the model, explicit labels
// kept unless asked, relabelling after the model changed, and the names reaching error messages,
// wrap_every's stacks and the planner's plans.

#include "test_models.hpp"

using namespace test_models;
using actckpt::Checkpointed;
using actckpt::NoOffload;

namespace {

/// A model as users write one: blocks in a registered Sequential, plus a wrapped head.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    for (int i = 0; i < 4; ++i) blocks->push_back(Checkpointed<MlpBlock, NoOffload>(MlpBlock(8, 16)));
    register_module("blocks", blocks);
    head = register_module("head", Checkpointed<MlpBlock, NoOffload>(MlpBlock(8, 16)));
    to(test_device::device());
  }
  torch::Tensor forward(torch::Tensor x) { return head(blocks->forward(x)); }
  torch::nn::Sequential blocks;
  Checkpointed<MlpBlock, NoOffload> head{nullptr};
};
TORCH_MODULE(Net);

actckpt::CheckpointedLayer& layer_of(const torch::nn::Sequential& seq, std::size_t i) {
  return *dynamic_cast<actckpt::CheckpointedLayer*>(seq->ptr(i).get());
}

}  // namespace

TEST_CASE("label_layers: every wrapped layer is named by its path; explicit labels are kept") {
  Net net;
  // Before: the demangled type name, not explicit.
  CHECK(layer_of(net->blocks, 0).label().find("MlpBlockImpl") != std::string::npos);
  CHECK_FALSE(layer_of(net->blocks, 0).label_is_explicit());
  layer_of(net->blocks, 2).set_label("attention");
  CHECK(layer_of(net->blocks, 2).label_is_explicit());

  CHECK(actckpt::label_layers(*net) == 4);
  CHECK(layer_of(net->blocks, 0).label() == "blocks.0");
  CHECK(layer_of(net->blocks, 1).label() == "blocks.1");
  CHECK(layer_of(net->blocks, 2).label() == "attention");  // explicit: kept
  CHECK(layer_of(net->blocks, 3).label() == "blocks.3");
  CHECK(net->head->label() == "head");
  CHECK_FALSE(net->head->label_is_explicit());  // derived: a later call may rename it

  SUBCASE("ExplicitLabels::replace names explicit ones by their path too") {
    CHECK(actckpt::label_layers(*net, actckpt::ExplicitLabels::replace) == 5);
    CHECK(layer_of(net->blocks, 2).label() == "blocks.2");
    CHECK_FALSE(layer_of(net->blocks, 2).label_is_explicit());
  }
  SUBCASE("a rearranged model gets its new paths") {
    torch::nn::Sequential outer;
    outer->push_back("stage", net);
    actckpt::label_layers(*outer);
    CHECK(layer_of(net->blocks, 0).label() == "stage.blocks.0");
    CHECK(layer_of(net->blocks, 2).label() == "attention");
    CHECK(net->head->label() == "stage.head");
  }
  SUBCASE("clone keeps labels and whether they are explicit") {
    auto derived = std::dynamic_pointer_cast<actckpt::CheckpointedLayer>(net->blocks->ptr(0)->clone());
    auto chosen = std::dynamic_pointer_cast<actckpt::CheckpointedLayer>(net->blocks->ptr(2)->clone());
    REQUIRE(derived != nullptr);
    REQUIRE(chosen != nullptr);
    CHECK(derived->label() == "blocks.0");
    CHECK_FALSE(derived->label_is_explicit());
    CHECK(chosen->label() == "attention");
    CHECK(chosen->label_is_explicit());
  }
}

TEST_CASE("label_layers: error messages name the layer by its path") {
  torch::nn::Sequential model;
  model->push_back(Checkpointed<MlpBlock, NoOffload>(MlpBlock(4, 8)));
  model->push_back(Checkpointed<ChangingBlock, NoOffload>(ChangingBlock(4)));
  actckpt::label_layers(*model);
  auto y = model->forward(torch::randn({3, 4}, test_device::options().requires_grad(true)));
  try {
    y.sum().backward();
    FAIL("the mismatching recompute was not reported");
  } catch (const actckpt::RecomputeMismatch& e) {
    CHECK(e.layer() == "1");
    CHECK(std::string(e.what()).find("checkpointed layer '1'") != std::string::npos);
  }
}

TEST_CASE("label_layers: wrap_every names its layers by their place, label_layers then by their full path") {
  std::vector<MlpBlock> blocks;
  for (int i = 0; i < 4; ++i) blocks.emplace_back(8, 16);
  auto stack = actckpt::wrap_every<NoOffload>(blocks, 2);  // layers 0 and 2 wrapped
  CHECK(layer_of(stack, 0).label() == "0");
  CHECK(layer_of(stack, 2).label() == "2");
  torch::nn::Module model;  // a Sequential cannot hold a Sequential: registered as a child
  model.register_module("encoder", stack);
  actckpt::label_layers(model);
  CHECK(layer_of(stack, 0).label() == "encoder.0");
  CHECK(layer_of(stack, 2).label() == "encoder.2");
}

TEST_CASE("label_layers: the planner names layers by their path, and leaves the labels as they were") {
  actckpt::MemoryMeter meter(test_device::device());
  Net net;
  layer_of(net->blocks, 1).set_label("special");
  net->train();
  const auto x = torch::randn({64, 8}, test_device::options());
  auto step = [&] {
    for (auto& p : net->parameters())
      if (p.grad().defined()) p.mutable_grad().zero_();
    net->forward(x).pow(2).mean().backward();
  };
  actckpt::PlannerOptions options;
  options.meter = &meter;
  const auto plan = actckpt::plan_memory(*net, step, std::int64_t{1} << 40, options);
  REQUIRE(plan.labels.size() == 5);
  // Forward order: the blocks, then the head.
  CHECK(plan.labels == std::vector<std::string>{"blocks.0", "special", "blocks.2", "blocks.3", "head"});
  // The model's own labels: untouched (type names, one explicit label).
  CHECK(layer_of(net->blocks, 0).label().find("MlpBlockImpl") != std::string::npos);
  CHECK_FALSE(layer_of(net->blocks, 0).label_is_explicit());
  CHECK(layer_of(net->blocks, 1).label() == "special");
  CHECK(layer_of(net->blocks, 1).label_is_explicit());
}
