// The disk tier (offload/disk_store.hpp): the store's file leaves nothing behind (also after
// SIGKILL), reserves its capacity at open, places space like the host pool; DiskOffload and
// PoolExhaustion::spill_to_disk train bitwise with the disk bytes in the telemetry; checksums
// cover the disk round trip; a file truncated under the store fails that backward naming the
// layer, and the next step trains bitwise again. The I/O path each device takes (io_path): CPU
// tensors the host's, CUDA tensors cuFile unless gpu_direct is off or cuFile does not work here,
// with the reason; the CUDA round trips through cuFile are in tests/integration/test_cuda_offload.cpp.

#include "offload_fixtures.hpp"

#include <dirent.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <future>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace test_models;
using actckpt::Checkpointed;
using actckpt::DiskStore;
using actckpt::DiskStoreOptions;

namespace {

/// A fresh directory under $TMPDIR (or /tmp), removed with everything in it at the end.
struct ScratchDir {
  ScratchDir() {
    const char* base = std::getenv("TMPDIR");
    std::string pattern = std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/actckpt-disk-test-XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~ScratchDir() { std::system(("rm -rf '" + path + "'").c_str()); }
  std::string path;
};

/// Names in `dir` (without . and ..).
std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  return names;
}

std::shared_ptr<DiskStore> open_store(const std::string& dir, std::size_t capacity, bool direct = false) {
  DiskStoreOptions o;
  o.directory = dir;
  o.capacity_bytes = capacity;
  o.direct_io = direct;
  return DiskStore::open(o);
}

/// An isolated context with a host pool of `host_limit` bytes and a disk store in `dir`.
struct DiskOffloadSetup : IsolatedOffload {
  DiskOffloadSetup(const std::string& dir, std::size_t host_limit, std::size_t disk_capacity, bool direct = false)
      : IsolatedOffload(host_limit), disk(open_store(dir, disk_capacity, direct)) {
    context->set_disk_store(disk);
  }
  std::shared_ptr<DiskStore> disk;
};

/// `depth` MLP blocks on the test device, wide enough that each stash is 64 KiB (64 x 256 floats).
std::vector<MlpBlock> wide_stack(int depth) {
  auto layers = mlp_stack(depth, 256, 256);
  for (auto& l : layers) l->to(test_device::device());
  return layers;
}

template <class Policy, class Layer>
std::vector<Checkpointed<Layer, Policy>> wrap_with(std::vector<Layer>& layers, const IsolatedOffload& iso,
                                                   actckpt::PoolExhaustion on_exhausted, bool checksums) {
  auto wrapped = wrap_stack<Policy>(layers, iso);
  for (auto& w : wrapped) {
    auto options = w->stash_options();
    options.on_exhausted = on_exhausted;
    options.verify_checksums = checksums;
    w->set_stash_options(options);
  }
  return wrapped;
}

/// Mounting a tmpfs needs root (CAP_SYS_ADMIN); probed once, at registration, so a case that
/// needs it is reported by doctest as skipped where it cannot run.
bool can_mount_tmpfs() {
  if (::geteuid() != 0) return false;
  char dir[] = "/tmp/actckpt-tmpfs-probe-XXXXXX";
  if (::mkdtemp(dir) == nullptr) return false;
  const bool ok = ::mount("tmpfs", dir, "tmpfs", 0, "size=1m") == 0;
  if (ok) ::umount(dir);
  ::rmdir(dir);
  return ok;
}

}  // namespace

