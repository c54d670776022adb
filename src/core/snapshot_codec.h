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

// Encodes `nodes` in the order given (sorting by parent, name compresses best).
std::string EncodeSnapshot(uint64_t seq, const std::vector<NodeRecord>& nodes, int zstd_level = 3);

// Decodes and checks a snapshot from outside: header, sizes, kinds, names.
// Never reads out of bounds; a bad snapshot is kCorruption.
Result<Snapshot> DecodeSnapshot(std::string_view bytes);

}  // namespace tidefs
