#pragma once
/// \file disk_store.hpp
/// The disk tier: one preallocated file that stashes go to when they should not, or cannot,
/// stay in host memory (`DiskOffload`, `PoolExhaustion::spill_to_disk`).
/// \code
///   actckpt::DiskStoreOptions o;
///   o.directory = "/nvme/scratch"; o.capacity_bytes = 64ull << 30;
///   auto disk = actckpt::DiskStore::open(o);  // throws actckpt::OffloadFailed naming the directory
///   auto ctx = actckpt::OffloadContext::create(actckpt::HostBufferPool::create(8ull << 30), disk);
/// \endcode
///  - Nothing is left behind: the file is made with O_TMPFILE (no name in the directory, ever),
///    or, where the filesystem lacks it, made under a unique name and unlinked at once; either
///    way the kernel frees it when the descriptor closes, also when the process is killed.
///  - The capacity is reserved when the store opens (`posix_fallocate`), so a disk that cannot
///    hold it fails there, with the bytes asked and the bytes free, not in a backward later.
///  - Space is placed like the host pool's (`free_ranges.hpp`): exact sizes rounded up to
///    `alignment` (what O_DIRECT needs), first fit, freed ranges coalesced.
///  - The I/O runs on the copy engine's worker (`CopyEngine::run_io`), in order with the other
///    copies, so it overlaps compute as async offload does; backward prefetches a layer ahead.
///  - I/O path, chosen by measurement (docs/offload.md "The disk tier"): plain `pwrite`/`pread`
///    through the page cache by default; `direct_io` opens the file O_DIRECT and moves the data
///    through an aligned staging buffer. CUDA tensors go through GPUDirect Storage (cuFile,
///    cufile_path.hpp) where `gpu_direct` is auto (the default), cuFile loads, its driver opens
///    and the file registers; else, and for good after any cuFile error, through a pinned
///    staging buffer on a side stream. `io_path(c10::kCUDA)` says which, and why not cuFile.
///    CPU tensors never use cuFile.
/// Thread-safe.

#include <ATen/Functions.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fcntl.h>
#include <memory>
#include <mutex>
#include <string>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <utility>

#include "actckpt/base/config.hpp"
#include "actckpt/base/errors.hpp"
#include "actckpt/offload/copy_engine.hpp"
#include "actckpt/offload/cufile_path.hpp"
#include "actckpt/offload/free_ranges.hpp"

