// A change made on a mount, as its intent log holds it: the mirror rows,
// the journal entries and the cache bitmaps it touches, numbered in the
// order the changes happened. A log is a run of frames
// [u32 length][u64 XXH3-64 of the payload][payload, see the .cc], ended
// by an all-zero header (the file is preallocated, so space for the log
// is there when the disk is full); a reader stops at the end mark, or at
// the first frame that is short or damaged (the tail a crash cut off).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/commit_codec.h"
#include "core/manifest_codec.h"
#include "core/node.h"
#include "core/status.h"

namespace tidefs {

// The journal: local changes not yet committed to the server, in order.
struct JournalEntry {
  uint64_t seq = 0;    // journal order (set when stored)
  CommitOp op;         // a namespace op; or, with `flush`, "send the
  bool flush = false;  // content of op.id as the cache holds it"
};

// What the cache holds of a file: its version, manifest and which blocks.
struct CachedFile {
  uint64_t id = 0;
  uint64_t version = 0;
  Manifest manifest;
  std::vector<bool> present;  // per block
  // Per block of the manifest: written here since `version` (a local
  // change), as of this record; nothing: not known (saved before the
  // bits were). After a reboot, present blocks outside these are checked
  // against the manifest (a power cut may have lost their bytes).
  std::optional<std::vector<bool>> dirty;
};

// The bytes of a small new file's first write (at offset 0), kept in the
// log instead of the cache file until the writer (or the next start) puts
// them there: a cp -r of small files creates no cache file in its path.
struct StagedBytes {
  uint64_t id = 0;
  std::string bytes;
};

struct LocalChange {
  uint64_t ticket = 0;
  std::vector<NodeRecord> rows;
  std::vector<JournalEntry> entries;
  std::vector<CachedFile> files;
  std::vector<StagedBytes> staged;  // (a frame without it reads as none)
};

// One frame.
std::string EncodeLocalChange(const LocalChange& c);
inline constexpr size_t kLocalLogEndMark = 12;  // zero bytes after the last frame
inline constexpr size_t kMaxLocalChangeFrame = 256u << 20;  // a reader refuses longer frames

struct DecodedLog {
  std::vector<LocalChange> changes;  // every whole, intact frame from the start
  size_t used = 0;                   // the bytes they took
  std::string stopped;               // why the rest was not read ("" at a clean end)
};
DecodedLog DecodeLocalLog(std::string_view bytes);

// Block-presence bits, packed 8 to a byte (bit i of byte i/8).
std::string PackBits(const std::vector<bool>& bits);
std::vector<bool> UnpackBits(std::string_view bytes, size_t n);

}  // namespace tidefs
