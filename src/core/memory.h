// Memory for programs that move megabytes at a time.
#pragma once

#include <cstddef>
#include <mutex>
#include <utility>
#include <vector>

namespace tidefs {

// Keeps multi-megabyte heap buffers (strings, the libraries' own) on the
// heap for reuse instead of an mmap/munmap, and fresh zeroed pages, per use.
void TuneMallocForLargeBuffers();

// Memory for long-lived buffers of megabytes (request bodies, chunk
// buffers, reused from pools): mapped on its own, 2 MiB aligned, in
// transparent huge pages where the kernel gives them, and populated in one
// call. Why: on a VM that hands free memory back to its host (as the one
// we measure on), the first touch of each fresh 4 KiB page costs ~17 µs;
// a fresh mount filling its pools of 4 MiB buffers spent a third of its
// upload thread's time in page faults. 256 MiB touched page by page took
// 0.8-1.1 s there, in huge pages populated at once 30 ms.
// MapBig returns nullptr when out of address space (with overcommit, a
// lack of memory shows later, as for any allocation); UnmapBig takes the
// same size. On a kernel before 5.14 the pages come in on first use (and
// tests/unit/memory_test.cc fails).
char* MapBig(size_t size);
void UnmapBig(char* p, size_t size);

// The same for memory already allocated and not yet touched (a vector
// reserved for a million records): the whole huge pages inside
// [p, p + len) are asked for as such and populated at once.
void PopulateBig(void* p, size_t len);

// A MapBig buffer that owns its memory (move-only).
class BigBuffer {
 public:
  BigBuffer() = default;
  explicit BigBuffer(size_t size);  // throws std::bad_alloc
  ~BigBuffer() {
    if (p_) UnmapBig(p_, size_);
  }
  BigBuffer(BigBuffer&& o) noexcept : p_(std::exchange(o.p_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  BigBuffer& operator=(BigBuffer&& o) noexcept {
    if (this != &o) {
      if (p_) UnmapBig(p_, size_);
      p_ = std::exchange(o.p_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  char* data() const { return p_; }
  size_t size() const { return size_; }
  bool empty() const { return p_ == nullptr; }

 private:
  char* p_ = nullptr;
  size_t size_ = 0;
};

// BigBuffers kept for reuse (a buffer reused keeps its pages). Thread-safe.
class BigBufferPool {
 public:
  explicit BigBufferPool(size_t max_kept) : max_kept_(max_kept) {}
  // The smallest kept buffer of at least `size` bytes, or a new one of
  // `size` rounded up to 2 MiB.
  BigBuffer Take(size_t size);
  // Kept if there is room (and not empty); freed otherwise.
  void Give(BigBuffer b);

 private:
  const size_t max_kept_;
  std::mutex mu_;
  std::vector<BigBuffer> kept_;  // guarded by mu_
};

}  // namespace tidefs
