#include <cstring>
#include <string_view>

#include "core/http_range.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 8) return 0;
  uint64_t file_size;
  std::memcpy(&file_size, data, 8);
  file_size &= (uint64_t{1} << 50) - 1;
  tidefs::ByteRange r;
  std::string_view header(reinterpret_cast<const char*>(data + 8), size - 8);
  if (tidefs::ParseRange(header, file_size, &r) == tidefs::RangeResult::kSatisfiable) {
    if (r.first > r.last || r.last >= file_size) __builtin_trap();
  }
  return 0;
}
