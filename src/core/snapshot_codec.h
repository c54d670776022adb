// The snapshot: every live node of a project at one seq, in one
// zstd-compressed, versioned binary blob. Layout (docs/protocol.md):
//   header (32 bytes, little-endian): "TDFSSNAP" | u32 format=1 | u32 flags=0
//                                     | u64 seq | u64 node count
//   one zstd frame holding the records column by column (parent, id, kind,
//   mode, size, mtime delta, version, seq delta, name, symlink target), so
//   that similar values sit together and compress well.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/node.h"
#include "core/status.h"

namespace tidefs {

inline constexpr uint32_t kSnapshotFormat = 1;
inline constexpr size_t kSnapshotHeaderSize = 32;
// A decoder refuses snapshots claiming more nodes than this.
inline constexpr uint64_t kMaxSnapshotNodes = 200'000'000;

struct Snapshot {
  uint64_t seq = 0;
  std::vector<NodeRecord> nodes;
};

// Builds a snapshot one node at a time, column by column, without holding
// the nodes themselves (a server lists a million of them for one).
class SnapshotEncoder {
 public:
  // Room for about `nodes` nodes (a guess: the last snapshot's count).
  void Reserve(uint64_t nodes);
  void Add(const NodeRecord& n);
  uint64_t count() const { return count_; }
  // The snapshot of the nodes added, in the order added.
  Result<std::string> Finish(uint64_t seq, int zstd_level = 3) const;

 private:
  // The columns, in snapshot order.
  std::string parent_, id_, kind_, mode_, size_, mtime_, version_, seq_, name_, target_;
  uint64_t count_ = 0;
  int64_t prev_mtime_ = 0;
  uint64_t prev_seq_ = 0;
};

// Encodes `nodes` in the order given (sorting by parent, name compresses best).
std::string EncodeSnapshot(uint64_t seq, const std::vector<NodeRecord>& nodes, int zstd_level = 3);

// Decodes and checks a snapshot from outside: header, sizes, kinds, names.
// Never reads out of bounds; a bad snapshot is kCorruption.
Result<Snapshot> DecodeSnapshot(std::string_view bytes);

}  // namespace tidefs
