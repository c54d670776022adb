// What a node name may be. Checked by the server on every commit and by the
// mount before a syscall is answered, so both refuse the same names.
#pragma once

#include <string>
#include <string_view>

#include "core/status.h"

namespace tidefs {

inline constexpr size_t kMaxNameBytes = 255;
inline constexpr size_t kMaxSymlinkTarget = 4095;

// OK for a name that is non-empty, not "." or "..", has no '/' or NUL, is at
// most 255 bytes and is valid UTF-8 (names travel in JSON).
Status ValidateName(std::string_view name);
bool IsValidUtf8(std::string_view s);

// The name of a conflict copy of `name` made by `device` at `stamp`
// ("YYYY-MM-DD HHMM"): "NAME (conflict from DEVICE STAMP).EXT", cut to
// 255 bytes at a whole character of NAME. A name that is already such a
// copy of the same device and minute (the copy's name was taken too) gets
// a number instead of a second tag: "NAME (conflict from DEVICE STAMP 2).EXT".
std::string ConflictCopyName(std::string_view name, std::string_view device, std::string_view stamp);

}  // namespace tidefs
