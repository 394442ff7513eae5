#pragma once
// The benchmark's configuration under the seed project's CLI names (StackConfig), and the
// autocast scope the benchmark and train_gpt run their steps in. They serve benchmarks/ and
// examples/ only, so they live here and are not installed with the library; the model they
// configure (actckpt::models::TransformerStack, GptModel) is the library's,
// <actckpt/models/transformer_stack.hpp>.
//
//   bench::StackConfig cfg = bench::StackConfig::cpu_default();  // or fill in the seed's flags
//   cfg.validate();                                               // actckpt::UsageError if it cannot run
//   actckpt::models::TransformerStack stack(cfg.block_options(), cfg.num_layers, mode);
//   { bench::AutocastScope autocast(cfg); loss = stack(x).to(torch::kFloat).pow(2).mean(); }

#include <actckpt/base/errors.hpp>
#include <actckpt/models/transformer.hpp>
#include <actckpt/replay/autocast_state.hpp>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <optional>
#include <string>

namespace bench {

/// The benchmark's configuration, with the seed project's CLI names.
struct StackConfig {
  std::string device = "cpu";   ///< "cpu", "cuda", "cuda:1"
  int64_t total_tokens = 2048;  ///< tokens per step; seq_len = total_tokens / batch_size
  int64_t num_layers = 8;
  int64_t hidden_dim = 128;
  int64_t head_dim = 64;        ///< num_heads = hidden_dim / head_dim
  int64_t ff_dim = 512;
  int64_t batch_size = 8;
  int64_t steps = 3;            ///< measured training steps per mode
  std::string dtype = "float32";  ///< float32, or bf16 / fp16 autocast (weights stay float32)
  double dropout = 0.0;

  /// The seed's GPU configuration (its README's table).
  static StackConfig seed() {
    StackConfig c;
    c.device = "cuda";
    c.total_tokens = 12000;
    c.num_layers = 12;
    c.hidden_dim = 1024;
    c.head_dim = 64;
    c.ff_dim = 4096;
    c.batch_size = 48;
    c.steps = 3;
    c.dtype = "fp16";
    return c;
  }
  /// The CPU default of the main job: small enough for 2 cores, attention-heavy enough that
  /// activations dominate weights, as they do at the seed's size.
  static StackConfig cpu_default() { return StackConfig{}; }

  int64_t seq_len() const { return total_tokens / batch_size; }
  int64_t num_heads() const { return hidden_dim / head_dim; }
  c10::Device torch_device() const { return c10::Device(device); }
  actckpt::models::TransformerBlockOptions block_options() const {
    return actckpt::models::TransformerBlockOptions(hidden_dim, head_dim, ff_dim).dropout(dropout);
  }
  /// The autocast dtype, or nullopt for float32; actckpt::UsageError for any other name.
  std::optional<c10::ScalarType> autocast_dtype() const {
    if (dtype == "float32" || dtype == "fp32") return std::nullopt;
    if (dtype == "bf16" || dtype == "bfloat16") return c10::kBFloat16;
    if (dtype == "fp16" || dtype == "float16") return c10::kHalf;
    throw actckpt::UsageError("dtype must be float32, bf16 or fp16, not '" + dtype + "'");
  }

  /// Throws actckpt::UsageError, saying what to change, for a configuration that cannot run.
  void validate() const {
    ACTCKPT_CHECK(num_layers >= 1, UsageError, "num_layers must be at least 1, got ", num_layers);
    ACTCKPT_CHECK(batch_size >= 1, UsageError, "batch_size must be at least 1, got ", batch_size);
    ACTCKPT_CHECK(total_tokens >= batch_size, UsageError, "total_tokens (", total_tokens,
                  ") must be at least batch_size (", batch_size, "): seq_len = total_tokens / batch_size");
    ACTCKPT_CHECK(head_dim >= 1 && hidden_dim >= head_dim && hidden_dim % head_dim == 0, UsageError, "head_dim (",
                  head_dim, ") must divide hidden_dim (", hidden_dim, ")");
    ACTCKPT_CHECK(ff_dim >= 1, UsageError, "ff_dim must be positive, got ", ff_dim);
    ACTCKPT_CHECK(steps >= 0, UsageError, "steps must not be negative, got ", steps);
    // c10::Device's own parser throws c10::Error for a name it does not know ("tpu"); that is the
    // caller's mistake too, so it is reported as the one below.
    c10::Device d = c10::kCPU;
    try {
      d = torch_device();
    } catch (const c10::Error&) {
      throw actckpt::UsageError("device must be cpu or cuda[:N], not '" + device + "'");
    }
    ACTCKPT_CHECK(d.is_cpu() || d.is_cuda(), UsageError, "device must be cpu or cuda[:N], not '", device, "'");
    const auto low = autocast_dtype();
    ACTCKPT_CHECK(!(d.is_cpu() && low == c10::kHalf), UsageError,
                  "fp16 autocast is a CUDA feature; on CPU use bf16 or float32");
  }
};

/// Runs its scope under autocast to the configuration's dtype on its device type (float32: no
/// autocast): the library's `actckpt::AutocastScope` for a configuration.
class AutocastScope : public actckpt::AutocastScope {
 public:
  explicit AutocastScope(const StackConfig& config) : actckpt::AutocastScope(config.torch_device(), config.autocast_dtype()) {}
  using actckpt::AutocastScope::AutocastScope;
};

}  // namespace bench
