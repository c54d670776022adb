#include "core/names.h"

#include <string>

namespace tidefs {

bool IsValidUtf8(std::string_view s) {
  size_t i = 0, n = s.size();
  while (i < n) {
    unsigned char c = s[i];
    size_t len;
    uint32_t cp;
    if (c < 0x80) { ++i; continue; }
    if ((c & 0xE0) == 0xC0) { len = 2; cp = c & 0x1F; }
    else if ((c & 0xF0) == 0xE0) { len = 3; cp = c & 0x0F; }
    else if ((c & 0xF8) == 0xF0) { len = 4; cp = c & 0x07; }
    else return false;
    if (i + len > n) return false;
    for (size_t k = 1; k < len; ++k) {
      unsigned char d = s[i + k];
      if ((d & 0xC0) != 0x80) return false;
      cp = cp << 6 | (d & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid.
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
      return false;
    i += len;
  }
  return true;
}

Status ValidateName(std::string_view name) {
  if (name.empty()) return Status::Invalid("name is empty");
  if (name == "." || name == "..") return Status::Invalid("name may not be '.' or '..'");
  if (name.size() > kMaxNameBytes)
    return Status::Invalid("name is " + std::to_string(name.size()) + " bytes; the limit is 255");
  if (name.find('/') != std::string_view::npos) return Status::Invalid("name contains '/'");
  if (name.find('\0') != std::string_view::npos) return Status::Invalid("name contains NUL");
  if (!IsValidUtf8(name)) return Status::Invalid("name is not valid UTF-8");
  return Status::Ok();
}

std::string ConflictCopyName(std::string_view name, std::string_view device, std::string_view stamp) {
  const std::string open = " (conflict from " + std::string(device) + " " + std::string(stamp);
  std::string_view stem = name, ext;
  unsigned number = 1;
  // Already a copy of this device and minute: the tag's number goes up.
  if (const size_t at = name.rfind(open); at != std::string_view::npos && at > 0) {
    size_t p = at + open.size();
    unsigned n = 1;
    if (p + 1 < name.size() && name[p] == ' ' && name[p + 1] >= '1' && name[p + 1] <= '9') {
      n = 0;
      for (++p; p < name.size() && name[p] >= '0' && name[p] <= '9' && n < 100000; ++p) n = n * 10 + (name[p] - '0');
    }
    if (p < name.size() && name[p] == ')') {
      const std::string_view rest = name.substr(p + 1);
      if (rest.empty() || (rest[0] == '.' && rest.find('.', 1) == std::string_view::npos)) {
        stem = name.substr(0, at);
        ext = rest;
        number = n + 1;
      }
    }
  }
  if (number == 1) {
    if (const size_t dot = name.rfind('.'); dot != std::string_view::npos && dot > 0) {
      stem = name.substr(0, dot);
      ext = name.substr(dot);
    }
  }
  const std::string tag = open + (number > 1 ? " " + std::to_string(number) : "") + ")" + std::string(ext);
  std::string out(stem);
  if (out.size() + tag.size() > kMaxNameBytes) {
    out.resize(kMaxNameBytes > tag.size() ? kMaxNameBytes - tag.size() : 0);
    // Whole characters only: drop a cut one's continuation bytes and lead byte.
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
    if (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0xC0) out.pop_back();
  }
  return out + tag;
}

}  // namespace tidefs
