// Block naming: XXH3-128 of a block's bytes, in canonical (big-endian) form.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace tidefs {

inline constexpr uint64_t kBlockSize = 64 * 1024;
inline constexpr uint64_t kChunkSize = 4 * 1024 * 1024;
inline constexpr uint64_t kBlocksPerChunk = kChunkSize / kBlockSize;

struct Hash128 {
  std::array<uint8_t, 16> bytes{};

  std::string Hex() const;
  // Accepts exactly 32 lowercase or uppercase hex digits.
  static std::optional<Hash128> FromHex(std::string_view hex);
  static Hash128 FromBytes(const void* p) {
    Hash128 h;
    std::memcpy(h.bytes.data(), p, 16);
    return h;
  }
  bool operator==(const Hash128&) const = default;
  auto operator<=>(const Hash128&) const = default;
};

Hash128 HashBlock(const void* data, size_t size);
inline Hash128 HashBlock(std::string_view s) { return HashBlock(s.data(), s.size()); }

// Number of blocks a file of `size` bytes has.
inline uint64_t BlockCount(uint64_t size) { return (size + kBlockSize - 1) / kBlockSize; }

struct Hash128Hasher {
  size_t operator()(const Hash128& h) const {
    size_t v;
    std::memcpy(&v, h.bytes.data(), sizeof v);
    return v;
  }
};

}  // namespace tidefs
