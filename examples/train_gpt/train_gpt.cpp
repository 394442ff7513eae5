// train_gpt: a character-level GPT trained on a real text, with its transformer blocks
// checkpointed (and their stashed inputs offloaded to host memory) by actckpt.
//
//   train_gpt --mode async --steps 300            # see --help for every flag
//
// The model is the benchmark's (actckpt/models/transformer_stack.hpp); --mode picks the
// compile-time policy its blocks are wrapped with. Checkpointing does not change training: on
// CPU in float32 every mode prints the same loss at every step.
//
// Data parallel under torchrun (where built with actckpt::distributed):
//   torchrun --no_python --nproc_per_node=2 -r 1 -t 1 train_gpt --mode async --steps 300
// Each rank trains on its own share of every batch (--batch_size is the global batch); the
// gradients are averaged by actckpt::DistributedDataParallel; rank 0 alone prints and saves. A
// checkpoint does not depend on the number of ranks, so it resumes under any other.

#include <actckpt/actckpt.hpp>
#include <actckpt/measure/memory_meter.hpp>
#include <actckpt/models/transformer_stack.hpp>
#ifdef ACTCKPT_EXAMPLE_DISTRIBUTED
#include <actckpt/distributed/distributed.hpp>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef ACTCKPT_EXAMPLE_CORPUS
#define ACTCKPT_EXAMPLE_CORPUS "pride_and_prejudice.txt"
#endif

namespace {

using actckpt::AutocastScope;
using actckpt::models::GptModel;
using actckpt::models::GptOptions;
using actckpt::models::StackMode;
using actckpt::models::TransformerBlockOptions;

/// A mistake in the command line or the inputs: reported as one line, exit code 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ModelSize {
  int64_t num_layers = 4, hidden_dim = 128, head_dim = 32, ff_dim = 512, seq_len = 128;
};

struct Settings {
  std::string mode = "async";
  ModelSize size;
  int64_t batch_size = 16;
  double dropout = 0.0;
  int64_t steps = 300;
  double lr = 3e-3;
  std::string device = "cpu";
  std::string dtype = "float32";
  uint64_t seed = 1234;
  std::string data = ACTCKPT_EXAMPLE_CORPUS;
  std::string save, load;
  int64_t save_every = 0;    // also save every N steps (0: only at the end)
  double dist_timeout = 300;  // seconds a rank waits for the others before it fails
  int64_t log_every = 25;
  bool print_losses = false;
  int64_t eval_batches = 8;
  int64_t sample_length = 400;
  double temperature = 0.8;
  std::string prompt = "Elizabeth";
};

// ---------------------------------------------------------------------------------------------
// The model: the benchmark's GPT (token + position embedding, a stack of pre-norm transformer
// blocks, RMSNorm, LM head). --mode picks the stack's compile-time policy: each block becomes a
// Checkpointed<TransformerBlock, NoOffload / SyncOffload / AsyncOffload>, or stays plain.

StackMode stack_mode(const std::string& mode) {
  if (mode == "ckpt") return StackMode::ckpt_classic;
  if (mode == "sync") return StackMode::ckpt_sync_offload;
  if (mode == "async") return StackMode::ckpt_async_offload;
  return StackMode::baseline;
}

/// Parameter names are the same in every mode, so a checkpoint saved in one mode loads in any other.
GptModel build_model(const ModelSize& size, int64_t vocab_size, double dropout, const std::string& mode) {
  TransformerBlockOptions block(size.hidden_dim, size.head_dim, size.ff_dim);
  block.dropout(dropout);
  return GptModel(GptOptions(vocab_size, size.seq_len, block, size.num_layers).mode(stack_mode(mode)));
}

// ---------------------------------------------------------------------------------------------
// Data: the text's distinct bytes are the vocabulary; 90% trains, the last 10% validates.

struct Corpus {
  std::string vocab;                  // sorted distinct characters
  std::array<int64_t, 256> index{};   // character -> token id, -1 if absent
  torch::Tensor train, validation;    // token ids, int64

  std::vector<int64_t> encode(const std::string& text) const {
    std::vector<int64_t> ids;
    for (unsigned char c : text) {
      if (index[c] < 0) throw UsageError(std::string("the character '") + static_cast<char>(c) + "' does not occur in the corpus");
      ids.push_back(index[c]);
    }
    return ids;
  }
};

