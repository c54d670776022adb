// What a node name may be. Checked by the server on every commit and by the
// mount before a syscall is answered, so both refuse the same names.
#pragma once

#include <string_view>

#include "core/status.h"

namespace tidefs {

inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxSymlinkTarget = 4095;

// OK for a name that is non-empty, not "." or "..", has no '/' or NUL, is at
// most 255 bytes and is valid UTF-8 (names travel in JSON).
Status ValidateName(std::string_view name);
bool IsValidUtf8(std::string_view s);

}  // namespace tidefs
