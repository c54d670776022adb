// Percent-decoding of request targets (RFC 3986).
#pragma once

#include <string>
#include <string_view>

namespace tidefs {

// Decodes %XX escapes (and '+' as a space when asked); false on a malformed
// escape, and then `out` is unspecified.
bool PercentDecode(std::string_view in, std::string* out, bool plus_is_space);

}  // namespace tidefs
