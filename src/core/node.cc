#include "core/node.h"

#include <nlohmann/json.hpp>

#include "core/names.h"

namespace tidefs {

const char* KindName(NodeKind kind) {
  switch (kind) {
    case NodeKind::kFile: return "file";
    case NodeKind::kDir: return "dir";
    case NodeKind::kSymlink: return "symlink";
  }
  return "file";
}

bool ParseKind(std::string_view s, NodeKind* kind) {
  if (s == "file") *kind = NodeKind::kFile;
  else if (s == "dir") *kind = NodeKind::kDir;
  else if (s == "symlink") *kind = NodeKind::kSymlink;
  else return false;
  return true;
}

void to_json(nlohmann::json& j, const NodeRecord& n) {
  j = nlohmann::json{{"id", n.id},         {"parent", n.parent},     {"name", n.name},
                     {"kind", KindName(n.kind)}, {"mode", n.mode},  {"size", n.size},
                     {"mtime_ns", n.mtime_ns},   {"version", n.version}, {"seq", n.seq},
                     {"deleted", n.deleted}};
  if (n.kind == NodeKind::kSymlink) j["target"] = n.target;
}

Result<NodeRecord> NodeFromJson(const nlohmann::json& j) {
  if (!j.is_object()) return Status::Corruption("node record is not an object");
  NodeRecord n;
  auto u64 = [&](const char* key, uint64_t* out) {
    auto it = j.find(key);
    if (it == j.end() || !it->is_number_unsigned()) return false;
    *out = it->get<uint64_t>();
    return true;
  };
  uint64_t mode = 0;
  if (!u64("id", &n.id) || !u64("parent", &n.parent) || !u64("mode", &mode) ||
      !u64("size", &n.size) || !u64("version", &n.version) || !u64("seq", &n.seq))
    return Status::Corruption("node record lacks a numeric field");
  n.mode = static_cast<uint32_t>(mode & kModeMask);
  auto mt = j.find("mtime_ns");
  if (mt == j.end() || !mt->is_number_integer()) return Status::Corruption("node record lacks mtime_ns");
  n.mtime_ns = mt->get<int64_t>();
  auto name = j.find("name");
  auto kind = j.find("kind");
  if (name == j.end() || !name->is_string() || kind == j.end() || !kind->is_string() ||
      !ParseKind(kind->get_ref<const std::string&>(), &n.kind))
    return Status::Corruption("node record lacks name or kind");
  n.name = name->get<std::string>();
  if (n.id != kRootId) {
    Status st = ValidateName(n.name);
    if (!st.ok()) return Status::Corruption("node " + std::to_string(n.id) + ": " + st.message());
  }
  if (auto d = j.find("deleted"); d != j.end() && d->is_boolean()) n.deleted = d->get<bool>();
  if (auto t = j.find("target"); t != j.end() && t->is_string()) n.target = t->get<std::string>();
  return n;
}

}  // namespace tidefs
