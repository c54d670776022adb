#include "core/commit_codec.h"

#include <nlohmann/json.hpp>

#include "core/manifest_codec.h"
#include "core/names.h"
#include "core/node.h"

namespace tidefs {

using nlohmann::json;

const char* OpName(OpType t) {
  switch (t) {
    case OpType::kCreate: return "create";
    case OpType::kMkdir: return "mkdir";
    case OpType::kSymlink: return "symlink";
    case OpType::kWrite: return "write";
    case OpType::kRename: return "rename";
    case OpType::kDelete: return "delete";
    case OpType::kSetattr: return "setattr";
  }
  return "?";
}

std::string EncodeCommit(const std::vector<CommitOp>& ops) {
  json arr = json::array();
  for (const auto& op : ops) {
    json j{{"op", OpName(op.type)}, {"id", op.id}};
    if (op.has_base) j["base"] = op.base;
    switch (op.type) {
      case OpType::kCreate:
      case OpType::kMkdir:
      case OpType::kSymlink:
      case OpType::kRename:
        j["parent"] = op.parent;
        j["name"] = op.name;
        break;
      default: break;
    }
    if (op.has_mode && op.type != OpType::kSymlink) j["mode"] = op.mode;
    if (op.has_mtime && op.type != OpType::kRename && op.type != OpType::kDelete) j["mtime_ns"] = op.mtime_ns;
    if (op.type == OpType::kCreate || op.type == OpType::kWrite) {
      j["size"] = op.size;
      json b = json::array();
      for (const auto& h : op.blocks) b.push_back(h.Hex());
      j["blocks"] = std::move(b);
    }
    if (op.type == OpType::kSymlink) j["target"] = op.target;
    if (op.type == OpType::kRename && op.replace) j["replace"] = true;
    arr.push_back(std::move(j));
  }
  return json{{"ops", std::move(arr)}}.dump();
}

namespace {

Status OpError(size_t i, const std::string& msg) {
  return Status::Invalid("op " + std::to_string(i) + ": " + msg);
}

Result<CommitOp> DecodeOp(size_t i, const json& j) {
  if (!j.is_object()) return OpError(i, "not an object");
  auto op_it = j.find("op");
  if (op_it == j.end() || !op_it->is_string()) return OpError(i, "missing \"op\"");
  const std::string& name = op_it->get_ref<const std::string&>();
  CommitOp op;
  static const std::pair<const char*, OpType> kTypes[] = {
      {"create", OpType::kCreate}, {"mkdir", OpType::kMkdir},   {"symlink", OpType::kSymlink},
      {"write", OpType::kWrite},   {"rename", OpType::kRename}, {"delete", OpType::kDelete},
      {"setattr", OpType::kSetattr}};
  bool known = false;
  for (auto& [n, t] : kTypes)
    if (name == n) { op.type = t; known = true; }
  if (!known) return OpError(i, "unknown op \"" + name + "\"");

  // Which fields each op takes, and which it requires.
  std::vector<std::string> allowed{"op", "id"}, required{"id"};
  auto add = [&](std::initializer_list<const char*> a, std::initializer_list<const char*> r) {
    for (auto* s : a) allowed.push_back(s);
    for (auto* s : r) required.push_back(s);
  };
  switch (op.type) {
    case OpType::kCreate: add({"parent", "name", "mode", "mtime_ns", "size", "blocks"}, {"parent", "name", "size", "blocks"}); break;
    case OpType::kMkdir: add({"parent", "name", "mode", "mtime_ns"}, {"parent", "name"}); break;
    case OpType::kSymlink: add({"parent", "name", "target", "mtime_ns"}, {"parent", "name", "target"}); break;
    case OpType::kWrite: add({"base", "size", "blocks", "mtime_ns"}, {"base", "size", "blocks"}); break;
    case OpType::kRename: add({"base", "parent", "name", "replace"}, {"parent", "name"}); break;
    case OpType::kDelete: add({"base"}, {"base"}); break;
    case OpType::kSetattr: add({"base", "mode", "mtime_ns"}, {"base"}); break;
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end())
      return OpError(i, "field \"" + it.key() + "\" is not allowed in " + name);
  }
  for (const auto& r : required)
    if (!j.contains(r)) return OpError(i, name + " needs \"" + r + "\"");

