#include <string>
#include <string_view>

#include "core/url.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string out;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (tidefs::PercentDecode(in, &out, size % 2) && out.size() > in.size()) __builtin_trap();
  return 0;
}