TEST_CASE("disk store: the file has no name in the directory, space is placed and coalesced like the host pool's" *
          test_device::no_tensors()) {
  ScratchDir dir;
  auto store = open_store(dir.path, 1 << 20);
  CHECK(entries(dir.path).empty());
  CHECK(store->capacity() == (1u << 20));
  struct stat st {};
  REQUIRE(::fstat(store->file_descriptor(), &st) == 0);
  CHECK(static_cast<std::size_t>(st.st_size) == store->capacity());  // reserved at open
  CHECK(st.st_nlink == 0);                                           // nothing to find or leave behind

  auto a = store->try_acquire(5000);  // exact sizes, rounded up to the O_DIRECT alignment
  auto b = store->try_acquire(4096);
  auto c = store->try_acquire(1);
  REQUIRE((a && b && c));
  CHECK(a->offset() == 0);
  CHECK(a->size() == 8192);
  CHECK(b->offset() == 8192);
  CHECK(c->offset() == 12288);
  CHECK(store->stats().live_bytes == 16384);
  a.reset();
  b.reset();  // coalesces with a's range: one hole of 12 KiB before c
  CHECK(store->stats().free_ranges == 2);
  auto d = store->try_acquire(12288);
  REQUIRE(d);
  CHECK(d->offset() == 0);  // first fit, in the coalesced hole
  CHECK(store->try_acquire(1 << 20) == nullptr);
  CHECK(store->stats().exhaustions == 1);
  std::string message;
  try {
    store->acquire(1 << 20, "layer7");
  } catch (const actckpt::OffloadFailed& e) {
    message = e.what();
    CHECK(e.layer() == "layer7");
  }
  CAPTURE(message);
  CHECK(message.find(dir.path) != std::string::npos);
  CHECK(message.find("1048576-byte stash of layer 'layer7'") != std::string::npos);
  c.reset();
  d.reset();
  CHECK(store->stats().live_bytes == 0);
  CHECK(store->stats().free_ranges == 1);
}

TEST_CASE("disk store: tensors round-trip bitwise, buffered and O_DIRECT, into strided destinations") {
  ScratchDir dir;
  for (const bool direct : {false, true}) {
    CAPTURE(direct);
    auto store = open_store(dir.path, 16 << 20, direct);
    // Larger than the staging buffer, and not a multiple of the alignment.
    const auto src = torch::randn({DiskStore::staging_bytes / 4 + 1001}, test_device::options());
    auto extent = store->acquire(src.nbytes(), "x");
    store->write(*extent, src, nullptr);
    auto back = torch::empty_like(src);
    store->read(*extent, back, nullptr);
    CHECK(bitwise_equal(back, src));
    const auto matrix = torch::randn({64, 48}, test_device::options());
    auto e2 = store->acquire(matrix.nbytes(), "m");
    store->write(*e2, matrix, nullptr);
    auto transposed = torch::empty({48, 64}, test_device::options()).t();  // strided destination
    store->read(*e2, transposed, nullptr);
    CHECK(bitwise_equal(transposed, matrix));
  }
  CHECK(entries(dir.path).empty());
}

