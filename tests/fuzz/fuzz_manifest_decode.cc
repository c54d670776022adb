#include <string_view>

#include "core/manifest_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto r = tidefs::DecodeManifest(in);
  if (r.ok() && tidefs::EncodeManifest(*r) != in) __builtin_trap();
  return 0;
}
