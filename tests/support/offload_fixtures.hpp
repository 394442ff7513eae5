#pragma once
// Helpers of the offload tests (split out of the former tests/test_offload.cpp into one file per
// unit): a stack of MLP blocks, and a weak reference that tells whether a tensor's memory is freed.

#include "test_models.hpp"

#include <vector>

namespace test_models {

/// `depth` MLP blocks of width `dim` and hidden width `hidden`.
inline std::vector<MlpBlock> mlp_stack(int depth, int64_t dim = 32, int64_t hidden = 64) {
  std::vector<MlpBlock> layers;
  for (int i = 0; i < depth; ++i) layers.emplace_back(dim, hidden);
  return layers;
}

/// A weak pointer to t's storage: expired() once every tensor using that memory is gone.
inline c10::weak_intrusive_ptr<c10::StorageImpl> weak_storage(const torch::Tensor& t) {
  return c10::weak_intrusive_ptr<c10::StorageImpl>(t.storage().getWeakStorageImpl());
}

}  // namespace test_models
