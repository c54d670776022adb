#include "server/json_writer.h"

#include <fmt/format.h>

namespace tidefs {

void AppendJsonString(std::string* out, std::string_view s) {
  out->push_back('"');
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == '"') *out += "\\\"";
    else if (c == '\\') *out += "\\\\";
    else if (c < 0x20) fmt::format_to(std::back_inserter(*out), "\\u{:04x}", c);
    else out->push_back(ch);
  }
  out->push_back('"');
}

void AppendNodeJson(std::string* out, const NodeRecord& n) {
  fmt::format_to(std::back_inserter(*out), "{{\"id\":{},\"parent\":{},\"name\":", n.id, n.parent);
  AppendJsonString(out, n.name);
  fmt::format_to(std::back_inserter(*out),
                 ",\"kind\":\"{}\",\"mode\":{},\"size\":{},\"mtime_ns\":{},\"version\":{},\"seq\":{},\"deleted\":{}",
                 KindName(n.kind), n.mode, n.size, n.mtime_ns, n.version, n.seq, n.deleted ? "true" : "false");
  if (n.kind == NodeKind::kSymlink) {
    *out += ",\"target\":";
    AppendJsonString(out, n.target);
  }
  out->push_back('}');
}

}  // namespace tidefs