#if ACTCKPT_WITH_CUDA
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace actckpt {

/// Where and how large the disk tier is.
struct DiskStoreOptions {
  std::string directory;           ///< an existing directory on the disk to use
  std::size_t capacity_bytes = 0;  ///< reserved when the store opens (rounded up to `DiskStore::alignment`)
  bool direct_io = false;          ///< O_DIRECT (bypasses the page cache) through aligned staging buffers
  /// CUDA tensors through cuFile (GPUDirect Storage) where it works, else pinned staging; `off`: always staging.
  GpuDirect gpu_direct = GpuDirect::automatic;
  /// The cuFile library, as given to dlopen (a path, or a name the loader searches).
  std::string cufile_library = "libcufile.so.0";
  /// How long cuFileDriverOpen may take before cuFile is given up (once per process and library).
  std::chrono::milliseconds cufile_driver_open_timeout{30000};
};

/// Byte counts of a store.
struct DiskStoreStats {
  std::size_t capacity_bytes = 0;    ///< reserved in the file
  std::size_t live_bytes = 0;        ///< held by stashes now (alignment included)
  std::size_t peak_live_bytes = 0;   ///< the most `live_bytes` has been
  std::size_t live_extents = 0;      ///< stashes on disk now
  std::uint64_t exhaustions = 0;     ///< requests refused because the capacity was taken
  std::size_t free_ranges = 0;       ///< fragmentation: 1 when nothing is held
  std::size_t largest_free_bytes = 0;
};

class DiskStore;

/// A stash's place in the store's file; the space goes back when the last reference drops.
class DiskExtent {
 public:
  std::size_t offset() const { return offset_; }
  std::size_t size() const { return size_; }    ///< aligned
  std::size_t bytes() const { return bytes_; }  ///< what the holder asked for
 private:
  friend class DiskStore;
  DiskExtent(std::size_t offset, std::size_t size, std::size_t bytes) : offset_(offset), size_(size), bytes_(bytes) {}
  std::size_t offset_, size_, bytes_;
};

class DiskStore : public std::enable_shared_from_this<DiskStore> {
 public:
  /// Offsets and sizes in the file are multiples of this (O_DIRECT's rule on 4 KiB-sector disks).
  static constexpr std::size_t alignment = 4096;
  /// Data moves through staging buffers (O_DIRECT, CUDA) in pieces of this size.
  static constexpr std::size_t staging_bytes = std::size_t{8} << 20;

  /// Opens the store's file in `o.directory` and reserves `o.capacity_bytes` there. Throws
  /// `UsageError` for options that cannot work, `OffloadFailed` naming the directory when the file
  /// cannot be made or the space reserved (with the bytes asked and the bytes free).
  static std::shared_ptr<DiskStore> open(const DiskStoreOptions& o) {
    ACTCKPT_CHECK(!o.directory.empty(), UsageError, "actckpt: DiskStoreOptions::directory is empty; name a directory on the disk to use");
    ACTCKPT_CHECK(o.capacity_bytes > 0, UsageError, "actckpt: DiskStoreOptions::capacity_bytes is 0; give the bytes to reserve in '",
                  o.directory, "'");
    const std::size_t capacity = round_up(o.capacity_bytes);
    const int fd = open_unnamed_file(o.directory, o.direct_io);
    const int err = posix_fallocate(fd, 0, static_cast<off_t>(capacity));
    if (err != 0) {
      ::close(fd);  // the file has no name: closing it frees whatever was reserved
      throw OffloadFailed(c10::str("actckpt: the disk store in '", o.directory, "' could not reserve ", capacity,
                                   " bytes (", std::strerror(err), "); ", free_bytes(o.directory),
                                   " bytes are free there. Free space there, choose another directory, or lower "
                                   "DiskStoreOptions::capacity_bytes."),
                          "");
    }
    return std::shared_ptr<DiskStore>(new DiskStore(o, capacity, fd));
  }

  ~DiskStore() {
#if ACTCKPT_HAVE_CUFILE
    cufile_.reset();  // deregistered while its descriptor is open
#endif
    ::close(fd_);
  }
  DiskStore(const DiskStore&) = delete;
  DiskStore& operator=(const DiskStore&) = delete;

  /// Space for `bytes` (rounded up to `alignment`), or null when the capacity is taken.
  std::shared_ptr<DiskExtent> try_acquire(std::size_t bytes) {
    const std::size_t want = round_up(std::max<std::size_t>(bytes, 1));
    std::size_t offset = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const auto placed = free_.take(want);
      if (!placed) {
        ++stats_.exhaustions;
        return nullptr;
      }
      offset = *placed;
      stats_.live_bytes += want;
      stats_.live_extents += 1;
      stats_.peak_live_bytes = std::max(stats_.peak_live_bytes, stats_.live_bytes);
      live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
    }
    std::weak_ptr<DiskStore> owner = weak_from_this();
    return std::shared_ptr<DiskExtent>(new DiskExtent(offset, want, bytes), [owner](DiskExtent* e) {
      if (auto store = owner.lock()) store->give_back(*e);
      delete e;
    });
  }

  /// Space for `bytes` of the stash of layer `label`; throws `OffloadFailed` naming the layer,
  /// the directory, the bytes asked and the bytes free when the capacity is taken.
  std::shared_ptr<DiskExtent> acquire(std::size_t bytes, const std::string& label) {
    if (io_failed_.exchange(false)) reserve_again(label);
    if (auto extent = try_acquire(bytes)) return extent;
    const auto s = stats();
    throw OffloadFailed(c10::str("actckpt: the disk store in '", directory_, "' is full: the ", bytes,
                                 "-byte stash of layer '", label, "' does not fit (", s.capacity_bytes - s.live_bytes,
                                 " of its ", s.capacity_bytes, " bytes free, largest free range ", s.largest_free_bytes,
                                 "). Open the store with a larger DiskStoreOptions::capacity_bytes."),
                        label);
  }

  /// Writes `src`'s bytes (a contiguous tensor on any device) into `extent`. Runs on the copy
  /// worker. A CUDA source is read on a side stream that first waits for `ready` (its data complete).
  void write(const DiskExtent& extent, const at::Tensor& src, [[maybe_unused]] const ReadyMark* ready) {
    TORCH_INTERNAL_ASSERT(src.is_contiguous() && src.nbytes() <= extent.size(), "actckpt: bad disk store write");
    const std::size_t n = src.nbytes();
    if (n == 0) return;
#if ACTCKPT_WITH_CUDA
    if (src.is_cuda()) {
      if (!through_cufile(src, extent, ready, /*to_disk=*/true)) through_pinned_staging(src, extent, ready, /*to_disk=*/true);
      return;
    }
#endif
    write_bytes(static_cast<const char*>(src.data_ptr()), n, extent.offset());
  }

  /// Reads `extent` into `dst` (any layout, any device; its element count times size is what was
  /// written). A CUDA destination is written on a side stream that first waits for `ready` (the
  /// moment its memory was handed out on the compute stream), and is complete when this returns.
  void read(const DiskExtent& extent, at::Tensor& dst, [[maybe_unused]] const ReadyMark* ready) {
    const std::size_t n = static_cast<std::size_t>(dst.numel()) * dst.element_size();
    TORCH_INTERNAL_ASSERT(n <= extent.size(), "actckpt: bad disk store read");
    if (n == 0) return;
#if ACTCKPT_WITH_CUDA
    if (dst.is_cuda()) {
      if (!through_cufile(dst, extent, ready, /*to_disk=*/false)) through_pinned_staging(dst, extent, ready, /*to_disk=*/false);
      return;
    }
#endif
    if (dst.is_contiguous()) {
      read_bytes(static_cast<char*>(dst.data_ptr()), n, extent.offset());
    } else {  // a strided destination: the bytes on disk are contiguous
      at::Tensor contiguous = at::empty(dst.sizes(), dst.options());
      read_bytes(static_cast<char*>(contiguous.data_ptr()), n, extent.offset());
      dst.copy_(contiguous);
    }
  }

  const std::string& directory() const { return directory_; }
  std::size_t capacity() const { return capacity_; }
  bool direct_io() const { return direct_io_; }
  GpuDirect gpu_direct() const { return gpu_direct_; }

  /// How tensors on `device` move: for CPU "host: pread/pwrite through the page cache" or "host:
  /// O_DIRECT through an aligned staging buffer"; for CUDA "cufile: <how the driver moves the
  /// data>" or "pinned staging (cuFile: <why not>)". Asked for CUDA before any CUDA tensor moved,
  /// it sets up cuFile as the first one would (once per store).
  std::string io_path(c10::DeviceType device = c10::DeviceType::CPU) {
    if (device != c10::DeviceType::CUDA) {
      return direct_io_ ? "host: O_DIRECT through an aligned staging buffer" : "host: pread/pwrite through the page cache";
    }
#if ACTCKPT_WITH_CUDA
    std::lock_guard<std::mutex> lock(cufile_mutex_);
    cufile_locked();
    return cufile_why_not_.empty() ? c10::str("cufile: ", cufile_mode_) : c10::str("pinned staging (cuFile: ", cufile_why_not_, ")");
#else
    return "none: actckpt was built without its CUDA path";
#endif
  }

  DiskStoreStats stats() const {
    std::lock_guard<std::mutex> lock(mutex_);
    DiskStoreStats s = stats_;
    s.free_ranges = free_.count();
    s.largest_free_bytes = free_.largest();
    return s;
  }
  /// `stats().live_bytes` without the lock (a memory timeline reads it from allocator hooks).
  std::size_t live_bytes() const noexcept { return live_bytes_.load(std::memory_order_relaxed); }
  void reset_peaks() {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.peak_live_bytes = stats_.live_bytes;
  }

  /// The store's file descriptor, for tests that break the file under the store (ftruncate)
  /// and for diagnostics. Do not close it.
  int file_descriptor() const { return fd_; }

 private:
  DiskStore(const DiskStoreOptions& o, std::size_t capacity, int fd)
      : directory_(o.directory),
        capacity_(capacity),
        direct_io_(o.direct_io),
        gpu_direct_(o.gpu_direct),
        cufile_library_(o.cufile_library),
        cufile_timeout_(o.cufile_driver_open_timeout),
        fd_(fd) {
    free_.add(0, capacity);
    stats_.capacity_bytes = capacity;
  }

  static std::size_t round_up(std::size_t n) { return (n + alignment - 1) / alignment * alignment; }

  static std::size_t free_bytes(const std::string& directory) {
    struct statvfs v {};
    if (::statvfs(directory.c_str(), &v) != 0) return 0;
    return static_cast<std::size_t>(v.f_bavail) * static_cast<std::size_t>(v.f_frsize);
  }

  /// A file with no name in `directory`: O_TMPFILE, else a unique name unlinked at once (the
  /// window between the two is the only time a name exists).
  static int open_unnamed_file(const std::string& directory, bool direct) {
    struct stat st {};
    if (::stat(directory.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      throw OffloadFailed(c10::str("actckpt: the disk store's directory '", directory, "' is not an existing directory (",
                                   std::strerror(errno), "); create it or name another in DiskStoreOptions::directory"),
                          "");
    }
    const int flags = O_RDWR | O_CLOEXEC;
    int fd = ::open(directory.c_str(), O_TMPFILE | flags, 0600);
    if (fd < 0) {
      std::string name = directory + "/actckpt-disk-XXXXXX";
      fd = ::mkostemp(name.data(), O_CLOEXEC);
      if (fd >= 0) ::unlink(name.c_str());
    }
    if (fd < 0) {
      throw OffloadFailed(c10::str("actckpt: the disk store could not make its file in '", directory, "': ",
                                   std::strerror(errno), " (it needs write permission there)"),
                          "");
    }
    if (direct && ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_DIRECT) != 0) {
      const int err = errno;
      ::close(fd);
      throw OffloadFailed(c10::str("actckpt: the filesystem of '", directory, "' does not take O_DIRECT (",
                                   std::strerror(err), "); set DiskStoreOptions::direct_io = false"),
                          "");
    }
    return fd;
  }

  /// After an I/O failure (the file truncated or damaged under the store), the next stash
  /// reserves the capacity again: a step after the space was freed trains as before, and a disk
  /// that still cannot hold it fails here, in forward, with the bytes asked and free.
  void reserve_again(const std::string& label) {
    const int err = posix_fallocate(fd_, 0, static_cast<off_t>(capacity_));
    if (err == 0) return;
    io_failed_.store(true);
    throw OffloadFailed(c10::str("actckpt: the disk store in '", directory_, "' could not reserve its ", capacity_,
                                 " bytes again after an I/O failure (", std::strerror(err), "); ", free_bytes(directory_),
                                 " bytes are free there. The stash of layer '", label, "' was not written; free space there."),
                        label);
  }

  void give_back(const DiskExtent& e) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_.give(e.offset(), e.size());
    stats_.live_bytes -= e.size();
    stats_.live_extents -= 1;
    live_bytes_.store(stats_.live_bytes, std::memory_order_relaxed);
  }

  /// Writes `n` bytes at `offset`, all of them (a short write is retried, EINTR too). With
  /// O_DIRECT the bytes pass through the aligned staging buffer, padded to `alignment` (the
  /// padding lies inside the extent).
  void write_bytes(const char* data, std::size_t n, std::size_t offset) {
    if (!direct_io_) {
      full_io(/*write=*/true, const_cast<char*>(data), n, offset);
      return;
    }
    std::lock_guard<std::mutex> lock(staging_mutex_);
    char* staging = host_staging();
    for (std::size_t done = 0; done < n; done += staging_bytes) {
      const std::size_t piece = std::min(staging_bytes, n - done);
      std::memcpy(staging, data + done, piece);
      full_io(true, staging, round_up(piece), offset + done);
    }
  }

  void read_bytes(char* data, std::size_t n, std::size_t offset) {
    if (!direct_io_) {
      full_io(/*write=*/false, data, n, offset);
      return;
    }
    std::lock_guard<std::mutex> lock(staging_mutex_);
    char* staging = host_staging();
    for (std::size_t done = 0; done < n; done += staging_bytes) {
      const std::size_t piece = std::min(staging_bytes, n - done);
      full_io(false, staging, round_up(piece), offset + done);
      std::memcpy(data + done, staging, piece);
    }
  }

  /// pwrite/pread until all `n` bytes moved. A read that reaches the end of the file, or any
  /// error, throws (the message names the directory); the stash's restore names the layer.
  void full_io(bool write, char* data, std::size_t n, std::size_t offset) const {
    std::size_t done = 0;
    while (done < n) {
      const ssize_t r = write ? ::pwrite(fd_, data + done, n - done, static_cast<off_t>(offset + done))
                              : ::pread(fd_, data + done, n - done, static_cast<off_t>(offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        io_failed_.store(true);
        const std::string why = r == 0 ? std::string("the file ended there: it was truncated under the store")
                                       : std::string(std::strerror(errno));
        throw OffloadFailed(c10::str("actckpt: ", write ? "writing " : "reading ", n, " bytes at offset ", offset,
                                     " of the disk store in '", directory_, "' failed: ", why),
                            "");
      }
      done += static_cast<std::size_t>(r);
    }
  }

  /// The O_DIRECT staging buffer (aligned), made on first use; callers hold staging_mutex_.
  char* host_staging() {
    if (!host_staging_) {
      void* p = std::aligned_alloc(alignment, staging_bytes);
      TORCH_CHECK(p != nullptr, "actckpt: no memory for the disk store's ", staging_bytes, "-byte staging buffer");
      host_staging_.reset(static_cast<char*>(p));
    }
    return host_staging_.get();
  }

#if ACTCKPT_WITH_CUDA
  /// A CUDA tensor's bytes to or from the file through a pinned staging buffer, piece by piece,
  /// on a side stream that first waits for `ready`; done (stream synchronized) when this returns.
  void through_pinned_staging(const at::Tensor& tensor, const DiskExtent& extent, const ReadyMark* ready, bool to_disk) {
    const c10::DeviceIndex index = tensor.device().index();
    c10::cuda::CUDAGuard device_guard(index);
    const auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index);
    if (ready != nullptr && ready->event) ready->event->block(side);
    c10::cuda::CUDAStreamGuard on_side(side);
    at::Tensor target = tensor.is_contiguous() || to_disk ? tensor : at::empty(tensor.sizes(), tensor.options());
    at::Tensor flat = target.reshape({-1}).view(at::kByte);
    const std::size_t n = flat.numel();
    std::lock_guard<std::mutex> lock(staging_mutex_);
    if (!pinned_staging_.defined())
      pinned_staging_ = at::empty({static_cast<int64_t>(staging_bytes)}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    char* staging = static_cast<char*>(pinned_staging_.data_ptr());
    for (std::size_t done = 0; done < n; done += staging_bytes) {
      const std::size_t piece = std::min(staging_bytes, n - done);
      at::Tensor host = pinned_staging_.narrow(0, 0, static_cast<int64_t>(piece));
      at::Tensor device = flat.narrow(0, static_cast<int64_t>(done), static_cast<int64_t>(piece));
      if (to_disk) {
        host.copy_(device, /*non_blocking=*/true);
        side.synchronize();
        full_io(true, staging, direct_io_ ? round_up(piece) : piece, extent.offset() + done);
      } else {
        full_io(false, staging, direct_io_ ? round_up(piece) : piece, extent.offset() + done);
        device.copy_(host, /*non_blocking=*/true);
        side.synchronize();  // the staging buffer is reused by the next piece
      }
    }
    if (!to_disk && !target.is_same(tensor)) {
      at::Tensor dst = tensor;
      dst.copy_(target, /*non_blocking=*/true);
      side.synchronize();
    }
  }
  at::Tensor pinned_staging_;  // pinned memory is page aligned: O_DIRECT takes it as it is

  /// Sets up cuFile for this store once (callers hold cufile_mutex_): afterwards either
  /// `cufile_` is usable or `cufile_why_not_` says why not.
  void cufile_locked() {
    if (cufile_tried_) return;
    cufile_tried_ = true;
    if (gpu_direct_ == GpuDirect::off) {
      cufile_why_not_ = "DiskStoreOptions::gpu_direct is off";
      return;
    }
#if ACTCKPT_HAVE_CUFILE
    cufile_ = CuFileFile::open(fd_, cufile_library_, cufile_timeout_, cufile_why_not_);
    if (cufile_) cufile_mode_ = cufile_->mode();
#else
    cufile_why_not_ = "actckpt was built without cufile.h";
#endif
  }

  /// A CUDA tensor's bytes to or from the file through cuFile; false where this store does not
  /// use cuFile (the caller then stages through pinned memory). The device memory is complete
  /// (host-synchronized `ready`) before cuFile touches it, and complete when this returns. A cuFile
  /// error turns cuFile off for this store (the reason in `io_path`) and returns false, so the
  /// same bytes go through staging; a short read or write throws.
  bool through_cufile([[maybe_unused]] const at::Tensor& tensor, [[maybe_unused]] const DiskExtent& extent,
                      [[maybe_unused]] const ReadyMark* ready, [[maybe_unused]] bool to_disk) {
#if ACTCKPT_HAVE_CUFILE
    std::shared_ptr<const CuFileFile> file;
    {
      std::lock_guard<std::mutex> lock(cufile_mutex_);
      cufile_locked();
      file = cufile_;
    }
    if (file == nullptr) return false;
    c10::cuda::CUDAGuard device_guard(tensor.device().index());
    // cuFile is not stream-ordered: the host waits for the data (write) or for the compute
    // stream to be done with the memory (read).
    if (ready != nullptr && ready->event) ready->event->synchronize();
    const auto side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, tensor.device().index());
    c10::cuda::CUDAStreamGuard on_side(side);
    at::Tensor target = tensor.is_contiguous() ? tensor : at::empty(tensor.sizes(), tensor.options());
    if (!target.is_same(tensor)) side.synchronize();  // memory just taken on the side stream
    const std::size_t n = static_cast<std::size_t>(target.numel()) * target.element_size();
    std::string error;
    const std::int64_t r = to_disk ? file->write(target.data_ptr(), n, extent.offset(), error)
                                   : file->read(target.data_ptr(), n, extent.offset(), error);
    if (r < 0) {
      std::lock_guard<std::mutex> lock(cufile_mutex_);
      cufile_why_not_ = c10::str(to_disk ? "cuFileWrite" : "cuFileRead", " of ", n, " bytes at offset ", extent.offset(),
                                 " failed: ", error, "; this store stages through pinned memory from then on");
      cufile_.reset();
      return false;
    }
    if (static_cast<std::size_t>(r) != n) {
      io_failed_.store(true);
      throw OffloadFailed(c10::str("actckpt: ", to_disk ? "writing " : "reading ", n, " bytes at offset ", extent.offset(),
                                   " of the disk store in '", directory_, "' through cuFile failed: only ", r,
                                   " bytes moved", to_disk ? "" : " (the file ended there: it was truncated under the store?)"),
                          "");
    }
    if (!target.is_same(tensor)) {
      at::Tensor dst = tensor;
      dst.copy_(target, /*non_blocking=*/true);
      side.synchronize();
    }
    return true;
#else
    return false;
#endif
  }
  std::mutex cufile_mutex_;
  bool cufile_tried_ = false;
  std::string cufile_why_not_;  // empty while cuFile is used
  std::string cufile_mode_;
#if ACTCKPT_HAVE_CUFILE
  std::shared_ptr<const CuFileFile> cufile_;
#endif
#endif

  const std::string directory_;
  const std::size_t capacity_;
  const bool direct_io_;
  const GpuDirect gpu_direct_;
  const std::string cufile_library_;
  const std::chrono::milliseconds cufile_timeout_;
  const int fd_;
  mutable std::mutex mutex_;
  FreeRanges free_;
  DiskStoreStats stats_;
  std::atomic<std::size_t> live_bytes_{0};
  mutable std::atomic<bool> io_failed_{false};  // set by a failed read or write: reserve again before the next stash
  std::mutex staging_mutex_;
  struct FreeDeleter {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, FreeDeleter> host_staging_;
};

}  // namespace actckpt
