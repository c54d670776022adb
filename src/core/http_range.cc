#include "core/http_range.h"

#include <charconv>

namespace tidefs {
namespace {

bool ParseU64(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 19) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

RangeResult ParseRange(std::string_view header, uint64_t size, ByteRange* out) {
  header = Trim(header);
  if (header.substr(0, 6) != "bytes=") return RangeResult::kNone;
  std::string_view spec = Trim(header.substr(6));
  if (spec.find(',') != std::string_view::npos) return RangeResult::kNone;
  size_t dash = spec.find('-');
  if (dash == std::string_view::npos) return RangeResult::kNone;
  std::string_view a = Trim(spec.substr(0, dash)), b = Trim(spec.substr(dash + 1));
  uint64_t first, last;
  if (a.empty()) {  // suffix range: the last N bytes
    uint64_t n;
    if (!ParseU64(b, &n)) return RangeResult::kNone;
    if (n == 0 || size == 0) return RangeResult::kUnsatisfiable;
    first = n >= size ? 0 : size - n;
    last = size - 1;
  } else {
    if (!ParseU64(a, &first)) return RangeResult::kNone;
    if (b.empty()) {
      last = size == 0 ? 0 : size - 1;
    } else {
      if (!ParseU64(b, &last) || last < first) return RangeResult::kNone;
    }
    if (first >= size) return RangeResult::kUnsatisfiable;
    if (last >= size) last = size - 1;
  }
  out->first = first;
  out->last = last;
  return RangeResult::kSatisfiable;
}

}  // namespace tidefs
