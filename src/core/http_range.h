// RFC 9110 Range header parsing for one byte range.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace tidefs {

struct ByteRange {
  uint64_t first = 0;
  uint64_t last = 0;  // inclusive
  uint64_t length() const { return last - first + 1; }
};

enum class RangeResult { kNone, kSatisfiable, kUnsatisfiable };

// kNone: no usable Range (absent, not "bytes=", malformed or several
// ranges): the whole representation is sent (200), as RFC 9110 allows.
// kUnsatisfiable: a well-formed range that misses a resource of `size`.
RangeResult ParseRange(std::string_view header, uint64_t size, ByteRange* out);

}  // namespace tidefs
