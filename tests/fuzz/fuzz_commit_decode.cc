#include <string_view>

#include "core/commit_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto r = tidefs::DecodeCommit(std::string_view(reinterpret_cast<const char*>(data), size));
  if (r.ok()) {
    auto again = tidefs::DecodeCommit(tidefs::EncodeCommit(*r));
    if (!again.ok() || again->size() != r->size()) __builtin_trap();
  }
  return 0;
}
