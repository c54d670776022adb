#include "core/memory.h"

#include <malloc.h>
#include <sys/mman.h>

#include <cstdint>
#include <new>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older headers lack it (older kernels answer EINVAL)
#endif

namespace tidefs {
namespace {

constexpr size_t kHugePage = 2 << 20;

size_t MappedLength(size_t size) { return (size + kHugePage - 1) / kHugePage * kHugePage; }

}  // namespace

void TuneMallocForLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

char* MapBig(size_t size) {
  if (size == 0) return nullptr;
  const size_t len = MappedLength(size);
  // Over-map by a huge page, then trim to an aligned run of whole ones.
  void* raw = ::mmap(nullptr, len + kHugePage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kHugePage - 1) & ~(kHugePage - 1);
  if (aligned > start) ::munmap(raw, aligned - start);
  if (const size_t tail = kHugePage - (aligned - start); tail > 0)
    ::munmap(reinterpret_cast<void*>(aligned + len), tail);
  auto* p = reinterpret_cast<char*>(aligned);
  (void)::madvise(p, len, MADV_HUGEPAGE);        // "madvise" mode (Debian's default): asked for
  (void)::madvise(p, len, MADV_POPULATE_WRITE);  // (before Linux 5.14: EINVAL, touched on use)
  return p;
}

void PopulateBig(void* p, size_t len) {
  const auto start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t from = (start + kHugePage - 1) & ~(kHugePage - 1), to = (start + len) & ~(kHugePage - 1);
  if (to <= from) return;
  (void)::madvise(reinterpret_cast<void*>(from), to - from, MADV_HUGEPAGE);
  (void)::madvise(reinterpret_cast<void*>(from), to - from, MADV_POPULATE_WRITE);
}

void UnmapBig(char* p, size_t size) {
  if (p) ::munmap(p, MappedLength(size));
}

BigBuffer::BigBuffer(size_t size) : p_(MapBig(size)), size_(size) {
  if (!p_ && size > 0) throw std::bad_alloc();
}

BigBuffer BigBufferPool::Take(size_t size) {
  {
    std::lock_guard lock(mu_);
    size_t best = kept_.size();
    for (size_t i = 0; i < kept_.size(); ++i)
      if (kept_[i].size() >= size && (best == kept_.size() || kept_[i].size() < kept_[best].size())) best = i;
    if (best < kept_.size()) {
      BigBuffer b = std::move(kept_[best]);
      kept_.erase(kept_.begin() + static_cast<std::ptrdiff_t>(best));
      return b;
    }
  }
  return BigBuffer(MappedLength(size));
}

void BigBufferPool::Give(BigBuffer b) {
  if (b.empty()) return;
  std::lock_guard lock(mu_);
  if (kept_.size() < max_kept_) kept_.push_back(std::move(b));
}

}  // namespace tidefs
