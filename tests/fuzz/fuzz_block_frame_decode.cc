#include <string_view>

#include "core/block_frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = tidefs::DecodeBlockFrames(in);
  if (r.ok()) {
    size_t total = 0;
    for (const auto& f : *r) {
      if (f.data.empty() || f.data.size() > tidefs::kBlockSize) __builtin_trap();
      total += tidefs::kFrameHeaderSize + f.data.size();
    }
    if (total != size) __builtin_trap();
    (void)tidefs::VerifyBlockFrames(*r);
  }
  return 0;
}
