// Framed block upload (POST /blocks): a body is a sequence of frames
//   16-byte XXH3-128 hash | u32 little-endian length (1..65536) | bytes
// DecodeBlockFrames checks the framing only; the caller re-hashes.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/hash.h"
#include "core/status.h"

namespace tidefs {

inline constexpr size_t kFrameHeaderSize = 20;
inline constexpr size_t kMaxUploadBody = 8 * 1024 * 1024;

struct BlockFrame {
  Hash128 hash;
  std::string_view data;  // points into the decoded body
};

void AppendBlockFrame(std::string* out, const Hash128& hash, std::string_view data);
// Writes a frame's header (kFrameHeaderSize bytes) at `at`, for a block
// whose `len` bytes follow it (read there in place).
void WriteBlockFrameHeader(char* at, const Hash128& hash, uint32_t len);
Result<std::vector<BlockFrame>> DecodeBlockFrames(std::string_view body);
// Re-hashes every frame; names the first whose bytes do not match.
Status VerifyBlockFrames(const std::vector<BlockFrame>& frames);

}  // namespace tidefs
