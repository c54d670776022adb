#include "core/snapshot_codec.h"

#include <zstd.h>

#include <algorithm>
#include <iterator>
#include <memory>

#include "core/bytes.h"
#include "core/memory.h"
#include "core/names.h"

namespace tidefs {
namespace {

constexpr char kMagic[8] = {'T', 'D', 'F', 'S', 'S', 'N', 'A', 'P'};
// Upper bound of one record's raw size, to bound the decompressed size.
constexpr uint64_t kMaxSnapshotRatio = 512;
constexpr uint64_t kMaxRecordBytes = 8 + 8 + 1 + 10 * 6 + 3 + kMaxNameBytes + 3 + kMaxSymlinkTarget;

}  // namespace

void SnapshotEncoder::Reserve(uint64_t nodes) {
  const size_t n = static_cast<size_t>(std::min<uint64_t>(nodes, kMaxSnapshotNodes));
  parent_.reserve(8 * n);
  id_.reserve(8 * n);
  kind_.reserve(n);
  mode_.reserve(3 * n);
  size_.reserve(3 * n);
  mtime_.reserve(2 * n);
  version_.reserve(n);
  seq_.reserve(2 * n);
  name_.reserve(12 * n);
}

void SnapshotEncoder::Add(const NodeRecord& n) {
  ByteWriter(&parent_).U64(n.parent);
  ByteWriter(&id_).U64(n.id);
  ByteWriter(&kind_).U8(static_cast<uint8_t>(n.kind));
  ByteWriter(&mode_).Varint(n.mode);
  ByteWriter(&size_).Varint(n.size);
  ByteWriter(&mtime_).ZigZag(static_cast<int64_t>(static_cast<uint64_t>(n.mtime_ns) - static_cast<uint64_t>(prev_mtime_)));
  prev_mtime_ = n.mtime_ns;
  ByteWriter(&version_).Varint(n.version);
  ByteWriter(&seq_).ZigZag(static_cast<int64_t>(n.seq - prev_seq_));
  prev_seq_ = n.seq;
  ByteWriter(&name_).LengthPrefixed(n.name);
  if (n.kind == NodeKind::kSymlink) ByteWriter(&target_).LengthPrefixed(n.target);
  ++count_;
}

Result<std::string> SnapshotEncoder::Finish(uint64_t seq, int zstd_level) const {
  std::string out;
  ByteWriter h(&out);
  h.Bytes(std::string_view(kMagic, 8));
  h.U32(kSnapshotFormat);
  h.U32(0);
  h.U64(seq);
  h.U64(count_);
  const std::string* columns[] = {&parent_, &id_, &kind_, &mode_, &size_, &mtime_, &version_, &seq_, &name_, &target_};
  size_t raw = 0;
  for (const std::string* c : columns) raw += c->size();
  // One frame fed column by column: the columns are never copied together,
  // and the room for the worst case is not zero-filled first.
  const size_t bound = ZSTD_compressBound(raw);
  std::unique_ptr<char[]> frame = std::make_unique_for_overwrite<char[]>(bound);
  const std::unique_ptr<ZSTD_CCtx, decltype(&ZSTD_freeCCtx)> cctx(ZSTD_createCCtx(), &ZSTD_freeCCtx);
  if (!cctx) return Status::Internal("snapshot: no memory for a zstd context");
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_compressionLevel, zstd_level);
  ZSTD_CCtx_setParameter(cctx.get(), ZSTD_c_checksumFlag, 1);  // any flipped bit is a decode error
  ZSTD_CCtx_setPledgedSrcSize(cctx.get(), raw);                 // (and the frame says its size)
  ZSTD_outBuffer dst{frame.get(), bound, 0};
  for (size_t i = 0; i < std::size(columns); ++i) {
    ZSTD_inBuffer src{columns[i]->data(), columns[i]->size(), 0};
    const bool last = i + 1 == std::size(columns);
    for (;;) {
      const size_t left = ZSTD_compressStream2(cctx.get(), &dst, &src, last ? ZSTD_e_end : ZSTD_e_continue);
      if (ZSTD_isError(left)) return Status::Internal(std::string("snapshot: zstd failed: ") + ZSTD_getErrorName(left));
      if (last ? left == 0 : src.pos == src.size) break;
      if (dst.pos == dst.size) return Status::Internal("snapshot: zstd output over its bound");
    }
  }
  out.append(frame.get(), dst.pos);
  return out;
}

std::string EncodeSnapshot(uint64_t seq, const std::vector<NodeRecord>& nodes, int zstd_level) {
  SnapshotEncoder e;
  for (const auto& n : nodes) e.Add(n);
  auto out = e.Finish(seq, zstd_level);
  return out.ok() ? std::move(*out) : std::string();  // (only without memory: an empty blob no decoder takes)
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
  // Fresh memory in huge pages, populated at once (core/memory.h): a million
  // records are ~130 MB, and their first touch page by page was most of a
  // cold mount's decode. The body is not zero-filled before zstd fills it.
  const auto raw_buf = std::make_unique_for_overwrite<char[]>(raw_size);
  PopulateBig(raw_buf.get(), raw_size);
  size_t got = ZSTD_decompress(raw_buf.get(), raw_size, frame.data(), frame.size());
  if (ZSTD_isError(got) || got != raw_size) return Status::Corruption("snapshot: zstd body is corrupt");
  const std::string_view raw(raw_buf.get(), raw_size);

  Snapshot snap;
  snap.seq = seq;
  snap.nodes.reserve(count);
  PopulateBig(snap.nodes.data(), count * sizeof(NodeRecord));
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