TEST_CASE("disk store: the I/O path each device takes, gpu_direct auto and off, and why cuFile is not used where it is not" *
          test_device::no_tensors()) {
  using actckpt::GpuDirect;
  CHECK(actckpt::gpu_direct_from_string("auto") == GpuDirect::automatic);
  CHECK(actckpt::gpu_direct_from_string("off") == GpuDirect::off);
  CHECK(!actckpt::gpu_direct_from_string("on").has_value());
  CHECK(!actckpt::gpu_direct_from_string("").has_value());
  CHECK(std::string(actckpt::to_string(GpuDirect::automatic)) == "auto");
  CHECK(std::string(actckpt::to_string(GpuDirect::off)) == "off");
  CHECK(DiskStoreOptions{}.gpu_direct == GpuDirect::automatic);  // the default

  ScratchDir dir;
  auto open_with = [&](GpuDirect g, const std::string& library, bool direct = false) {
    DiskStoreOptions o;
    o.directory = dir.path;
    o.capacity_bytes = 1 << 20;
    o.direct_io = direct;
    o.gpu_direct = g;
    o.cufile_library = library;
    return DiskStore::open(o);
  };
  // CPU tensors never use cuFile, whatever gpu_direct says.
  CHECK(open_with(GpuDirect::automatic, "libcufile.so.0")->io_path() == "host: pread/pwrite through the page cache");
  CHECK(open_with(GpuDirect::automatic, "libcufile.so.0", true)->io_path(c10::DeviceType::CPU) ==
        "host: O_DIRECT through an aligned staging buffer");

  auto off = open_with(GpuDirect::off, "libcufile.so.0");
  CHECK(off->gpu_direct() == GpuDirect::off);
  // A library that does not load: the reason names it, and CUDA tensors take pinned staging.
  auto missing = open_with(GpuDirect::automatic, "/nonexistent/libcufile.so.0");
  auto usual = open_with(GpuDirect::automatic, "libcufile.so.0");
  const std::string usual_path = usual->io_path(c10::DeviceType::CUDA);
  CAPTURE(usual_path);
#if ACTCKPT_WITH_CUDA
  CHECK(off->io_path(c10::DeviceType::CUDA) == "pinned staging (cuFile: DiskStoreOptions::gpu_direct is off)");
#if ACTCKPT_HAVE_CUFILE
  const std::string missing_path = missing->io_path(c10::DeviceType::CUDA);
  CAPTURE(missing_path);
  CHECK(missing_path.rfind("pinned staging (cuFile: dlopen(\"/nonexistent/libcufile.so.0\") failed: ", 0) == 0);
  CHECK(missing_path.find("No such file or directory") != std::string::npos);
  // The wheel's libcufile.so.0 loads (libtorch_cuda.so links it); its driver is opened only where a device is.
  const bool cufile = usual_path.rfind("cufile: ", 0) == 0;
  CHECK((cufile || usual_path.rfind("pinned staging (cuFile: ", 0) == 0));
  if (!torch::cuda::is_available()) CHECK(usual_path == "pinned staging (cuFile: no CUDA device)");
#else
  CHECK(missing->io_path(c10::DeviceType::CUDA) == "pinned staging (cuFile: actckpt was built without cufile.h)");
  CHECK(usual_path == "pinned staging (cuFile: actckpt was built without cufile.h)");
#endif
#else
  CHECK(off->io_path(c10::DeviceType::CUDA) == "none: actckpt was built without its CUDA path");
  CHECK(missing->io_path(c10::DeviceType::CUDA) == "none: actckpt was built without its CUDA path");
  CHECK(usual_path == "none: actckpt was built without its CUDA path");
#endif
  CHECK(usual->io_path(c10::DeviceType::CUDA) == usual_path);  // decided once per store
  CHECK(entries(dir.path).empty());
}

TEST_CASE("disk store: cuFile's driver open is given up after its timeout, its thread left to finish" *
          test_device::no_tensors()) {
  using namespace std::chrono_literals;
  using actckpt::cufile_detail::call_with_timeout;
  CHECK(call_with_timeout([] { return 42; }, 10s) == std::optional<int>(42));
  // A call that does not return (cuFileDriverOpen on a machine without a CUDA driver did not).
  auto gate = std::make_shared<std::promise<void>>();
  std::shared_future<void> opened = gate->get_future().share();
  const auto start = std::chrono::steady_clock::now();
  const auto stuck = call_with_timeout([opened] { opened.wait(); return 1; }, 100ms);
  const auto waited = std::chrono::steady_clock::now() - start;
  CHECK(!stuck.has_value());
  CHECK(waited >= 100ms);
  CHECK(waited < 5s);
  gate->set_value();  // the abandoned thread ends
}

