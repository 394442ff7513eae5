#pragma once
/// \file cufile_path.hpp
/// GPUDirect Storage for the disk tier (disk_store.hpp): a CUDA tensor's bytes move between
/// device memory and the store's file through NVIDIA's cuFile, without a pinned host copy.
///  - cuFile is loaded when first needed, with `dlopen` ("libcufile.so.0" by default, the soname
///    the CUDA wheels' libtorch_cuda.so links, so it is found already loaded), never linked: the
///    library stays header-only and a runtime without cuFile keeps the pinned staging path.
///  - Compiled where actckpt has its CUDA path and `cufile.h` is on the include path (CMake adds
///    the torch wheel's nvidia/cu*/include where it has one); define ACTCKPT_NO_CUFILE to leave
///    it out.
///  - The driver is opened once per process (never closed: other users may share it), on a thread
///    of its own that is given up after `driver_open_timeout` (on a machine without a CUDA driver,
///    cuFileDriverOpen was seen not to return).
///  - A store registers its file's descriptor; where the filesystem takes O_DIRECT it registers a
///    second, O_DIRECT descriptor of the same file (what true GPUDirect needs), else the store's
///    own one (cuFile's compatibility mode takes any descriptor).
/// Every failure is a reason: the store falls back to pinned staging and reports it
/// (`DiskStore::io_path`).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>

#include "actckpt/base/config.hpp"

#if ACTCKPT_WITH_CUDA && !defined(ACTCKPT_NO_CUFILE) && defined(__has_include)
#if __has_include(<cufile.h>)
#define ACTCKPT_HAVE_CUFILE 1
#endif
#endif
#ifndef ACTCKPT_HAVE_CUFILE
#define ACTCKPT_HAVE_CUFILE 0
#endif

#if ACTCKPT_HAVE_CUFILE
#include <c10/cuda/CUDAFunctions.h>
#include <c10/util/StringUtil.h>
#include <cufile.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#endif

namespace actckpt {

/// Whether a disk store moves CUDA tensors through cuFile (`DiskStoreOptions::gpu_direct`).
enum class GpuDirect {
  automatic,  ///< "auto": cuFile where it loads, its driver opens and the file registers; else pinned staging
  off,        ///< "off": always pinned staging
};

/// "auto" or "off" (command lines, configuration files); nullopt for anything else.
inline std::optional<GpuDirect> gpu_direct_from_string(std::string_view name) {
  if (name == "auto") return GpuDirect::automatic;
  if (name == "off") return GpuDirect::off;
  return std::nullopt;
}
constexpr std::string_view to_string(GpuDirect g) noexcept { return g == GpuDirect::off ? "off" : "auto"; }

namespace cufile_detail {

/// `f()` on a thread of its own: its result where it returns within `timeout`, else nullopt (the
/// thread is left to finish, or not, on its own; it owns what it uses).
template <class F>
auto call_with_timeout(F f, std::chrono::milliseconds timeout) -> std::optional<decltype(f())> {
  using R = decltype(f());
  auto done = std::make_shared<std::promise<R>>();
  std::future<R> result = done->get_future();
  std::thread([done, f = std::move(f)]() mutable { done->set_value(f()); }).detach();
  if (result.wait_for(timeout) != std::future_status::ready) return std::nullopt;
  return result.get();
}

}  // namespace cufile_detail

#if ACTCKPT_HAVE_CUFILE

namespace cufile_detail {

/// The few entry points used, resolved with dlsym; types from cufile.h.
struct Api {
  decltype(&::cuFileDriverOpen) driver_open = nullptr;
  decltype(&::cuFileDriverGetProperties) driver_get_properties = nullptr;
  decltype(&::cuFileHandleRegister) handle_register = nullptr;
  decltype(&::cuFileHandleDeregister) handle_deregister = nullptr;
  decltype(&::cuFileRead) read = nullptr;
  decltype(&::cuFileWrite) write = nullptr;
};

inline std::string error_text(CUfileError_t e) {
  std::string s = c10::str(cufileop_status_error(e.err), " (", static_cast<int>(e.err), ")");
  if (IS_CUDA_ERR(e)) s += c10::str(", CUDA driver error ", static_cast<int>(e.cu_err));
  return s;
}

/// One library (by the name given to dlopen), loaded and its driver opened once per process.
struct Library {
  Api api;
  std::string error;  // empty: usable
  std::string driver; // what the driver reported at open
};

/// Loads `name` and opens its driver, once per name per process; the driver only where a CUDA
/// device exists.
inline const Library& library(const std::string& name, std::chrono::milliseconds driver_open_timeout) {
  static std::mutex mutex;
  static std::map<std::string, std::unique_ptr<Library>> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = loaded[name];
  if (slot) return *slot;
  slot = std::make_unique<Library>();
  Library& lib = *slot;
  void* handle = ::dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);  // never closed: the driver stays open
  if (handle == nullptr) {
    const char* why = ::dlerror();
    lib.error = c10::str("dlopen(\"", name, "\") failed: ", why != nullptr ? why : "unknown error");
    return lib;
  }
  auto resolve = [&](auto& fn, const char* symbol) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(::dlsym(handle, symbol));
    if (fn == nullptr && lib.error.empty()) lib.error = c10::str(name, " has no symbol ", symbol);
  };
  resolve(lib.api.driver_open, "cuFileDriverOpen");
  resolve(lib.api.driver_get_properties, "cuFileDriverGetProperties");
  resolve(lib.api.handle_register, "cuFileHandleRegister");
  resolve(lib.api.handle_deregister, "cuFileHandleDeregister");
  resolve(lib.api.read, "cuFileRead");
  resolve(lib.api.write, "cuFileWrite");
  if (!lib.error.empty()) return lib;
  if (c10::cuda::device_count() == 0) {  // checked before the driver: without a device its open was seen to hang
    lib.error = "no CUDA device";
    return lib;
  }
  // On a thread of its own: a driver open that never returns costs that thread, not the caller.
  const auto opened = call_with_timeout([open = lib.api.driver_open] { return open(); }, driver_open_timeout);
  if (!opened) {
    lib.error = c10::str("cuFileDriverOpen did not return within ", driver_open_timeout.count(), " ms");
    return lib;
  }
  const CUfileError_t status = *opened;
  if (status.err != CU_FILE_SUCCESS) {
    lib.error = c10::str("cuFileDriverOpen failed: ", error_text(status));
    return lib;
  }
  CUfileDrvProps_t props{};
  if (lib.api.driver_get_properties(&props).err == CU_FILE_SUCCESS && props.nvfs.major_version > 0) {
    lib.driver = c10::str("GPUDirect Storage, nvidia-fs ", props.nvfs.major_version, ".", props.nvfs.minor_version);
  } else {
    lib.driver = "compatibility mode: no nvidia-fs driver, cuFile moves the data through its own buffers";
  }
  return lib;
}

}  // namespace cufile_detail

