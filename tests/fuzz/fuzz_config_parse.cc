#include <string>
#include <string_view>

#include "core/config_file.h"

// The config file parser on any bytes: an error, or sections with names
// and values free of control characters, blanks and quotes, and no token
// without a server.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto config = tidefs::ParseConfig(in, "fuzz");
  if (!config.ok()) return 0;
  for (const auto& [name, p] : *config) {
    if (name.empty()) __builtin_trap();
    for (unsigned char c : name)
      if (c < 0x20 || c == 0x7f) __builtin_trap();
    if (!p.token.empty() && p.server.empty()) __builtin_trap();
    for (const std::string* v : {&p.server, &p.token, &p.device})
      for (unsigned char c : *v)
        if (c <= 0x20 || c == 0x7f || c == '"' || c == '\'' || c == '#' || c == ';') __builtin_trap();
  }
  return 0;
}
