#pragma once
/// \file label_layers.hpp
/// `actckpt::label_layers(model)`: names every wrapped layer (every `CheckpointedLayer`:
/// `Checkpointed<Layer, Policy>` and any other implementation) by its path in the model, as
/// `named_modules()` spells it ("blocks.3", "encoder.layers.0"), so error messages, observer
/// events and memory plans say where a layer is instead of its C++ type.
/// \code
///   auto model = std::make_shared<Net>();   // holds Checkpointed blocks under "blocks"
///   model->blocks[1]->set_label("attention"); // an explicit label: kept
///   actckpt::label_layers(*model);           // the others: "blocks.0", "blocks.2", ...
/// \endcode
/// Labels set with `set_label` are explicit and kept (call with `ExplicitLabels::replace` to
/// rename them too); labels `label_layers` gives stay replaceable, so calling it again after the
/// model was rearranged (or after `wrap_every` named a Sequential's children "0", "1", ... before
/// it was registered in its parent) gives the new paths.

#include <torch/nn/module.h>

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "actckpt/layer/checkpointed_layer.hpp"

namespace actckpt {

/// What `label_layers` does with a label that `set_label` chose.
enum class ExplicitLabels {
  keep,     ///< leave it (the default)
  replace,  ///< name the layer by its path too
};

namespace detail {
/// Every CheckpointedLayer of `model` (itself included) with its path, in `modules()` order (the
/// order the planner numbers layers in). A layer registered under several paths gets its first;
/// the model itself, if wrapped, gets `root_name`.
inline std::vector<std::pair<CheckpointedLayer*, std::string>> layer_paths(torch::nn::Module& model,
                                                                           const std::string& root_name = "") {
  std::vector<std::pair<CheckpointedLayer*, std::string>> found;
  // The model itself apart: named_modules(include_self) needs it to be held by a shared_ptr.
  if (auto* self = dynamic_cast<CheckpointedLayer*>(&model)) found.emplace_back(self, root_name);
  for (const auto& item : model.named_modules(/*name_prefix=*/"", /*include_self=*/false)) {
    auto* layer = dynamic_cast<CheckpointedLayer*>(item.value().get());
    if (layer == nullptr) continue;
    bool seen = false;
    for (const auto& f : found) seen = seen || f.first == layer;
    if (!seen) found.emplace_back(layer, item.key());
  }
  return found;
}
}  // namespace detail

/// Labels every CheckpointedLayer of `model` by its path in it (see the file comment); returns
/// how many labels it set. The model itself, if it is a wrapped layer, has no path and keeps its
/// label.
inline std::size_t label_layers(torch::nn::Module& model, ExplicitLabels explicit_labels = ExplicitLabels::keep) {
  std::size_t set = 0;
  for (auto& [layer, path] : detail::layer_paths(model)) {
    if (path.empty()) continue;
    if (layer->label_is_explicit() && explicit_labels == ExplicitLabels::keep) continue;
    layer->set_derived_label(path);
    ++set;
  }
  return set;
}

}  // namespace actckpt
