#pragma once
#if !defined(ACTCKPT_CORE_INTERNALS)
#error "actckpt/core/detail/tensor_checks.hpp is internal to actckpt: include <actckpt/actckpt.hpp> (or a header of actckpt/core/) instead"
#endif
/// \file core/detail/tensor_checks.hpp
/// What the checkpoint frames remember of a tensor to check it later without keeping its memory:
/// its version (an in-place change between forward and backward) and its shape, dtype and
/// device (a recompute that produced something else). Every check raises an error naming the
/// layer; none of them lets a wrong gradient through.

#include <ATen/core/Tensor.h>
#include <c10/core/TensorImpl.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

namespace actckpt::detail {

/// A tensor's version counter and its value when stamped; detects in-place changes
/// (docs/pitfalls.md#p6) without keeping the tensor's memory alive.
struct VersionStamp {
  c10::VariableVersion counter;
  std::uint32_t version = 0;
  static VersionStamp of(const at::Tensor& t) {
    const auto& c = t.unsafeGetTensorImpl()->version_counter();
    return VersionStamp{c, c.enabled() ? c.current_version() : 0};
  }
  bool changed() const { return counter.enabled() && counter.current_version() != version; }
  std::uint32_t now() const { return counter.enabled() ? counter.current_version() : 0; }
};

/// Shape, dtype and device of a forward output, checked against the recompute
/// (docs/pitfalls.md#p5).
struct TensorMeta {
  std::vector<int64_t> sizes;
  c10::ScalarType dtype;
  c10::Device device;
  static TensorMeta of(const at::Tensor& t) { return {t.sizes().vec(), t.scalar_type(), t.device()}; }
  bool operator==(const TensorMeta& o) const { return sizes == o.sizes && dtype == o.dtype && device == o.device; }
  std::string str() const {
    std::ostringstream s;
    s << c10::IntArrayRef(sizes) << ' ' << c10::toString(dtype) << ' ' << device;
    return s.str();
  }
};

}  // namespace actckpt::detail
