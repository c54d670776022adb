// Write-behind for files written front to back (a server pack, a cache
// file taking a large copy): once a run of writes has grown by a window,
// the disk starts writing it, and the window before, written by now,
// leaves the page cache.
//
// Why: such bytes are rarely read back from this file soon (the pack's
// reader is another device; a mounted file is read from the kernel's page
// cache of the mount), and a page cache that grows by every byte written
// takes fresh memory for each page. On a VM that returns free memory to
// its host (virtio-balloon free page reporting, as on the machine we
// measure on), the first touch of such a page costs more than the copy
// into it: writing 1 GiB took 1.7 CPU-seconds of the kernel's time, and
// 0.2 s with the windows dropped behind (docs/benchmarks.md). A bounded
// page cache footprint also leaves room for what is hot.
//
// Durability is unchanged: fdatasync is still what makes bytes durable.
#pragma once

#include <cstdint>
#include <optional>

namespace tidefs {

class WriteBehind {
 public:
  static constexpr uint64_t kWindow = 8 << 20;

  // What the caller does, outside its lock, with Run().
  struct Work {
    uint64_t write_from, write_to;  // start writing these to disk
    uint64_t drop_from, drop_to;    // wait for these, then drop them
  };

  // A file whose run starts at `start` (an append-only file's size). The
  // `keep` bytes before the window being written stay in the page cache
  // too: a reader close behind the writer finds them there.
  explicit WriteBehind(uint64_t start = 0, uint64_t keep = 0)
      : keep_(keep), end_(start), behind_(start), dropped_(start) {}

  // Notes a write of [from, to). A write that continues (or overlaps) the
  // run extends it; one elsewhere starts a new run there. Not thread-safe:
  // callers hold the lock guarding this object.
  std::optional<Work> Wrote(uint64_t from, uint64_t to);
  // The same for a file only ever appended to, whose appends may finish
  // out of order: the run is the file, up to `to`.
  std::optional<Work> Appended(uint64_t to);

  // Best effort: errors are ignored (the bytes are in the page cache either way).
  // Returns 0, or the errno of a write back it waited for (a disk error:
  // waiting took it from the file, so a later fdatasync would not see it).
  static int Run(int fd, const Work& w);

 private:
  std::optional<Work> Advance();

  uint64_t keep_;
  uint64_t end_;      // where the run of writes has reached
  uint64_t behind_;   // the disk was told to write every byte of the run before this
  uint64_t dropped_;  // and bytes of the run before this have left the page cache (keep_ before behind_ or more)
};

}  // namespace tidefs
