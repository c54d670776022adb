#include "core/block_frame.h"

#include <cstring>

#include "core/bytes.h"

namespace tidefs {

void AppendBlockFrame(std::string* out, const Hash128& hash, std::string_view data) {
  ByteWriter w(out);
  w.Bytes(std::string_view(reinterpret_cast<const char*>(hash.bytes.data()), 16));
  w.U32(static_cast<uint32_t>(data.size()));
  w.Bytes(data);
}

void WriteBlockFrameHeader(char* at, const Hash128& hash, uint32_t len) {
  std::memcpy(at, hash.bytes.data(), 16);
  for (int i = 0; i < 4; ++i) at[16 + i] = static_cast<char>((len >> (8 * i)) & 0xff);
}

Result<std::vector<BlockFrame>> DecodeBlockFrames(std::string_view body) {
  std::vector<BlockFrame> frames;
  ByteReader r(body);
  while (r.remaining() > 0) {
    size_t at = r.position();
    std::string_view hash;
    uint32_t len;
    if (!r.Bytes(16, &hash) || !r.U32(&len))
      return Status::Invalid("block frame at byte " + std::to_string(at) + " is truncated");
    if (len == 0 || len > kBlockSize)
      return Status::Invalid("block frame at byte " + std::to_string(at) + " has length " +
                             std::to_string(len) + " (must be 1..65536)");
    BlockFrame f;
    f.hash = Hash128::FromBytes(hash.data());
    if (!r.Bytes(len, &f.data))
      return Status::Invalid("block frame at byte " + std::to_string(at) + " is truncated");
    frames.push_back(f);
  }
  if (frames.empty()) return Status::Invalid("no block frames in body");
  return frames;
}

Status VerifyBlockFrames(const std::vector<BlockFrame>& frames) {
  for (const auto& f : frames) {
    if (HashBlock(f.data) != f.hash)
      return Status::Invalid("block " + f.hash.Hex() + ": bytes do not match the hash");
  }
  return Status::Ok();
}

}  // namespace tidefs