Corpus load_corpus(const std::string& path, int64_t seq_len) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError("cannot read the corpus " + path);
  std::ostringstream buffer;
  buffer << in.rdbuf();
  const std::string text = buffer.str();

  Corpus corpus;
  std::array<bool, 256> seen{};
  for (unsigned char c : text) seen[c] = true;
  corpus.index.fill(-1);
  for (int c = 0; c < 256; ++c) {
    if (!seen[c]) continue;
    corpus.index[c] = static_cast<int64_t>(corpus.vocab.size());
    corpus.vocab.push_back(static_cast<char>(c));
  }
  auto ids = torch::tensor(corpus.encode(text), torch::kLong);
  const int64_t split = ids.size(0) * 9 / 10;
  corpus.train = ids.slice(0, 0, split);
  corpus.validation = ids.slice(0, split);
  if (corpus.validation.size(0) <= seq_len + 1) {
    throw UsageError("the corpus " + path + " is too short for --seq_len " + std::to_string(seq_len) + " (" +
                     std::to_string(text.size()) + " characters)");
  }
  return corpus;
}

struct Batch {
  torch::Tensor inputs, targets;  // [batch, seq_len]
};

/// Random windows of `data`; the same (seed, draw) always gives the same batch, so a resumed
/// run sees exactly the batches the uninterrupted run would have seen.
Batch sample_batch(const torch::Tensor& data, int64_t batch_size, int64_t seq_len, uint64_t seed, int64_t draw,
                   const torch::Device& device) {
  auto generator = at::detail::createCPUGenerator(seed * 1000003u + static_cast<uint64_t>(draw));
  auto starts = torch::randint(0, data.size(0) - seq_len - 1, {batch_size, 1}, generator, torch::kLong);
  auto windows = data.index({starts + torch::arange(seq_len + 1, torch::kLong)});
  return {windows.slice(1, 0, seq_len).to(device), windows.slice(1, 1).to(device)};
}

// ---------------------------------------------------------------------------------------------
// Training.

/// float32 (nullopt), or the dtype the forward autocasts to; backward follows on its own.
std::optional<c10::ScalarType> autocast_dtype(const std::string& dtype) {
  if (dtype == "bfloat16") return torch::kBFloat16;
  if (dtype == "float16") return torch::kHalf;
  return std::nullopt;
}

/// `model`: the GptModel, or the data-parallel wrapper around it.
template <class Model>
torch::Tensor loss_of(Model& model, const Batch& batch, const Settings& s, const torch::Device& device) {
  torch::Tensor logits;
  {
    AutocastScope autocast(device, autocast_dtype(s.dtype));
    logits = model(batch.inputs);
  }
  return torch::nn::functional::cross_entropy(logits.to(torch::kFloat).flatten(0, 1), batch.targets.flatten());
}

double validation_loss(GptModel& model, const Corpus& corpus, const Settings& s, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model->eval();
  double total = 0;
  for (int64_t i = 0; i < s.eval_batches; ++i) {
    // Fixed batches (draws counted down from -1), the same for every run with this seed.
    auto batch = sample_batch(corpus.validation, s.batch_size, s.size.seq_len, s.seed, -1 - i, device);
    total += loss_of(model, batch, s, device).item<double>();
  }
  model->train();
  return total / static_cast<double>(s.eval_batches);
}

