#include <string_view>

#include "core/manifest_codec.h"

// The manifest a content answer carries in a header: whatever decodes
// encodes back to the same text.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = tidefs::DecodeManifestText(in);
  if (r.ok() && tidefs::EncodeManifestText(*r) != in) __builtin_trap();
  return 0;
}
