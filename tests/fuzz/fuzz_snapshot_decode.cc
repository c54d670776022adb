#include <string_view>

#include "core/snapshot_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = tidefs::DecodeSnapshot(std::string_view(reinterpret_cast<const char*>(data), size));
  if (r.ok()) {
    // Whatever decodes must re-encode to something that decodes the same.
    auto again = tidefs::DecodeSnapshot(tidefs::EncodeSnapshot(r->seq, r->nodes, 1));
    if (!again.ok() || again->nodes != r->nodes) __builtin_trap();
  }
  return 0;
}
