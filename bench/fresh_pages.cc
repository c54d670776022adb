// What a page cache that grows costs on this machine, against one that
// drops behind (core/write_behind.h): writes, then reads, 1 GiB of FILE,
// 1 MiB at a time, and prints the kernel CPU and the rate.
//   build/tidefs_fresh_pages FILE cache|drop
// One mode per run, the page caches dropped and a few seconds of rest
// before each (free memory goes back to the host meanwhile; pages freed
// by a run just before would flatter the next).
#include <fcntl.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "core/write_behind.h"

namespace {

constexpr size_t kPiece = 1 << 20;
constexpr uint64_t kTotal = 1ull << 30;

double KernelSeconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

int Run(const char* path, bool write, bool drop) {
  int fd = ::open(path, write ? O_CREAT | O_TRUNC | O_WRONLY : O_RDONLY, 0644);
  if (fd < 0) return std::perror(path), 1;
  std::string buf(kPiece, 'x');
  tidefs::WriteBehind wb;
  const double k0 = KernelSeconds();
  const auto t0 = std::chrono::steady_clock::now();
  for (uint64_t off = 0; off < kTotal; off += kPiece) {
    ssize_t n = write ? ::pwrite(fd, buf.data(), kPiece, static_cast<off_t>(off))
                      : ::pread(fd, buf.data(), kPiece, static_cast<off_t>(off));
    if (n != static_cast<ssize_t>(kPiece)) return std::fprintf(stderr, "%s: short %s\n", path, write ? "write" : "read"), 1;
    if (!drop) continue;
    if (write) {
      if (auto w = wb.Wrote(off, off + kPiece)) tidefs::WriteBehind::Run(fd, *w);
    } else if ((off + kPiece) % tidefs::WriteBehind::kWindow == 0) {
      (void)::posix_fadvise(fd, static_cast<off_t>(off + kPiece - tidefs::WriteBehind::kWindow),
                            tidefs::WriteBehind::kWindow, POSIX_FADV_DONTNEED);
    }
  }
  if (write) (void)::fdatasync(fd);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-5s %-12s kernel %.2f s  %.0f MB/s\n", write ? "write" : "read", drop ? "drop-behind" : "page cache",
              KernelSeconds() - k0, kTotal / secs / 1e6);
  (void)::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);  // the next pass starts with nothing cached
  ::close(fd);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc == 3 ? argv[2] : "";
  if (mode != "cache" && mode != "drop")
    return std::fprintf(stderr, "usage: %s FILE cache|drop (1 GiB is written to FILE, then removed)\n", argv[0]), 2;
  if (Run(argv[1], true, mode == "drop") || Run(argv[1], false, mode == "drop")) return 1;
  ::unlink(argv[1]);
  return 0;
}
