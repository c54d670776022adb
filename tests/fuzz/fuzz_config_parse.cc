#include <string>
#include <string_view>

#include "core/config_file.h"

// The config file parser on any bytes: an error or a config whose every
// value is non-empty and free of control characters.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  auto config = tidefs::ParseConfig(in, "fuzz");
  if (!config.ok()) return 0;
  for (const auto& [name, p] : *config) {
    if (name.empty()) __builtin_trap();
    for (const std::string* v : {&p.server, &p.token, &p.device})
      for (unsigned char c : *v)
        if (c < 0x20 || c == 0x7f) __builtin_trap();
  }
  return 0;
}