TEST_CASE_TEMPLATE("DiskOffload trains bitwise through the disk tier; checksums pass; no host memory used", Policy,
                   actckpt::DiskOffload, actckpt::SyncOffload) {
  ScratchDir dir;
  DiskOffloadSetup setup(dir.path, std::size_t{1} << 30, 8 << 20);
  auto layers = wide_stack(6);
  // SyncOffload here goes to disk through its tier: the same path a synchronous spill takes.
  auto wrapped = wrap_with<Policy>(layers, setup, actckpt::PoolExhaustion::spill_to_disk, /*checksums=*/true);
  for (auto& w : wrapped) {
    auto o = w->stash_options();
    o.tier = actckpt::StashTier::disk;
    w->set_stash_options(o);
  }
  const auto x = torch::randn({64, 256}, test_device::options().requires_grad(true));
  chain(layers, x).sum().backward();
  const auto reference = take_grads(*layers[0]);
  const auto reference_last = take_grads(*layers[5]);
  const auto reference_x = x.grad().clone();
  x.mutable_grad().reset();

  setup.context->reset_telemetry();
  chain(wrapped, x).sum().backward();
  REQUIRE(wait_until_idle(*setup.context));
  check_bitwise_equal(take_grads(*layers[0]), reference);
  check_bitwise_equal(take_grads(*layers[5]), reference_last);
  CHECK(bitwise_equal(x.grad(), reference_x));
  const auto t = setup.context->take_telemetry();
  const std::int64_t stash = 64 * 256 * 4;
  // Async keeps the newest stash on the device: 5 of 6 move; sync moves all 6.
  const std::int64_t moved = std::is_same_v<Policy, actckpt::DiskOffload> ? 5 * stash : 6 * stash;
  CHECK(t.disk_write_bytes == moved);
  CHECK(t.disk_read_bytes == moved);
  CHECK(t.disk_writes == t.disk_reads);
  CHECK(t.disk_write_ms > 0);
  CHECK(t.disk_read_ms > 0);
  CHECK(t.d2h_bytes == 0);  // nothing went through host memory
  CHECK(setup.pool->stats().peak_live_bytes == 0);
  CHECK(setup.disk->stats().peak_live_bytes >= static_cast<std::size_t>(moved));
  CHECK(setup.disk->stats().live_bytes == 0);
  CHECK(entries(dir.path).empty());
}

TEST_CASE_TEMPLATE("spill_to_disk: a host budget of a quarter of what async offload stashes trains bitwise, the rest on disk",
                   Policy, actckpt::AsyncOffload, actckpt::SyncOffload, actckpt::OffloadSaved) {
  ScratchDir dir;
  auto layers = wide_stack(8);
  const auto x = torch::randn({64, 256}, test_device::options().requires_grad(true));
  chain(layers, x).sum().backward();
  const auto reference = take_grads(*layers[0]);
  const auto reference_mid = take_grads(*layers[4]);

  // What the policy stashes in host memory with no budget.
  std::size_t unbounded = 0;
  {
    IsolatedOffload iso;
    auto wrapped = wrap_with<Policy>(layers, iso, actckpt::PoolExhaustion::keep_on_device, false);
    chain(wrapped, x).sum().backward();
    REQUIRE(wait_until_idle(*iso.context));
    unbounded = iso.pool->stats().peak_reserved_bytes;
    take_grads(*layers[0]);
    take_grads(*layers[4]);
  }
  REQUIRE(unbounded > 0);
  const std::size_t budget = unbounded / 4;
  DiskOffloadSetup setup(dir.path, budget, 16 << 20);
  auto wrapped = wrap_with<Policy>(layers, setup, actckpt::PoolExhaustion::spill_to_disk, /*checksums=*/true);
  for (int step = 0; step < 2; ++step) {
    CAPTURE(step);
    setup.context->reset_telemetry();
    chain(wrapped, x).sum().backward();
    REQUIRE(wait_until_idle(*setup.context));
    check_bitwise_equal(take_grads(*layers[0]), reference);
    check_bitwise_equal(take_grads(*layers[4]), reference_mid);
    const auto t = setup.context->take_telemetry();
    CAPTURE(budget);
    CAPTURE(unbounded);
    CHECK(setup.pool->stats().peak_reserved_bytes <= budget);
    CHECK(setup.pool->stats().peak_live_bytes > 0);  // the host pool took its share first
    CHECK(t.disk_write_bytes > 0);
    CHECK(t.disk_read_bytes == t.disk_write_bytes);
    CHECK(setup.pool->stats().live_bytes == 0);
    CHECK(setup.disk->stats().live_bytes == 0);
  }
}

