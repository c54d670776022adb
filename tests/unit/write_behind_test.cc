#include "core/write_behind.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

constexpr uint64_t W = WriteBehind::kWindow;

TEST(WriteBehind, AFrontToBackRunWritesEachWindowAndDropsTheOneBefore) {
  WriteBehind wb;
  EXPECT_FALSE(wb.Wrote(0, W / 2));
  auto first = wb.Wrote(W / 2, W);
  ASSERT_TRUE(first);
  EXPECT_EQ(first->write_from, 0u);
  EXPECT_EQ(first->write_to, W);
  EXPECT_EQ(first->drop_to, first->drop_from);  // nothing written yet to drop
  EXPECT_FALSE(wb.Wrote(W, W + 1));
  auto second = wb.Wrote(W + 1, 2 * W + 5);
  ASSERT_TRUE(second);
  EXPECT_EQ(second->write_from, W);
  EXPECT_EQ(second->write_to, 2 * W + 5);
  EXPECT_EQ(second->drop_from, 0u);
  EXPECT_EQ(second->drop_to, W);
}

TEST(WriteBehind, AWriteElsewhereStartsANewRunThere) {
  WriteBehind wb;
  EXPECT_TRUE(wb.Wrote(0, W));
  // A jump: not a window of the old run, whose written-back bytes leave.
  auto jump = wb.Wrote(100 * W, 100 * W + W / 2);
  ASSERT_TRUE(jump);
  EXPECT_EQ(jump->write_to, jump->write_from);  // nothing to write
  EXPECT_EQ(jump->drop_from, 0u);
  EXPECT_EQ(jump->drop_to, W);
  auto w = wb.Wrote(100 * W + W / 2, 101 * W);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->write_from, 100 * W);
  EXPECT_EQ(w->drop_to, w->drop_from);
  auto back = wb.Wrote(0, 4096);  // a jump back: the run before leaves
  ASSERT_TRUE(back);
  EXPECT_EQ(back->drop_from, 100 * W);
  EXPECT_EQ(back->drop_to, 101 * W);
  EXPECT_FALSE(wb.Wrote(50 * W, 50 * W + 4096));  // random small writes never add up to a window
  EXPECT_FALSE(wb.Wrote(0, 4096));
}

TEST(WriteBehind, AppendsFinishingOutOfOrderStayOneRun) {
  WriteBehind wb(3 * W);  // a pack that already holds 3 windows
  EXPECT_FALSE(wb.Appended(3 * W + W / 2 + W / 4));  // the second append finished first
  auto w = wb.Appended(4 * W);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->write_from, 3 * W);  // the bytes already there are not touched
  EXPECT_EQ(w->write_to, 4 * W);
  auto w2 = wb.Appended(5 * W);
  ASSERT_TRUE(w2);
  EXPECT_EQ(w2->drop_from, 3 * W);
  EXPECT_EQ(w2->drop_to, 4 * W);
}

TEST(WriteBehind, KeptBytesLeaveOnlyOnceTheRunIsFurtherOn) {
  WriteBehind wb(0, 2 * W);  // two windows kept before the one being written
  for (uint64_t i = 1; i <= 3; ++i) {
    auto w = wb.Wrote((i - 1) * W, i * W);
    ASSERT_TRUE(w);
    EXPECT_EQ(w->drop_to, w->drop_from) << "window " << i;  // nothing yet beyond the kept two
  }
  auto w = wb.Wrote(3 * W, 4 * W);
  ASSERT_TRUE(w);
  EXPECT_EQ(w->write_from, 3 * W);
  EXPECT_EQ(w->drop_from, 0u);
  EXPECT_EQ(w->drop_to, W);  // [W, 3W) kept; [3W, 4W) being written
  auto next = wb.Wrote(4 * W, 5 * W + W / 2);
  ASSERT_TRUE(next);
  EXPECT_EQ(next->drop_from, W);
  EXPECT_EQ(next->drop_to, 2 * W);
}

// Pages of `fd` in [from, to) that are in the page cache.
size_t Resident(int fd, uint64_t from, uint64_t to) {
  void* p = ::mmap(nullptr, to - from, PROT_READ, MAP_SHARED, fd, static_cast<off_t>(from));
  EXPECT_NE(p, MAP_FAILED);
  std::vector<unsigned char> vec((to - from + 4095) / 4096);
  EXPECT_EQ(::mincore(p, to - from, vec.data()), 0);
  ::munmap(p, to - from);
  size_t n = 0;
  for (unsigned char v : vec) n += v & 1;
  return n;
}

TEST(WriteBehind, RunLeavesTheBytesInTheFileAndDropsTheirPages) {
  char path[] = "/var/tmp/tidefs-write-behind-XXXXXX";
  int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  ::unlink(path);
  WriteBehind wb;
  const std::string piece(1 << 20, 'x');
  for (uint64_t off = 0; off < 3 * W; off += piece.size()) {
    ASSERT_EQ(::pwrite(fd, piece.data(), piece.size(), static_cast<off_t>(off)), static_cast<ssize_t>(piece.size()));
    if (auto w = wb.Wrote(off, off + piece.size())) WriteBehind::Run(fd, *w);
  }
  EXPECT_EQ(Resident(fd, 0, W), 0u) << "the first window is still in the page cache";
  EXPECT_GT(Resident(fd, 2 * W, 3 * W), 0u);  // the newest window stays until the run moves on
  std::string back(piece.size(), '\0');
  ASSERT_EQ(::pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(back.size()));
  EXPECT_EQ(back, piece);
  ::close(fd);
}

}  // namespace
}  // namespace tidefs
