#include "core/snapshot_codec.h"

#include <zstd.h>

#include "core/bytes.h"
#include "core/names.h"

namespace tidefs {
namespace {

constexpr char kMagic[8] = {'T', 'D', 'F', 'S', 'S', 'N', 'A', 'P'};
// Upper bound of one record's raw size, to bound the decompressed size.
constexpr uint64_t kMaxSnapshotRatio = 512;
constexpr uint64_t kMaxRecordBytes = 8 + 8 + 1 + 10 * 6 + 3 + kMaxNameBytes + 3 + kMaxSymlinkTarget;

}  // namespace

std::string EncodeSnapshot(uint64_t seq, const std::vector<NodeRecord>& nodes, int zstd_level) {
  std::string raw;
  raw.reserve(nodes.size() * 40);
  ByteWriter w(&raw);
  for (const auto& n : nodes) w.U64(n.parent);
  for (const auto& n : nodes) w.U64(n.id);
  for (const auto& n : nodes) w.U8(static_cast<uint8_t>(n.kind));
  for (const auto& n : nodes) w.Varint(n.mode);
  for (const auto& n : nodes) w.Varint(n.size);
  int64_t prev_mtime = 0;
  for (const auto& n : nodes) {
    w.ZigZag(static_cast<int64_t>(static_cast<uint64_t>(n.mtime_ns) - static_cast<uint64_t>(prev_mtime)));
    prev_mtime = n.mtime_ns;
  }
  for (const auto& n : nodes) w.Varint(n.version);
  uint64_t prev_seq = 0;
  for (const auto& n : nodes) {
    w.ZigZag(static_cast<int64_t>(n.seq - prev_seq));
    prev_seq = n.seq;
  }
  for (const auto& n : nodes) w.LengthPrefixed(n.name);
  for (const auto& n : nodes)
    if (n.kind == NodeKind::kSymlink) w.LengthPrefixed(n.target);

  std::string out;
  ByteWriter h(&out);
  h.Bytes(std::string_view(kMagic, 8));
  h.U32(kSnapshotFormat);
  h.U32(0);
  h.U64(seq);
  h.U64(nodes.size());
  size_t bound = ZSTD_compressBound(raw.size());
  out.resize(kSnapshotHeaderSize + bound);
  // The frame checksum makes any flipped bit a decode error.
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, zstd_level);
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1);
  size_t n = ZSTD_compress2(cctx, out.data() + kSnapshotHeaderSize, bound, raw.data(), raw.size());
  ZSTD_freeCCtx(cctx);
  out.resize(kSnapshotHeaderSize + (ZSTD_isError(n) ? 0 : n));
  return out;
}

Result<Snapshot> DecodeSnapshot(std::string_view bytes) {
  ByteReader r(bytes);
  std::string_view magic;
  uint32_t format, flags;
  uint64_t seq, count;
  if (!r.Bytes(8, &magic) || magic != std::string_view(kMagic, 8))
    return Status::Corruption("snapshot: bad magic (not a tidefs snapshot)");
  if (!r.U32(&format) || !r.U32(&flags) || !r.U64(&seq) || !r.U64(&count))
    return Status::Corruption("snapshot: truncated header");
  if (format != kSnapshotFormat)
    return Status::Corruption("snapshot: unsupported format " + std::to_string(format));
  if (flags != 0) return Status::Corruption("snapshot: unknown flags");
  if (count > kMaxSnapshotNodes) return Status::Corruption("snapshot: node count too large");

  std::string_view frame = bytes.substr(kSnapshotHeaderSize);
  unsigned long long raw_size = ZSTD_getFrameContentSize(frame.data(), frame.size());
  if (raw_size == ZSTD_CONTENTSIZE_ERROR || raw_size == ZSTD_CONTENTSIZE_UNKNOWN)
    return Status::Corruption("snapshot: bad zstd frame");
  if (raw_size > count * kMaxRecordBytes || raw_size < count * 20)
    return Status::Corruption("snapshot: body size does not fit the node count");
  // Real snapshots compress 3-20x; a claim far beyond that is an attempt to
  // make the reader allocate gigabytes, refused before any allocation.
  if (raw_size > uint64_t{frame.size()} * kMaxSnapshotRatio)
    return Status::Corruption("snapshot: implausible compression ratio");
  std::string raw(raw_size, '\0');
  size_t got = ZSTD_decompress(raw.data(), raw.size(), frame.data(), frame.size());
  if (ZSTD_isError(got) || got != raw_size) return Status::Corruption("snapshot: zstd body is corrupt");

  Snapshot snap;
  snap.seq = seq;
  snap.nodes.resize(count);
  ByteReader b(raw);
  auto bad = [](const char* what) { return Status::Corruption(std::string("snapshot: bad ") + what); };
  for (auto& n : snap.nodes) if (!b.U64(&n.parent)) return bad("parent column");
  for (auto& n : snap.nodes) {
    if (!b.U64(&n.id) || n.id == 0 || n.id > kMaxNodeId) return bad("id column");
  }
  for (auto& n : snap.nodes) {
    uint8_t k;
    if (!b.U8(&k) || k < 1 || k > 3) return bad("kind column");
    n.kind = static_cast<NodeKind>(k);
  }
  for (auto& n : snap.nodes) {
    uint64_t m;
    if (!b.Varint(&m) || m > kModeMask) return bad("mode column");
    n.mode = static_cast<uint32_t>(m);
  }
  for (auto& n : snap.nodes) if (!b.Varint(&n.size)) return bad("size column");
  uint64_t mtime = 0;
  for (auto& n : snap.nodes) {
    int64_t d;
    if (!b.ZigZag(&d)) return bad("mtime column");
    mtime += static_cast<uint64_t>(d);
    n.mtime_ns = static_cast<int64_t>(mtime);
  }
  for (auto& n : snap.nodes) if (!b.Varint(&n.version)) return bad("version column");
  uint64_t s = 0;
  for (auto& n : snap.nodes) {
    int64_t d;
    if (!b.ZigZag(&d)) return bad("seq column");
    s += static_cast<uint64_t>(d);
    if (s > seq) return bad("seq column (record newer than snapshot)");
    n.seq = s;
  }
  for (auto& n : snap.nodes) {
    std::string_view name;
    if (!b.LengthPrefixed(kMaxNameBytes, &name)) return bad("name column");
    n.name.assign(name);
    if (n.id == kRootId) {
      if (!n.name.empty() || n.parent != 0 || n.kind != NodeKind::kDir) return bad("root record");
    } else {
      if (n.parent == 0) return bad("parent of a non-root node");
      Status st = ValidateName(n.name);
      if (!st.ok()) return Status::Corruption("snapshot: node " + std::to_string(n.id) + ": " + st.message());
    }
  }
  for (auto& n : snap.nodes) {
    if (n.kind != NodeKind::kSymlink) continue;
    std::string_view t;
    if (!b.LengthPrefixed(kMaxSymlinkTarget, &t)) return bad("symlink target column");
    n.target.assign(t);
  }
  if (b.remaining() != 0) return bad("trailing bytes");
  return snap;
}

}  // namespace tidefs