std::string generate(GptModel& model, const Corpus& corpus, const Settings& s, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model->eval();
  auto generator = at::detail::createCPUGenerator(s.seed);
  std::vector<int64_t> ids = corpus.encode(s.prompt);
  std::string text = s.prompt;
  for (int64_t i = 0; i < s.sample_length; ++i) {
    const int64_t start = std::max<int64_t>(0, static_cast<int64_t>(ids.size()) - s.size.seq_len);
    auto context = torch::tensor(std::vector<int64_t>(ids.begin() + start, ids.end()), torch::kLong).unsqueeze(0);
    auto logits = model(context.to(device)).select(1, -1).squeeze(0).to(torch::kCPU, torch::kFloat);
    auto probs = torch::softmax(logits / s.temperature, -1);
    const int64_t next = torch::multinomial(probs, 1, false, generator).item<int64_t>();
    ids.push_back(next);
    text.push_back(corpus.vocab[static_cast<std::size_t>(next)]);
  }
  model->train();
  return text;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints: a torch::save archive of the model (so `torch::load(gpt, path)` works in other
// code), with the optimizer, step, vocabulary, sizes and RNG states beside it.

void write_int(torch::serialize::OutputArchive& archive, const std::string& key, int64_t value) {
  archive.write(key, torch::tensor(value, torch::kLong));
}

int64_t read_int(torch::serialize::InputArchive& archive, const std::string& key) {
  torch::Tensor value;
  archive.read(key, value);
  return value.item<int64_t>();
}

torch::Tensor generator_state(at::Generator generator) {  // a handle: copies share the generator
  std::lock_guard<std::mutex> lock(generator.mutex());
  return generator.get_state();
}

void set_generator_state(at::Generator generator, const torch::Tensor& state) {
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state);
}

void save_checkpoint(const std::string& path, GptModel& model, torch::optim::AdamW& optimizer, int64_t step,
                     const Corpus& corpus, const torch::Device& device) {
  torch::serialize::OutputArchive archive;
  model->save(archive);
  torch::serialize::OutputArchive optimizer_archive;
  optimizer.save(optimizer_archive);
  archive.write("train_gpt_optimizer", optimizer_archive);
  write_int(archive, "train_gpt_step", step);
  const auto& options = model->options();
  const ModelSize size{options.num_layers(), options.block().hidden_dim(), options.block().head_dim(),
                       options.block().ff_dim(), options.max_seq_len()};
  archive.write("train_gpt_size",
                torch::tensor({size.num_layers, size.hidden_dim, size.head_dim, size.ff_dim, size.seq_len}, torch::kLong));
  archive.write("train_gpt_vocab",
                torch::from_blob(const_cast<char*>(corpus.vocab.data()), {static_cast<int64_t>(corpus.vocab.size())},
                                 torch::kChar).clone());
  // Dropout draws from the device's generator; batches come from their own seeded generators.
  archive.write("train_gpt_rng_cpu", generator_state(at::detail::getDefaultCPUGenerator()));
  if (!device.is_cpu()) archive.write("train_gpt_rng_device", generator_state(at::globalContext().defaultGenerator(device)));
  // Written beside the file, then renamed over it: a run killed while saving (a failed link, an
  // OOM kill) leaves the previous checkpoint whole instead of half a file.
  const std::string partial = path + ".partial";
  archive.save_to(partial);
  if (std::rename(partial.c_str(), path.c_str()) != 0) {
    throw std::runtime_error("cannot rename " + partial + " to " + path + ": " + std::strerror(errno));
  }
}

struct Loaded {
  torch::serialize::InputArchive archive;
  ModelSize size;
  int64_t step = 0;
};

/// Reads the sizes and step first: the model is built from them before its weights load.
Loaded open_checkpoint(const std::string& path, const Corpus& corpus) {
  Loaded loaded;
  try {
    loaded.archive.load_from(path);
    torch::Tensor size, vocab;
    loaded.archive.read("train_gpt_size", size);
    loaded.archive.read("train_gpt_vocab", vocab);
    loaded.step = read_int(loaded.archive, "train_gpt_step");
    auto s = size.accessor<int64_t, 1>();
    loaded.size = ModelSize{s[0], s[1], s[2], s[3], s[4]};
    if (std::string(static_cast<const char*>(vocab.data_ptr()), static_cast<std::size_t>(vocab.numel())) != corpus.vocab) {
      throw UsageError("--load " + path + " was trained on a text with other characters than --data");
    }
  } catch (const c10::Error&) {
    throw UsageError("--load " + path + " is not a train_gpt checkpoint");
  }
  return loaded;
}

void restore_checkpoint(Loaded& loaded, GptModel& model, torch::optim::AdamW& optimizer, const torch::Device& device) {
  model->load(loaded.archive);
  torch::serialize::InputArchive optimizer_archive;
  loaded.archive.read("train_gpt_optimizer", optimizer_archive);
  optimizer.load(optimizer_archive);
  torch::Tensor rng;
  loaded.archive.read("train_gpt_rng_cpu", rng);
  set_generator_state(at::detail::getDefaultCPUGenerator(), rng);
  if (!device.is_cpu() && loaded.archive.try_read("train_gpt_rng_device", rng)) {
    set_generator_state(at::globalContext().defaultGenerator(device), rng);
  }
}

// ---------------------------------------------------------------------------------------------
// Progress output.

std::string megabytes(int64_t bytes) {
  char text[32];
  const double mb = static_cast<double>(bytes) / 1e6;
  std::snprintf(text, sizeof text, mb < 10 ? "%.2f MB" : "%.1f MB", mb);
  return text;
}

std::string duration(double seconds) {
  const auto total = static_cast<long>(std::lround(seconds));
  char text[32];
  if (total >= 3600) {
    std::snprintf(text, sizeof text, "%ld:%02ld:%02ld", total / 3600, total / 60 % 60, total % 60);
  } else {
    std::snprintf(text, sizeof text, "%ld:%02ld", total / 60, total % 60);
  }
  return text;
}

const char* policy_name(const std::string& mode) {
  if (mode == "ckpt") return "checkpointing, inputs kept on the device (NoOffload)";
  if (mode == "sync") return "checkpointing, inputs offloaded to host memory, blocking (SyncOffload)";
  if (mode == "async") return "checkpointing, inputs offloaded to host memory in the background (AsyncOffload)";
  return "no checkpointing";
}

// ---------------------------------------------------------------------------------------------

/// This process's share of the work: rank `rank` of `size` (1 without torchrun).
struct Ranks {
  int rank = 0, size = 1;
  bool main() const { return rank == 0; }
  /// Rows [rank * n / size, (rank + 1) * n / size) of a global batch.
  Batch share(const Batch& batch) const {
    const int64_t n = batch.inputs.size(0);
    return {batch.inputs.slice(0, rank * n / size, (rank + 1) * n / size),
            batch.targets.slice(0, rank * n / size, (rank + 1) * n / size)};
  }
};

int train(Settings s, const CLI::App& app) {
  const torch::Device requested = [&] {
    try {
      return torch::Device(s.device);
    } catch (const c10::Error&) {
      throw UsageError("--device " + s.device + " is not a device (use cpu, cuda or cuda:N)");
    }
  }();
  if (!requested.is_cpu() && !requested.is_cuda()) throw UsageError("--device must be cpu or cuda[:N], got " + s.device);
  if (requested.is_cuda()) {
    if (!ACTCKPT_WITH_CUDA || !torch::cuda::is_available()) {
      throw UsageError("--device " + s.device + ": this build has no CUDA GPU to use (LibTorch " TORCH_VERSION ")");
    }
    if (requested.has_index() && requested.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw UsageError("--device " + s.device + ": there are only " + std::to_string(torch::cuda::device_count()) + " GPUs");
    }
  }
  if (s.dtype == "float16" && !requested.is_cuda()) throw UsageError("--dtype float16 needs a CUDA device; on CPU use bfloat16");

  // torchrun sets WORLD_SIZE for its workers: then this process is one rank of a data-parallel run.
  Ranks ranks;
#ifdef ACTCKPT_EXAMPLE_DISTRIBUTED
  std::optional<actckpt::World> world;
  if (std::getenv("WORLD_SIZE") != nullptr) {
    world = actckpt::init_process_group(actckpt::ProcessGroupOptions().device_type(requested.type()).timeout(
        std::chrono::milliseconds(static_cast<int64_t>(s.dist_timeout * 1000))));
    ranks = {world->rank, world->size};
  }
  // On CUDA each rank uses the GPU numbered LOCAL_RANK.
  const torch::Device device = world && requested.is_cuda() ? world->device : requested;
#else
  const torch::Device device = requested;
  if (std::getenv("WORLD_SIZE") != nullptr) {
    throw UsageError("WORLD_SIZE is set (torchrun?), but this train_gpt was built without data parallelism "
                     "(no Gloo headers: install libgloo-dev and rebuild)");
  }
#endif
  if (s.batch_size % ranks.size != 0) {
    throw UsageError("--batch_size " + std::to_string(s.batch_size) + " must be a multiple of the " +
                     std::to_string(ranks.size) + " ranks (it is the global batch, shared out among them)");
  }
  // Rank 0 alone reports; the others' stdout goes nowhere (errors still reach stderr).
  if (!ranks.main() && std::freopen("/dev/null", "w", stdout) == nullptr) throw std::runtime_error("cannot silence stdout");

  torch::manual_seed(s.seed);
  const Corpus corpus = load_corpus(s.data, s.size.seq_len);
  try {
    corpus.encode(s.prompt);
  } catch (const UsageError& e) {
    throw UsageError(std::string("--prompt: ") + e.what());
  }
  std::optional<Loaded> loaded;
  if (!s.load.empty()) {
    loaded.emplace(open_checkpoint(s.load, corpus));
    // The checkpoint fixes the model's shape; a size flag given explicitly must agree with it.
    const std::vector<std::pair<const char*, int64_t ModelSize::*>> fields{
        {"--num_layers", &ModelSize::num_layers}, {"--hidden_dim", &ModelSize::hidden_dim},
        {"--head_dim", &ModelSize::head_dim},     {"--ff_dim", &ModelSize::ff_dim},
        {"--seq_len", &ModelSize::seq_len}};
    for (const auto& [flag, field] : fields) {
      if (app.count(flag) > 0 && s.size.*field != loaded->size.*field) {
        throw UsageError(std::string(flag) + " " + std::to_string(s.size.*field) + " disagrees with --load " + s.load +
                         ", which was trained with " + flag + " " + std::to_string(loaded->size.*field));
      }
    }
    s.size = loaded->size;
  }

  // Measures from before the model exists, so the weights and optimizer state count too.
  actckpt::MemoryMeter meter(device);
  GptModel model = build_model(s.size, static_cast<int64_t>(corpus.vocab.size()), s.dropout, s.mode);
  model->to(device);
  torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(s.lr).weight_decay(0.01));
  int64_t step = 0;
  if (loaded) {
    restore_checkpoint(*loaded, model, optimizer, device);
    step = loaded->step;
  }
  // Every rank starts from rank 0's weights (the wrapper broadcasts them); dropout must draw
  // other masks on other ranks, so ranks after 0 reseed their generator.
  if (!ranks.main()) torch::manual_seed(s.seed + 7919u * static_cast<uint64_t>(ranks.rank) + static_cast<uint64_t>(step));
#ifdef ACTCKPT_EXAMPLE_DISTRIBUTED
  // Times every step (DataParallelOptions::stats_sample_rate), for the summary at the end.
  std::optional<actckpt::DistributedDataParallel<GptModel>> ddp;
  if (world) ddp.emplace(model, *world, actckpt::DataParallelOptions().stats_sample_rate(1));
#endif

  int64_t parameters = 0;
  for (const auto& p : model->parameters()) parameters += p.numel();
  std::printf("train_gpt: --mode %s on %s, %s, CPU threads: %d (OMP_NUM_THREADS)\n", s.mode.c_str(),
              device.str().c_str(), s.dtype.c_str(), torch::get_num_threads());
  std::printf("  %s\n", policy_name(s.mode));
  std::printf("  model: %lld layers, hidden %lld, %lld heads of %lld, ff %lld, %.2fM parameters, vocabulary %zu\n",
              static_cast<long long>(s.size.num_layers), static_cast<long long>(s.size.hidden_dim),
              static_cast<long long>(s.size.hidden_dim / s.size.head_dim), static_cast<long long>(s.size.head_dim),
              static_cast<long long>(s.size.ff_dim), static_cast<double>(parameters) / 1e6, corpus.vocab.size());
  std::printf("  data: %s, %lld training characters; batches of %lld x %lld tokens\n", s.data.c_str(),
              static_cast<long long>(corpus.train.size(0)), static_cast<long long>(s.batch_size),
              static_cast<long long>(s.size.seq_len));
  if (ranks.size > 1 || std::getenv("WORLD_SIZE") != nullptr) {
    std::printf("  data parallel: %d ranks (%s), %lld sequences each per step\n", ranks.size,
                device.is_cpu() ? "gloo" : "nccl", static_cast<long long>(s.batch_size / ranks.size));
  }
  if (loaded) std::printf("  resuming from %s at step %lld\n", s.load.c_str(), static_cast<long long>(step));
  std::fflush(stdout);

  using Clock = std::chrono::steady_clock;
  const int64_t first_step = step;
  // The checkpoint a restart would resume from, and its step.
  std::string last_saved_file = loaded ? s.load : "";
  int64_t last_saved = step;
  const auto started = Clock::now();
  auto interval_start = started;
  int64_t interval_steps = 0;
  double last_loss = std::nan("");
  const double tokens_per_step = static_cast<double>(s.batch_size * s.size.seq_len);
  while (step < s.steps) {
    ++step;
    // The same global batch whatever the number of ranks; each rank takes its share.
    const Batch batch = ranks.share(sample_batch(corpus.train, s.batch_size, s.size.seq_len, s.seed, step, device));
    optimizer.zero_grad();
    torch::Tensor loss;
#ifdef ACTCKPT_EXAMPLE_DISTRIBUTED
    if (ddp) {
      try {
        loss = loss_of(*ddp, batch, s, device);
        loss.backward();  // the gradients arrive averaged over all ranks
        // The loss of the whole global batch (equal shares: the mean of the ranks' means).
        loss = actckpt::average_across_ranks(*world, loss.detach().clone());
      } catch (const std::exception& e) {
        // Gloo's or NCCL's own words, then what happened and what to do about it.
        const std::string what = e.what();
        const std::string resume = !last_saved_file.empty()
                                       ? "restart every rank with --load " + last_saved_file + " (step " +
                                             std::to_string(last_saved) + ")"
                                       : "no checkpoint to restart from (--save with --save-every keeps one)";
        throw std::runtime_error("step " + std::to_string(step) + ": data parallel communication failed: " +
                                 what.substr(0, what.find('\n')) + ". Another rank died, or the network to it failed "
                                 "(the wait is bounded by --dist-timeout); " + resume);
      }
    } else
#endif
    {
      loss = loss_of(model, batch, s, device);
      loss.backward();
    }
    torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    optimizer.step();
    last_loss = loss.item<double>();
    ++interval_steps;

    if (s.print_losses) std::printf("loss %lld %.9g\n", static_cast<long long>(step), loss.item<float>());
    if (step % s.log_every == 0 || step == s.steps) {
      const auto now = Clock::now();
      const double interval = std::chrono::duration<double>(now - interval_start).count();
      const double elapsed = std::chrono::duration<double>(now - started).count();
      const double eta = elapsed / static_cast<double>(step - first_step) * static_cast<double>(s.steps - step);
      const auto memory = meter.read();
      std::string host;  // offloaded stashes wait in host memory, outside the device's count
      if (s.mode == "sync" || s.mode == "async") host = " | host stash " + megabytes(memory.host_stash_peak_bytes);
      std::printf("step %*lld/%lld | loss %.4f | %6.0f tok/s | peak %s %s%s | ETA %s\n",
                  static_cast<int>(std::to_string(s.steps).size()), static_cast<long long>(step),
                  static_cast<long long>(s.steps), last_loss, tokens_per_step * interval_steps / interval,
                  device.is_cpu() ? "cpu" : "gpu", megabytes(memory.device_peak_bytes).c_str(), host.c_str(),
                  duration(eta).c_str());
      std::fflush(stdout);
      interval_start = now;
      interval_steps = 0;
    }
    // Rank 0 keeps the last checkpoint on disk: after a crash or a failed link the run restarts
    // from it (--load) instead of from the beginning.
    if (s.save_every > 0 && step % s.save_every == 0 && step < s.steps && ranks.main() && !s.save.empty()) {
      save_checkpoint(s.save, model, optimizer, step, corpus, device);
      std::printf("saved %s (step %lld)\n", s.save.c_str(), static_cast<long long>(step));
      std::fflush(stdout);
    }
    if (s.save_every > 0 && step % s.save_every == 0 && step < s.steps) {  // every rank knows it
      last_saved_file = s.save;
      last_saved = step;
    }
  }
  if (step > first_step) {
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    std::printf("time: %lld steps in %.1f s, %.1f ms per step\n", static_cast<long long>(step - first_step), seconds,
                1000 * seconds / static_cast<double>(step - first_step));
  }
  if (step == first_step) std::printf("already at step %lld of --steps %lld: nothing to train\n",
                                      static_cast<long long>(step), static_cast<long long>(s.steps));

#ifdef ACTCKPT_EXAMPLE_DISTRIBUTED
  if (ddp && step > first_step) {
    const auto stats = ddp->comm_stats();
    std::printf("data parallel: all-reduced %s per step in %zu buckets; Reducer's averages: forward %.1f ms, "
                "backward compute %.1f ms, communication %.1f ms, %.0f%% of it hidden behind backward\n",
                megabytes(stats.bytes_per_step).c_str(), stats.bucket_bytes.size(), stats.forward_compute_ns / 1e6,
                stats.backward_compute_ns / 1e6, stats.backward_comm_ns / 1e6, 100 * stats.hidden_fraction());
  }
#endif
  if (!ranks.main()) return 0;  // rank 0 saves, samples and evaluates: the weights are the same everywhere

  if (!s.save.empty()) {
    save_checkpoint(s.save, model, optimizer, step, corpus, device);
    std::printf("saved %s (step %lld)\n", s.save.c_str(), static_cast<long long>(step));
  }
  if (s.sample_length > 0) {
    std::printf("\n--- sample (%lld characters, temperature %.2f) ---\n%s\n---\n\n",
                static_cast<long long>(s.sample_length), s.temperature, generate(model, corpus, s, device).c_str());
  }
  std::printf("final loss at step %lld:", static_cast<long long>(step));
  if (step > first_step) std::printf(" training %.4f (last batch)", last_loss);
  if (s.eval_batches > 0) {
    std::printf("%s validation %.4f (%lld held-out batches)", step > first_step ? "," : "",
                validation_loss(model, corpus, s, device), static_cast<long long>(s.eval_batches));
  }
  std::printf("\n");
  return 0;
}

