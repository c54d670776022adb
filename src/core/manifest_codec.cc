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

std::string EncodeManifestText(const Manifest& m) {
  std::string out = std::to_string(m.size);
  if (m.blocks.empty()) return out;  // (an empty file: no trailing space, which HTTP would drop)
  out.reserve(out.size() + 1 + 32 * m.blocks.size());
  out += ' ';
  for (const auto& h : m.blocks) out += h.Hex();
  return out;
}

Result<Manifest> DecodeManifestText(std::string_view text) {
  // (No space: the size alone, of a file with no blocks.)
  const size_t sp = text.find(' ');
  const std::string_view digits = text.substr(0, sp), hex = sp == std::string_view::npos ? "" : text.substr(sp + 1);
  if (sp != std::string_view::npos && hex.empty()) return Status::Corruption("manifest header: nothing after the space");
  if (digits.empty() || digits.size() > 20 || (digits.size() > 1 && digits[0] == '0'))
    return Status::Corruption("manifest header: bad size");
  Manifest m;
  for (char c : digits) {
    if (c < '0' || c > '9') return Status::Corruption("manifest header: bad size");
    if (m.size > (kMaxFileSize - (c - '0')) / 10) return Status::Corruption("manifest header: size over 16 TiB");
    m.size = m.size * 10 + static_cast<uint64_t>(c - '0');
  }
  if (hex.size() % 32) return Status::Corruption("manifest header: hashes are not 32 hex digits each");
  Status shape = CheckManifestShape(m.size, hex.size() / 32);
  if (!shape.ok()) return Status::Corruption("manifest header: " + shape.message());
  m.blocks.reserve(hex.size() / 32);
  for (size_t i = 0; i < hex.size(); i += 32) {
    auto h = Hash128::FromHex(hex.substr(i, 32));
    if (!h || h->Hex() != hex.substr(i, 32)) return Status::Corruption("manifest header: a hash is not lowercase hex");
    m.blocks.push_back(*h);
  }
  return m;
}

}  // namespace tidefs