TEST_CASE("disk tier: a context without a store, and a full store, fail the forward naming the layer") {
  ScratchDir dir;
  auto layers = wide_stack(3);
  const auto x = torch::randn({64, 256}, test_device::options().requires_grad(true));
  {
    IsolatedOffload iso;
    auto wrapped = wrap_with<actckpt::SyncOffload>(layers, iso, actckpt::PoolExhaustion::spill_to_disk, false);
    iso.pool->set_limit(0);
    CHECK_THROWS_WITH_AS(chain(wrapped, x), doctest::Contains("layer '0' goes to disk"), actckpt::UsageError);
    CHECK(iso.pool->stats().live_bytes == 0);
  }
  DiskOffloadSetup setup(dir.path, std::size_t{1} << 30, 64 << 10);  // room for one stash
  auto wrapped = wrap_with<actckpt::DiskOffload>(layers, setup, actckpt::PoolExhaustion::spill_to_disk, false);
  std::string message;
  try {
    chain(wrapped, x).sum().backward();
  } catch (const actckpt::OffloadFailed& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("is full") != std::string::npos);
  CHECK(message.find("layer '1'") != std::string::npos);
  CHECK(message.find(dir.path) != std::string::npos);
  REQUIRE(wait_until_idle(*setup.context));
  CHECK(setup.disk->stats().live_bytes == 0);
  CHECK(setup.context->stack().size() == 0);
}

TEST_CASE("disk tier: the file corrupted or truncated under the store fails that backward naming the layer; "
          "the next step trains bitwise") {
  ScratchDir dir;
  DiskOffloadSetup setup(dir.path, std::size_t{1} << 30, 4 << 20);
  auto layers = wide_stack(4);
  auto wrapped = wrap_with<actckpt::DiskOffload>(layers, setup, actckpt::PoolExhaustion::spill_to_disk, true);
  const auto x = torch::randn({64, 256}, test_device::options().requires_grad(true));
  chain(layers, x).sum().backward();
  const auto reference = take_grads(*layers[0]);
  const int fd = setup.disk->file_descriptor();

  // Corrupted: layer 0's input is the first extent (offset 0); checksums catch it.
  {
    auto loss = chain(wrapped, x).sum();
    REQUIRE(wait_until_idle(*setup.context));
    const std::vector<char> garbage(4096, '\x5a');
    REQUIRE(::pwrite(fd, garbage.data(), garbage.size(), 0) == 4096);
    CHECK_THROWS_WITH_AS(loss.backward(), doctest::Contains("layer '0'"), actckpt::StashCorrupted);
  }
  take_grads(*layers[0]);
  REQUIRE(wait_until_idle(*setup.context));
  CHECK(setup.disk->stats().live_bytes == 0);

  // Truncated: the reads find the end of the file; the backward fails naming the layer and the directory.
  std::string message;
  {
    auto loss = chain(wrapped, x).sum();
    REQUIRE(wait_until_idle(*setup.context));
    REQUIRE(::ftruncate(fd, 0) == 0);
    try {
      loss.backward();
    } catch (const actckpt::OffloadFailed& e) {
      message = e.what();
    }
  }
  CAPTURE(message);
  CHECK(message.find("layer '") != std::string::npos);
  CHECK(message.find(dir.path) != std::string::npos);
  CHECK(message.find("truncated") != std::string::npos);
  take_grads(*layers[0]);
  REQUIRE(wait_until_idle(*setup.context));
  CHECK(setup.disk->stats().live_bytes == 0);
  CHECK(setup.context->stack().size() == 0);

  // The next step reserves the capacity again and trains bitwise.
  chain(wrapped, x).sum().backward();
  REQUIRE(wait_until_idle(*setup.context));
  check_bitwise_equal(take_grads(*layers[0]), reference);
  struct stat st {};
  REQUIRE(::fstat(fd, &st) == 0);
  CHECK(static_cast<std::size_t>(st.st_size) == setup.disk->capacity());
}

