// A node record as a client receives it from a server.
#include <string_view>

#include <nlohmann/json.hpp>

#include "core/names.h"
#include "core/node.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto j = nlohmann::json::parse(std::string_view(reinterpret_cast<const char*>(data), size), nullptr, false);
  if (j.is_discarded()) return 0;
  auto r = tidefs::NodeFromJson(j);
  if (r.ok() && r->id != tidefs::kRootId && !tidefs::ValidateName(r->name).ok()) __builtin_trap();
  return 0;
}
