// A manifest: the ordered block hashes of one file version. Binary layout:
//   "TDFSMANI" | u64 size | u32 block count | u32 reserved=0 | count x 16-byte hash
// The count must equal ceil(size / 64 KiB).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/hash.h"
#include "core/status.h"

namespace tidefs {

struct Manifest {
  uint64_t size = 0;
  std::vector<Hash128> blocks;
  bool operator==(const Manifest&) const = default;
};

inline constexpr uint64_t kMaxFileSize = uint64_t{1} << 44;  // 16 TiB

std::string EncodeManifest(const Manifest& m);
Result<Manifest> DecodeManifest(std::string_view bytes);
// The same in one line of text, for an HTTP header (a content answer
// carries its file's manifest when asked, docs/protocol.md):
//   "<size in decimal> <32 lowercase hex digits per block, no separator>"
// (an empty file's is "0", the size alone).
// Decoding is strict: the encoding of what it returns is its input.
std::string EncodeManifestText(const Manifest& m);
Result<Manifest> DecodeManifestText(std::string_view text);
// Checks that the block count fits the size.
Status CheckManifestShape(uint64_t size, size_t block_count);

}  // namespace tidefs
