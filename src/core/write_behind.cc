#include "core/write_behind.h"

#include <fcntl.h>

#include <cerrno>

namespace tidefs {

std::optional<WriteBehind::Work> WriteBehind::Wrote(uint64_t from, uint64_t to) {
  std::optional<Work> old;
  if (from > end_ || to < dropped_) {
    // A new run. What the old one wrote back and kept leaves now (its
    // last, partial window stays, as the last of any run does).
    if (behind_ > dropped_) old = Work{from, from, dropped_, behind_};
    end_ = behind_ = dropped_ = from;
  }
  if (to > end_) end_ = to;
  return old ? old : Advance();  // (this write's window, if it is one, goes with the next)
}

std::optional<WriteBehind::Work> WriteBehind::Appended(uint64_t to) {
  if (to > end_) end_ = to;
  return Advance();
}

std::optional<WriteBehind::Work> WriteBehind::Advance() {
  if (end_ < behind_ + kWindow) return std::nullopt;
  const uint64_t drop_to = behind_ > dropped_ + keep_ ? behind_ - keep_ : dropped_;
  Work w{behind_, end_, dropped_, drop_to};
  dropped_ = drop_to;
  behind_ = end_;
  return w;
}

int WriteBehind::Run(int fd, const Work& w) {
  if (w.write_to > w.write_from)  // (a length of 0 would mean "to the end of the file")
    (void)::sync_file_range(fd, static_cast<off_t>(w.write_from), static_cast<off_t>(w.write_to - w.write_from),
                            SYNC_FILE_RANGE_WRITE);
  if (w.drop_to <= w.drop_from) return 0;
  const auto from = static_cast<off_t>(w.drop_from), len = static_cast<off_t>(w.drop_to - w.drop_from);
  int err = 0;
  while (::sync_file_range(fd, from, len, SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                              SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
    if (errno == EINTR) continue;
    err = errno;
    break;
  }
  if (err == 0) (void)::posix_fadvise(fd, from, len, POSIX_FADV_DONTNEED);
  return err;
}

}  // namespace tidefs
