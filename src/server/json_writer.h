// A fast JSON writer for node records (listings are the hot path; this is
// several times quicker than building nlohmann objects).
#pragma once

#include <string>
#include <string_view>

#include "core/node.h"

namespace tidefs {

// Appends s as a JSON string; s must be valid UTF-8 (names are checked).
void AppendJsonString(std::string* out, std::string_view s);
void AppendNodeJson(std::string* out, const NodeRecord& n);

}  // namespace tidefs
