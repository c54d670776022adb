// MapBig / BigBuffer: memory for long-lived buffers of megabytes.
#include "core/memory.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

// Kernel pages of the calling process now resident (/proc/self/statm).
uint64_t ResidentPages() {
  std::ifstream statm("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident;
}

TEST(MemoryTest, ABigBufferIsAlignedZeroedAndResidentFromTheStart) {
  const size_t size = (4 << 20) + 123;  // not a whole number of huge pages
  const uint64_t before = ResidentPages();
  BigBuffer b(size);
  const uint64_t after = ResidentPages();
  ASSERT_FALSE(b.empty());
  EXPECT_EQ(b.size(), size);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data()) % (2 << 20), 0u) << "not 2 MiB aligned: no huge pages";
  for (size_t i = 0; i < size; i += 4096) ASSERT_EQ(b.data()[i], 0) << "at " << i;
  std::memset(b.data(), 7, size);  // every byte of the size asked for is ours
  EXPECT_EQ(b.data()[size - 1], 7);
  // Populated at once, not page by page on first touch. A kernel before
  // Linux 5.14 has no MADV_POPULATE_WRITE: it fails here, loudly (the
  // mount works there, paying a fault per page).
  EXPECT_GE(after - before, size / 4096) << "the buffer's pages were not in before its first use "
                                            "(a kernel without MADV_POPULATE_WRITE, before 5.14?)";
}

TEST(MemoryTest, AMovedBigBufferLeavesAnEmptyOneAndFreesOnce) {
  BigBuffer a(1 << 20);
  char* p = a.data();
  BigBuffer b(std::move(a));
  EXPECT_TRUE(a.empty());
  EXPECT_EQ(b.data(), p);
  BigBuffer c;
  c = std::move(b);
  EXPECT_EQ(c.data(), p);
  EXPECT_EQ(c.size(), 1u << 20);
  EXPECT_TRUE(BigBuffer().empty());
  EXPECT_EQ(MapBig(0), nullptr);
}

TEST(MemoryTest, APoolHandsBackAKeptBufferBigEnoughAndKeepsNoMoreThanItsLimit) {
  BigBufferPool pool(1);
  BigBuffer a = pool.Take(3 << 20);
  EXPECT_EQ(a.size(), 4u << 20) << "a new buffer is a whole number of huge pages";
  char* p = a.data();
  BigBuffer b = pool.Take(1 << 20);
  pool.Give(std::move(a));
  pool.Give(std::move(b));  // over the limit: freed
  BigBuffer c = pool.Take(4 << 20);
  EXPECT_EQ(c.data(), p) << "the kept buffer, not a new one";
  BigBuffer d = pool.Take(1 << 20);
  EXPECT_NE(d.data(), p);
  EXPECT_EQ(d.size(), 2u << 20);
  pool.Give(BigBuffer());  // an empty one is not kept
  BigBuffer e = pool.Take(8 << 20);
  EXPECT_EQ(e.size(), 8u << 20);
}

}  // namespace
}  // namespace tidefs