/// The first line of an exception's message, without LibTorch's backtrace.
std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  Settings s;
  CLI::App app{
      "Trains a small character-level GPT on a text (by default Jane Austen's Pride and Prejudice),\n"
      "with its transformer blocks checkpointed by actckpt: activations are recomputed in backward\n"
      "instead of kept, and with --mode sync/async each block's input waits in host memory.\n"
      "Prints progress (loss, speed, peak memory, ETA), then a generated sample and the final loss.",
      "train_gpt"};
  app.option_defaults()->always_capture_default();

  const CLI::Validator positive(
      [](std::string& value) -> std::string {
        try {
          if (std::stod(value) > 0) return {};
        } catch (const std::exception&) {
        }
        return "must be a positive number, got " + value;
      },
      "> 0");

  app.add_option("--mode", s.mode,
                 "baseline: no checkpointing; ckpt: checkpointing, inputs kept on the device; "
                 "sync: inputs offloaded to host memory, blocking; async: offloaded in the background")
      ->check(CLI::IsMember({"baseline", "ckpt", "sync", "async"}));

  const std::string model_group = "Model (fixed by --load when resuming)";
  app.add_option("--num_layers,--num-layers", s.size.num_layers, "transformer blocks")->check(positive)->group(model_group);
  app.add_option("--hidden_dim,--hidden-dim", s.size.hidden_dim, "width of the residual stream")->check(positive)->group(model_group);
  app.add_option("--head_dim,--head-dim", s.size.head_dim, "width of one attention head; heads = hidden_dim / head_dim")
      ->check(positive)->group(model_group);
  app.add_option("--ff_dim,--ff-dim", s.size.ff_dim, "width of the MLP inside each block")->check(positive)->group(model_group);
  app.add_option("--seq_len,--seq-len", s.size.seq_len, "context length in characters")->check(positive)->group(model_group);
  const CLI::Validator probability(
      [](std::string& value) -> std::string {
        try {
          const double p = std::stod(value);
          if (p >= 0 && p < 1) return {};
        } catch (const std::exception&) {
        }
        return "must be at least 0 and below 1, got " + value;
      },
      "[0, 1)");
  app.add_option("--dropout", s.dropout, "dropout after attention and MLP")->check(probability)->group(model_group);

  const std::string train_group = "Training";
  app.add_option("--steps", s.steps, "train until this step (a resumed run continues to it)")->check(positive)->group(train_group);
  app.add_option("--batch_size,--batch-size", s.batch_size, "sequences per step")->check(positive)->group(train_group);
  app.add_option("--lr", s.lr, "AdamW learning rate")->check(positive)->group(train_group);
  app.add_option("--device", s.device, "cpu, cuda or cuda:N")->group(train_group);
  app.add_option("--dtype", s.dtype, "float32, or autocast to bfloat16 / float16 (float16: CUDA only)")
      ->check(CLI::IsMember({"float32", "bfloat16", "float16"}))->group(train_group);
  app.add_option("--dist-timeout,--dist_timeout", s.dist_timeout,
                 "data parallel: seconds a rank waits for the others (rendezvous, each all-reduce) before it fails")
      ->check(positive)->group(train_group);
  app.add_option("--seed", s.seed, "seeds the weights, the batches, dropout and sampling")->group(train_group);
  app.add_option("--data", s.data, "text file to train on (any text; each distinct byte is a token)")
      ->check(CLI::ExistingFile)->group(train_group);

  const std::string files_group = "Checkpoint files";
  app.add_option("--save", s.save, "write model, optimizer and step here at the end (torch::save format)")->group(files_group);
  app.add_option("--save-every,--save_every", s.save_every,
                 "also write --save every N steps, so a failed run restarts from there with --load (0: only at the end)")
      ->check(CLI::NonNegativeNumber)->group(files_group);
  app.add_option("--load", s.load, "resume from a file written by --save (any --mode can load it)")
      ->check(CLI::ExistingFile)->group(files_group);

  const std::string output_group = "Output";
  app.add_option("--log-every,--log_every", s.log_every, "print a progress line every N steps")->check(positive)->group(output_group);
  app.add_flag("--print-losses,--print_losses", s.print_losses,
               "also print every step's loss at full precision as 'loss STEP VALUE' (to compare runs)")
      ->group(output_group);
  app.add_option("--eval-batches,--eval_batches", s.eval_batches, "validation batches for the final loss (0: none)")
      ->check(CLI::NonNegativeNumber)->group(output_group);
  app.add_option("--sample-length,--sample_length", s.sample_length, "characters to generate at the end (0: none)")
      ->check(CLI::NonNegativeNumber)->group(output_group);
  app.add_option("--temperature", s.temperature, "sampling temperature (lower: more conservative)")->check(positive)->group(output_group);
  app.add_option("--prompt", s.prompt, "text the sample starts from")->group(output_group);

  app.footer(
      "\nExamples:\n"
      "  train_gpt                                  300 steps, async offload (2-3 minutes on 2 CPU cores)\n"
      "  train_gpt --mode baseline --steps 100      the same model without checkpointing, to compare\n"
      "  train_gpt --steps 200 --save gpt.pt        stop at step 200 and keep the state ...\n"
      "  train_gpt --steps 1000 --load gpt.pt       ... then continue to step 1000 (readable text)\n"
      "  train_gpt --num_layers 8 --hidden_dim 256 --head_dim 64 --ff_dim 1024 --device cuda --dtype bfloat16\n"
      "\nOn CPU in float32 all four modes print the same loss at every step: checkpointing changes\n"
      "memory and time, not training. On CPU, sync/async offload save no RAM (host and device are the\n"
      "same memory); the peak column then shows the compute-side bytes as a GPU would see them.\n"
      "Threads: set OMP_NUM_THREADS.\n"
      "\nData parallel (each rank trains on its share of every batch; rank 0 prints and saves):\n"
      "  torchrun --no_python --nproc_per_node=2 -r 1 -t 1 train_gpt --mode async --steps 300\n"
      "Across hosts (the same on each; GLOO_SOCKET_IFNAME names the interface that joins them):\n"
      "  torchrun --no_python --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d --rdzv-id=run1 \\\n"
      "      --rdzv-endpoint=HOST0:29500 train_gpt --steps 300 --save gpt.pt --save-every 50 --dist-timeout 60\n"
      "  after a failure (a host lost, a link down): the same command with --load gpt.pt resumes");

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "train_gpt: " << first_line(e.what()) << " (see train_gpt --help)\n";
    return 2;
  }

  try {
    if (s.size.hidden_dim % s.size.head_dim != 0) {
      throw UsageError("--head_dim " + std::to_string(s.size.head_dim) + " must divide --hidden_dim " +
                       std::to_string(s.size.hidden_dim));
    }
    if (s.save_every > 0 && s.save.empty()) throw UsageError("--save-every needs --save (the file to write)");
    return train(s, app);
  } catch (const UsageError& e) {
    std::cerr << "train_gpt: " << e.what() << " (see train_gpt --help)\n";
    return 2;
  } catch (const c10::Error& e) {
    std::cerr << "train_gpt: error: " << first_line(e.what_without_backtrace()) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "train_gpt: error: " << first_line(e.what()) << "\n";
    return 1;
  }
}
