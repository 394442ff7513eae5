#pragma once
/// \file checkpointed_layer.hpp
/// `actckpt::CheckpointedLayer`: what every `Checkpointed<Layer, Policy>` has in common,
/// whatever its layer and policy types. Code that adjusts layers at run time (the memory planner)
/// finds them in a model through this interface:
/// \code
///   for (auto& m : model->modules())
///     if (auto* layer = dynamic_cast<actckpt::CheckpointedLayer*>(m.get())) layer->set_label("...");
/// \endcode

#include <string>
#include <utility>

#include "actckpt/policy/stash_options.hpp"

namespace actckpt {

class CheckpointedLayer {
 public:
  virtual ~CheckpointedLayer() = default;
  /// How this layer's inputs are kept until backward (or, `checkpoint == false`, that it is not
  /// checkpointed at all).
  virtual const StashOptions& stash_options() const = 0;
  virtual void set_stash_options(const StashOptions& options) = 0;
  /// The name used in error messages and observer events.
  virtual const std::string& label() const = 0;
  /// Sets the label explicitly: `label_layers` leaves it alone from then on.
  virtual void set_label(std::string label) = 0;
  /// Whether `set_label` chose the current label. An implementation that does not track it
  /// answers false, so `label_layers` names it by its path.
  virtual bool label_is_explicit() const { return false; }
  /// Sets a label actckpt derived (its path in the model, from `label_layers`), which a later
  /// `label_layers` may replace; `label_is_explicit()` becomes false.
  virtual void set_derived_label(std::string label) { set_label(std::move(label)); }
};

}  // namespace actckpt
