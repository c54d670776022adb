#include "server/metadata_store.h"

namespace tidefs {

static Status ValidateSimpleName(std::string_view what, std::string_view name) {
  if (name.empty() || name.size() > 64)
    return Status::Invalid(std::string(what) + " name must be 1..64 characters");
  if (name[0] == '.') return Status::Invalid(std::string(what) + " name may not start with '.'");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok) return Status::Invalid(std::string(what) + " name may only use letters, digits, '.', '_' and '-'");
  }
  return Status::Ok();
}

Status ValidateProjectName(std::string_view name) { return ValidateSimpleName("project", name); }
Status ValidateDeviceName(std::string_view name) { return ValidateSimpleName("device", name); }

}  // namespace tidefs