TEST_CASE("disk store: a process killed with SIGKILL leaves no file in the directory" * test_device::no_tensors()) {
  ScratchDir dir;
  std::array<int, 2> pipe_fds{};
  REQUIRE(::pipe(pipe_fds.data()) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {  // the child: open a store, write into it, say which descriptor, wait to be killed
    ::close(pipe_fds[0]);
    int fd = -1;
    try {
      auto store = open_store(dir.path, 1 << 20);
      const std::vector<char> data(1 << 20, 'a');
      if (::pwrite(store->file_descriptor(), data.data(), data.size(), 0) == static_cast<ssize_t>(data.size()))
        fd = store->file_descriptor();
      if (::write(pipe_fds[1], &fd, sizeof fd) != sizeof fd) ::_exit(2);
      for (;;) ::pause();
    } catch (...) {
      ::_exit(3);
    }
  }
  ::close(pipe_fds[1]);
  int fd = -1;
  REQUIRE(::read(pipe_fds[0], &fd, sizeof fd) == sizeof fd);
  ::close(pipe_fds[0]);
  REQUIRE(fd >= 0);
  // The child holds a file in the directory (its descriptor points there), with no name.
  std::array<char, 4096> target{};
  const std::string link = "/proc/" + std::to_string(child) + "/fd/" + std::to_string(fd);
  const ssize_t n = ::readlink(link.c_str(), target.data(), target.size() - 1);
  REQUIRE(n > 0);
  CHECK(std::string(target.data(), static_cast<std::size_t>(n)).find(dir.path) == 0);
  CHECK(entries(dir.path).empty());
  REQUIRE(::kill(child, SIGKILL) == 0);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(entries(dir.path).empty());
}

TEST_CASE("disk store: a disk that cannot hold the capacity fails at open naming the directory, bytes asked and free "
          "[root: mounts a 1 MiB tmpfs]" * test_device::no_tensors() * doctest::skip(!can_mount_tmpfs())) {
  ScratchDir dir;
  struct Mounted {  // unmounted on every way out, before the scratch directory goes
    explicit Mounted(const std::string& p) : path(p) { REQUIRE(::mount("tmpfs", p.c_str(), "tmpfs", 0, "size=1m") == 0); }
    ~Mounted() { ::umount(path.c_str()); }
    std::string path;
  } mounted(dir.path);
  std::string message;
  try {
    open_store(dir.path, 4 << 20);
  } catch (const actckpt::OffloadFailed& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find(dir.path) != std::string::npos);
  CHECK(message.find("could not reserve 4194304 bytes") != std::string::npos);
  CHECK(message.find("1048576 bytes are free") != std::string::npos);
  CHECK(entries(dir.path).empty());
  auto fits = open_store(dir.path, 512 << 10);  // what fits opens
  CHECK(fits->capacity() == (512u << 10));
  fits.reset();
  CHECK(entries(dir.path).empty());
}

TEST_CASE("disk tier in the memory timeline and the trace: disk bytes per sample, a disk track of writes and reads") {
  ScratchDir dir;
  DiskOffloadSetup setup(dir.path, std::size_t{1} << 30, 4 << 20);
  auto layers = wide_stack(4);
  auto wrapped = wrap_with<actckpt::DiskOffload>(layers, setup, actckpt::PoolExhaustion::spill_to_disk, false);
  const auto x = torch::randn({64, 256}, test_device::options().requires_grad(true));
  actckpt::MemoryMeter meter(test_device::device(), setup.pool);
  actckpt::MemoryTimeline timeline(meter, "disk", "start");
  timeline.watch_disk(setup.disk);
  setup.context->reset_telemetry();
  chain(wrapped, x).sum().backward();
  REQUIRE(wait_until_idle(*setup.context));
  timeline.stop();
  timeline.add_copies(setup.context->take_telemetry().spans);
  std::int64_t disk_peak = 0;
  for (const auto& s : timeline.samples()) disk_peak = std::max(disk_peak, s.disk_bytes);
  CHECK(disk_peak == 3 * 64 * 256 * 4);  // three of four stashes on disk at the turn (keep-N = 1)
  CHECK(timeline.samples().back().disk_bytes == 0);
  std::ostringstream csv, trace;
  timeline.write_csv(csv);
  timeline.write_trace(trace);
  CHECK(csv.str().rfind("time_ms,device_bytes,host_stash_bytes,delta_bytes,phase,what,label,disk_bytes\n", 0) == 0);
  CHECK(trace.str().find("\"disk MB\"") != std::string::npos);
  CHECK(trace.str().find("disk (device <-> disk store)") != std::string::npos);
  CHECK(trace.str().find("\"disk write 1\"") != std::string::npos);
  CHECK(trace.str().find("\"disk read 1\"") != std::string::npos);
}
