#include "core/local_change.h"

#include "core/names.h"

#include <algorithm>
#include <cstring>

#include <xxhash.h>

namespace tidefs {
namespace {

constexpr size_t kHeader = kLocalLogEndMark;  // length, hash
constexpr uint64_t kMaxFrame = kMaxLocalChangeFrame;  // a file's manifest is 16 bytes a 64 KiB block

void PutLE(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
uint64_t GetLE(const char* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= uint64_t{static_cast<unsigned char>(p[i])} << (8 * i);
  return v;
}

// Payload fields, little-endian; a string is a u32 length and its bytes.
struct Writer {
  std::string out;
  void U8(uint8_t v) { out.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) { PutLE(&out, v, 4); }
  void U64(uint64_t v) { PutLE(&out, v, 8); }
  void Str(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    out.append(s);
  }
};

struct Reader {
  std::string_view in;
  bool ok = true;
  bool Need(size_t n) {
    if (in.size() < n) ok = false;
    return ok;
  }
  uint64_t Int(int bytes) {
    if (!Need(bytes)) return 0;
    uint64_t v = GetLE(in.data(), bytes);
    in.remove_prefix(bytes);
    return v;
  }
  uint8_t U8() { return static_cast<uint8_t>(Int(1)); }
  uint32_t U32() { return static_cast<uint32_t>(Int(4)); }
  uint64_t U64() { return Int(8); }
  std::string_view Str() {
    uint32_t n = U32();
    if (!Need(n)) return {};
    std::string_view s = in.substr(0, n);
    in.remove_prefix(n);
    return s;
  }
  // A count of items of at least `min_bytes` each: never more than the bytes left allow.
  uint32_t Count(size_t min_bytes) {
    uint32_t n = U32();
    if (ok && n > in.size() / min_bytes) ok = false;
    return ok ? n : 0;
  }
};

Result<LocalChange> Parse(std::string_view payload) {
  Reader r{payload};
  LocalChange c;
  c.ticket = r.U64();
  for (uint32_t i = 0, n = r.Count(50); i < n && r.ok; ++i) {
    NodeRecord row;
    row.id = r.U64();
    row.parent = r.U64();
    row.name = std::string(r.Str());
    const uint8_t kind = r.U8();
    row.mode = r.U32() & kModeMask;
    row.size = r.U64();
    row.mtime_ns = static_cast<int64_t>(r.U64());
    row.version = r.U64();
    row.seq = r.U64();
    const uint8_t deleted = r.U8();
    row.target = std::string(r.Str());
    if (!r.ok) break;
    if (kind < 1 || kind > 3 || deleted > 1) return Status::Corruption("bad node row");
    row.kind = static_cast<NodeKind>(kind);
    row.deleted = deleted == 1;
    // (A tombstone needs only its id.)
    if (row.id != kRootId && !row.deleted)
      if (Status st = ValidateName(row.name); !st.ok()) return Status::Corruption("node row: " + st.message());
    c.rows.push_back(std::move(row));
  }
  for (uint32_t i = 0, n = r.Count(5); i < n && r.ok; ++i) {
    const uint8_t flush = r.U8();
    std::string_view op = r.Str();
    if (!r.ok) break;
    if (flush > 1) return Status::Corruption("bad journal entry");
    ASSIGN_OR_RETURN(auto ops, DecodeCommit(op));
    if (ops.size() != 1) return Status::Corruption("a journal entry holds one op");
    JournalEntry e;
    e.flush = flush == 1;
    e.op = std::move(ops[0]);
    c.entries.push_back(std::move(e));
  }
  for (uint32_t i = 0, n = r.Count(24); i < n && r.ok; ++i) {
    CachedFile f;
    f.id = r.U64();
    f.version = r.U64();
    std::string_view m = r.Str();
    std::string_view bits = r.Str();
    if (!r.ok) break;
    ASSIGN_OR_RETURN(f.manifest, DecodeManifest(m));
    if (bits.size() != (f.manifest.blocks.size() + 7) / 8) return Status::Corruption("bitmap does not fit the manifest");
    f.present = UnpackBits(bits, f.manifest.blocks.size());
    c.files.push_back(std::move(f));
  }
  // (Frames written before staged bytes existed end here.)
  if (r.ok && !r.in.empty()) {
    for (uint32_t i = 0, n = r.Count(12); i < n && r.ok; ++i) {
      StagedBytes s;
      s.id = r.U64();
      s.bytes = std::string(r.Str());
      if (r.ok && (s.id == 0 || s.id > kMaxNodeId)) return Status::Corruption("staged bytes of a bad node id");
      c.staged.push_back(std::move(s));
    }
  }
  // (And those written before the dirty bits were, here: their files'
  // bits stay unknown.) For each file in order, whether its bits are known
  // and, if so, the bits.
  if (r.ok && !r.in.empty()) {
    const uint32_t n = r.Count(1);
    if (r.ok && n != c.files.size()) return Status::Corruption("dirty bits for " + std::to_string(n) + " of " +
                                                               std::to_string(c.files.size()) + " files");
    for (uint32_t i = 0; i < n && r.ok; ++i) {
      const uint8_t known = r.U8();
      if (r.ok && known > 1) return Status::Corruption("bad dirty bits mark");
      if (known == 0) continue;
      std::string_view bits = r.Str();
      if (!r.ok) break;
      CachedFile& f = c.files[i];
      if (bits.size() != (f.manifest.blocks.size() + 7) / 8) return Status::Corruption("dirty bits do not fit the manifest");
      f.dirty = UnpackBits(bits, f.manifest.blocks.size());
    }
  }
  if (!r.ok) return Status::Corruption("cut short");
  if (!r.in.empty()) return Status::Corruption("bytes past the end");
  return c;
}

}  // namespace

std::string PackBits(const std::vector<bool>& bits) {
  std::string out((bits.size() + 7) / 8, '\0');
  for (size_t i = 0; i < bits.size(); ++i)
    if (bits[i]) out[i / 8] = static_cast<char>(out[i / 8] | (1 << (i % 8)));
  return out;
}

std::vector<bool> UnpackBits(std::string_view bytes, size_t n) {
  std::vector<bool> bits(n, false);
  for (size_t i = 0; i < n && i / 8 < bytes.size(); ++i) bits[i] = (bytes[i / 8] >> (i % 8)) & 1;
  return bits;
}

std::string EncodeLocalChange(const LocalChange& c) {
  Writer w;
  w.out.resize(kHeader);  // filled in below
  w.U64(c.ticket);
  w.U32(static_cast<uint32_t>(c.rows.size()));
  for (const auto& r : c.rows) {
    w.U64(r.id);
    w.U64(r.parent);
    w.Str(r.name);
    w.U8(static_cast<uint8_t>(r.kind));
    w.U32(r.mode);
    w.U64(r.size);
    w.U64(static_cast<uint64_t>(r.mtime_ns));
    w.U64(r.version);
    w.U64(r.seq);
    w.U8(r.deleted ? 1 : 0);
    w.Str(r.target);
  }
  w.U32(static_cast<uint32_t>(c.entries.size()));
  for (const auto& e : c.entries) {
    w.U8(e.flush ? 1 : 0);
    w.Str(EncodeCommit({e.op}));
  }
  w.U32(static_cast<uint32_t>(c.files.size()));
  for (const auto& f : c.files) {
    // The bitmap covers the manifest's blocks (a local file's bytes past
    // its end are found again from the cache file's size).
    std::vector<bool> bits = f.present;
    bits.resize(f.manifest.blocks.size(), false);
    w.U64(f.id);
    w.U64(f.version);
    w.Str(EncodeManifest(f.manifest));
    w.Str(PackBits(bits));
  }
  // The files' dirty bits follow the staged bytes (a count of none if
  // need be).
  const bool dirty = std::any_of(c.files.begin(), c.files.end(), [](const CachedFile& f) { return f.dirty.has_value(); });
  if (!c.staged.empty() || dirty) {
    w.U32(static_cast<uint32_t>(c.staged.size()));
    for (const auto& s : c.staged) {
      w.U64(s.id);
      w.Str(s.bytes);
    }
  }
  if (dirty) {
    w.U32(static_cast<uint32_t>(c.files.size()));
    for (const auto& f : c.files) {
      w.U8(f.dirty ? 1 : 0);
      if (!f.dirty) continue;
      std::vector<bool> bits = *f.dirty;
      bits.resize(f.manifest.blocks.size(), false);
      w.Str(PackBits(bits));
    }
  }
  const size_t len = w.out.size() - kHeader;
  std::string head;
  PutLE(&head, len, 4);
  PutLE(&head, XXH3_64bits(w.out.data() + kHeader, len), 8);
  w.out.replace(0, kHeader, head);
  return std::move(w.out);
}

DecodedLog DecodeLocalLog(std::string_view bytes) {
  DecodedLog out;
  size_t at = 0;
  while (at < bytes.size()) {
    if (bytes.size() - at < kHeader) {
      out.stopped = "a frame header cut short";
      break;
    }
    const uint64_t len = GetLE(bytes.data() + at, 4);
    const uint64_t hash = GetLE(bytes.data() + at + 4, 8);
    if (len == 0 && hash == 0) break;  // the end mark
    if (len > kMaxFrame || len > bytes.size() - at - kHeader) {
      out.stopped = "a frame cut short";
      break;
    }
    std::string_view payload = bytes.substr(at + kHeader, len);
    if (XXH3_64bits(payload.data(), payload.size()) != hash) {
      out.stopped = "a frame whose hash does not match";
      break;
    }
    auto c = Parse(payload);
    if (!c.ok()) {
      out.stopped = "a frame that does not decode: " + c.status().message();
      break;
    }
    out.changes.push_back(std::move(*c));
    at += kHeader + len;
    out.used = at;
  }
  return out;
}

}  // namespace tidefs