/// A store's file registered with cuFile. Reads and writes are synchronous: the device memory
/// must be complete before, and is complete after.
class CuFileFile {
 public:
  /// The file of descriptor `fd` registered with library `name`, or null with `why_not` set.
  static std::unique_ptr<CuFileFile> open(int fd, const std::string& name, std::chrono::milliseconds driver_open_timeout,
                                          std::string& why_not) {
    const auto& lib = cufile_detail::library(name, driver_open_timeout);
    if (!lib.error.empty()) {
      why_not = lib.error;
      return nullptr;
    }
    // A second descriptor of the same (nameless) file, with O_DIRECT, where the filesystem takes it.
    const std::string self = c10::str("/proc/self/fd/", fd);
    int direct_fd = ::open(self.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
    const bool direct = direct_fd >= 0 || (::fcntl(fd, F_GETFL) & O_DIRECT) != 0;
    CUfileDescr_t descr{};
    descr.type = CU_FILE_HANDLE_TYPE_OPAQUE_FD;
    descr.handle.fd = direct_fd >= 0 ? direct_fd : fd;
    CUfileHandle_t handle = nullptr;
    const CUfileError_t status = lib.api.handle_register(&handle, &descr);
    if (status.err != CU_FILE_SUCCESS) {
      if (direct_fd >= 0) ::close(direct_fd);
      why_not = c10::str("cuFileHandleRegister failed: ", cufile_detail::error_text(status));
      return nullptr;
    }
    return std::unique_ptr<CuFileFile>(new CuFileFile(lib.api, handle, direct_fd,
                                                      c10::str(lib.driver, direct ? ", O_DIRECT descriptor" : "")));
  }

  ~CuFileFile() {
    api_.handle_deregister(handle_);
    if (own_fd_ >= 0) ::close(own_fd_);
  }
  CuFileFile(const CuFileFile&) = delete;
  CuFileFile& operator=(const CuFileFile&) = delete;

  /// Bytes moved (cuFileWrite/cuFileRead's count), or a negative value with `error` set.
  std::int64_t write(const void* device, std::size_t n, std::size_t offset, std::string& error) const {
    return result(api_.write(handle_, device, n, static_cast<off_t>(offset), 0), error);
  }
  std::int64_t read(void* device, std::size_t n, std::size_t offset, std::string& error) const {
    return result(api_.read(handle_, device, n, static_cast<off_t>(offset), 0), error);
  }

  /// How the driver moves the data ("GPUDirect Storage, nvidia-fs 2.17, O_DIRECT descriptor", ...).
  const std::string& mode() const { return mode_; }

 private:
  CuFileFile(const cufile_detail::Api& api, CUfileHandle_t handle, int own_fd, std::string mode)
      : api_(api), handle_(handle), own_fd_(own_fd), mode_(std::move(mode)) {}

  static std::int64_t result(ssize_t r, std::string& error) {
    if (r == -1) {
      error = std::strerror(errno);
    } else if (r < 0) {
      error = cufile_detail::error_text(CUfileError_t{static_cast<CUfileOpError>(-r), CUresult{}});
    }
    return static_cast<std::int64_t>(r);
  }

  cufile_detail::Api api_;
  CUfileHandle_t handle_;
  int own_fd_;
  std::string mode_;
};

#endif  // ACTCKPT_HAVE_CUFILE

}  // namespace actckpt
