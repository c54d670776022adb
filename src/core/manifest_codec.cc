#include "core/manifest_codec.h"

#include "core/bytes.h"

namespace tidefs {

constexpr char kManifestMagic[8] = {'T', 'D', 'F', 'S', 'M', 'A', 'N', 'I'};

Status CheckManifestShape(uint64_t size, size_t block_count) {
  if (size > kMaxFileSize) return Status::TooLarge("file size " + std::to_string(size) + " exceeds 16 TiB");
  if (BlockCount(size) != block_count)
    return Status::Invalid("a file of " + std::to_string(size) + " bytes has " +
                           std::to_string(BlockCount(size)) + " blocks, not " + std::to_string(block_count));
  return Status::Ok();
}

std::string EncodeManifest(const Manifest& m) {
  std::string out;
  out.reserve(24 + 16 * m.blocks.size());
  ByteWriter w(&out);
  w.Bytes(std::string_view(kManifestMagic, 8));
  w.U64(m.size);
  w.U32(static_cast<uint32_t>(m.blocks.size()));
  w.U32(0);
  for (const auto& h : m.blocks) w.Bytes(std::string_view(reinterpret_cast<const char*>(h.bytes.data()), 16));
  return out;
}

Result<Manifest> DecodeManifest(std::string_view bytes) {
  ByteReader r(bytes);
  std::string_view magic;
  Manifest m;
  uint32_t count, reserved;
  if (!r.Bytes(8, &magic) || magic != std::string_view(kManifestMagic, 8))
    return Status::Corruption("manifest: bad magic");
  if (!r.U64(&m.size) || !r.U32(&count) || !r.U32(&reserved) || reserved != 0)
    return Status::Corruption("manifest: truncated header");
  Status shape = CheckManifestShape(m.size, count);
  if (!shape.ok()) return Status::Corruption("manifest: " + shape.message());
  if (r.remaining() != uint64_t{count} * 16) return Status::Corruption("manifest: length does not match block count");
  m.blocks.resize(count);
  for (auto& h : m.blocks) {
    std::string_view b;
    r.Bytes(16, &b);
    h = Hash128::FromBytes(b.data());
  }
  return m;
}

}  // namespace tidefs