  auto u64 = [&](const char* key, uint64_t* out) -> Status {
    const json& v = j.at(key);
    if (!v.is_number_unsigned()) return OpError(i, std::string("\"") + key + "\" must be a non-negative integer");
    *out = v.get<uint64_t>();
    return Status::Ok();
  };
  RETURN_IF_ERROR(u64("id", &op.id));
  if (op.id == 0 || op.id > kMaxNodeId) return OpError(i, "id must be in 1..2^63-1");
  if (j.contains("base")) {
    RETURN_IF_ERROR(u64("base", &op.base));
    op.has_base = true;
  }
  if (j.contains("parent")) {
    RETURN_IF_ERROR(u64("parent", &op.parent));
    if (op.parent == 0 || op.parent > kMaxNodeId) return OpError(i, "parent must be in 1..2^63-1");
  }
  if (j.contains("name")) {
    const json& v = j.at("name");
    if (!v.is_string()) return OpError(i, "\"name\" must be a string");
    op.name = v.get<std::string>();
    Status st = ValidateName(op.name);
    if (!st.ok()) return OpError(i, st.message());
  }
  if (j.contains("mode")) {
    uint64_t m;
    RETURN_IF_ERROR(u64("mode", &m));
    if (m > kModeMask) return OpError(i, "mode has bits beyond 07777");
    op.mode = static_cast<uint32_t>(m);
    op.has_mode = true;
  }
  if (j.contains("mtime_ns")) {
    const json& v = j.at("mtime_ns");
    if (!v.is_number_integer()) return OpError(i, "\"mtime_ns\" must be an integer");
    op.mtime_ns = v.get<int64_t>();
    op.has_mtime = true;
  }
  if (j.contains("size")) RETURN_IF_ERROR(u64("size", &op.size));
  if (j.contains("blocks")) {
    const json& v = j.at("blocks");
    if (!v.is_array()) return OpError(i, "\"blocks\" must be an array of hex hashes");
    Status shape = CheckManifestShape(op.size, v.size());
    if (!shape.ok()) return OpError(i, shape.message());
    op.blocks.reserve(v.size());
    for (const auto& h : v) {
      if (!h.is_string()) return OpError(i, "a block hash is not a string");
      auto parsed = Hash128::FromHex(h.get_ref<const std::string&>());
      if (!parsed) return OpError(i, "block hash \"" + h.get<std::string>() + "\" is not 32 hex digits");
      op.blocks.push_back(*parsed);
    }
  }
  if (j.contains("target")) {
    const json& v = j.at("target");
    if (!v.is_string()) return OpError(i, "\"target\" must be a string");
    op.target = v.get<std::string>();
    if (op.target.empty() || op.target.size() > kMaxSymlinkTarget ||
        op.target.find('\0') != std::string::npos || !IsValidUtf8(op.target))
      return OpError(i, "symlink target must be 1..4095 bytes of UTF-8 without NUL");
  }
  if (j.contains("replace")) {
    const json& v = j.at("replace");
    if (!v.is_boolean()) return OpError(i, "\"replace\" must be true or false");
    op.replace = v.get<bool>();
  }
  return op;
}

}  // namespace

Result<std::vector<CommitOp>> DecodeCommit(std::string_view body) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Status::Invalid("commit body is not valid JSON");
  if (!doc.is_object() || !doc.contains("ops") || !doc["ops"].is_array())
    return Status::Invalid("commit body must be {\"ops\": [...]}");
  if (doc.size() != 1) return Status::Invalid("commit body has fields besides \"ops\"");
  const json& ops = doc["ops"];
  if (ops.empty()) return Status::Invalid("commit has no ops");
  if (ops.size() > kMaxCommitOps) return Status::TooLarge("commit has more than 100000 ops");
  std::vector<CommitOp> out;
  out.reserve(ops.size());
  for (size_t i = 0; i < ops.size(); ++i) {
    ASSIGN_OR_RETURN(CommitOp op, DecodeOp(i, ops[i]));
    out.push_back(std::move(op));
  }
  return out;
}

}  // namespace tidefs
