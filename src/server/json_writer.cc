#include "server/json_writer.h"

#include <charconv>

namespace tidefs {
namespace {

template <typename T>
void AppendNumber(std::string* out, T v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out->append(buf, end);
}

}  // namespace

void AppendJsonString(std::string* out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out->push_back('"');
  size_t plain = 0;  // start of the run of characters that need no escape
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out->append(s.data() + plain, i - plain);
    plain = i + 1;
    if (c == '"') *out += "\\\"";
    else if (c == '\\') *out += "\\\\";
    else {
      char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
      out->append(esc, 6);
    }
  }
  out->append(s.data() + plain, s.size() - plain);
  out->push_back('"');
}

void AppendNodeJson(std::string* out, const NodeRecord& n) {
  *out += "{\"id\":";
  AppendNumber(out, n.id);
  *out += ",\"parent\":";
  AppendNumber(out, n.parent);
  *out += ",\"name\":";
  AppendJsonString(out, n.name);
  *out += ",\"kind\":\"";
  *out += KindName(n.kind);
  *out += "\",\"mode\":";
  AppendNumber(out, n.mode);
  *out += ",\"size\":";
  AppendNumber(out, n.size);
  *out += ",\"mtime_ns\":";
  AppendNumber(out, n.mtime_ns);
  *out += ",\"version\":";
  AppendNumber(out, n.version);
  *out += ",\"seq\":";
  AppendNumber(out, n.seq);
  *out += n.deleted ? ",\"deleted\":true" : ",\"deleted\":false";
  if (n.kind == NodeKind::kSymlink) {
    *out += ",\"target\":";
    AppendJsonString(out, n.target);
  }
  out->push_back('}');
}

}  // namespace tidefs
