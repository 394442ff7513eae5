// disk_io_probe: the measurement behind the disk store's I/O path (docs/offload.md "Choosing the I/O
// path"). Plain C++ and POSIX, no LibTorch, not part of the build:
//   g++ -O2 -o /tmp/disk_io_probe benchmarks/disk_io_probe.cpp && /tmp/disk_io_probe /tmp 2097152
// Arguments: the directory (the store's), the stash size in bytes.
// The disk store's two I/O paths, steady state (the same extents rewritten each pass, as a
// training loop does): buffered pwrite/pread vs O_DIRECT through an aligned 8 MiB staging buffer.
#include <fcntl.h>
#include <unistd.h>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
int main(int argc, char** argv) {
  const char* dir = argc > 1 ? argv[1] : "/tmp";
  const size_t stash = argc > 2 ? strtoull(argv[2], nullptr, 10) : (size_t(2) << 20), n = 64, staging = size_t(8) << 20;
  const size_t slot = (stash + 4095) / 4096 * 4096;
  for (int direct = 0; direct < 2; ++direct) {
    int fd = open(dir, O_TMPFILE | O_RDWR | (direct ? O_DIRECT : 0), 0600);
    if (fd < 0) { perror("open"); return 1; }
    if (posix_fallocate(fd, 0, slot * n)) { perror("fallocate"); return 1; }
    char* buf = nullptr;
    if (posix_memalign(reinterpret_cast<void**>(&buf), 4096, staging) != 0) return 1;
    std::vector<char> src(stash, 3);
    std::vector<double> w, r;
    for (int rep = 0; rep < 5; ++rep) {
      auto t0 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < n; ++i)
        for (size_t d = 0; d < stash; d += staging) {
          size_t p = std::min(staging, stash - d);
          if (direct) { memcpy(buf, src.data() + d, p); p = (p + 4095) / 4096 * 4096; if (pwrite(fd, buf, p, i * slot + d) != (ssize_t)p) perror("w"); }
          else if (pwrite(fd, src.data() + d, p, i * slot + d) != (ssize_t)p) perror("w");
        }
      auto t1 = std::chrono::steady_clock::now();
      for (size_t i = 0; i < n; ++i)
        for (size_t d = 0; d < stash; d += staging) {
          size_t p = std::min(staging, stash - d);
          if (direct) { size_t q = (p + 4095) / 4096 * 4096; if (pread(fd, buf, q, i * slot + d) != (ssize_t)q) perror("r"); memcpy(src.data() + d, buf, p); }
          else if (pread(fd, src.data() + d, p, i * slot + d) != (ssize_t)p) perror("r");
        }
      auto t2 = std::chrono::steady_clock::now();
      if (rep == 0) continue;  // first pass: the extents' first writes
      w.push_back(std::chrono::duration<double>(t1 - t0).count()); r.push_back(std::chrono::duration<double>(t2 - t1).count());
    }
    std::sort(w.begin(), w.end()); std::sort(r.begin(), r.end());
    const double bytes = double(stash) * n;
    printf("%-26s stash %zu B x %zu: write %.2f GB/s, read %.2f GB/s (median of 4 passes)\n",
           direct ? "O_DIRECT + aligned staging" : "buffered pwrite/pread", stash, n, bytes / w[w.size() / 2] / 1e9, bytes / r[r.size() / 2] / 1e9);
    close(fd);
    free(buf);
  }
}
