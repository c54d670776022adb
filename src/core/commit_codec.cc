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

namespace {

// A JSON string. The text is UTF-8 (names and targets are checked before
// they get here); a byte that is not (a broken caller) becomes U+FFFD, so
// the output stays JSON.
void PutString(std::string* out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out->push_back('"');
  const bool utf8 = IsValidUtf8(s);
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      out->append("\\u00");
      out->push_back(kHex[c >> 4]);
      out->push_back(kHex[c & 15]);
    } else if (c >= 0x80 && !utf8) {
      out->append("\\ufffd");
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
  out->push_back('"');
}

void PutField(std::string* out, const char* key) {
  out->append(",\"");
  out->append(key);
  out->append("\":");
}

}  // namespace

// Written by hand, not through a json object: it runs for every journal
// entry (intent log, journal table) and every commit, and a tree of maps
// per op cost more than the rest of a create.
std::string EncodeCommit(const std::vector<CommitOp>& ops) {
  std::string out;
  out.reserve(64 + ops.size() * 160);
  out.append("{\"ops\":[");
  for (size_t i = 0; i < ops.size(); ++i) {
    const CommitOp& op = ops[i];
    if (i) out.push_back(',');
    out.append("{\"op\":\"");
    out.append(OpName(op.type));
    out.append("\",\"id\":");
    out.append(std::to_string(op.id));
    if (op.has_base) {
      PutField(&out, "base");
      out.append(std::to_string(op.base));
    }
    switch (op.type) {
      case OpType::kCreate:
      case OpType::kMkdir:
      case OpType::kSymlink:
      case OpType::kRename:
        PutField(&out, "parent");
        out.append(std::to_string(op.parent));
        PutField(&out, "name");
        PutString(&out, op.name);
        break;
      default: break;
    }
    if (op.has_mode && op.type != OpType::kSymlink) {
      PutField(&out, "mode");
      out.append(std::to_string(op.mode));
    }
    if (op.has_mtime && op.type != OpType::kRename && op.type != OpType::kDelete) {
      PutField(&out, "mtime_ns");
      out.append(std::to_string(op.mtime_ns));
    }
    if (op.type == OpType::kCreate || op.type == OpType::kWrite) {
      PutField(&out, "size");
      out.append(std::to_string(op.size));
      PutField(&out, "blocks");
      out.push_back('[');
      for (size_t b = 0; b < op.blocks.size(); ++b) {
        if (b) out.push_back(',');
        out.push_back('"');
        out.append(op.blocks[b].Hex());
        out.push_back('"');
      }
      out.push_back(']');
    }
    if (op.type == OpType::kSymlink) {
      PutField(&out, "target");
      PutString(&out, op.target);
    }
    if (op.type == OpType::kRename && op.replace) {
      PutField(&out, "replace");
      out.append("true");
    }
    if (op.type == OpType::kRename && op.exchange != 0) {
      PutField(&out, "exchange");
      out.append(std::to_string(op.exchange));
    }
    out.push_back('}');
  }
  out.append("]}");
  return out;
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
    case OpType::kRename: add({"base", "parent", "name", "replace", "exchange"}, {"parent", "name"}); break;
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
  if (j.contains("exchange")) {
    RETURN_IF_ERROR(u64("exchange", &op.exchange));
    if (op.exchange == 0 || op.exchange > kMaxNodeId) return OpError(i, "exchange must be a node id in 1..2^63-1");
    if (op.exchange == op.id) return OpError(i, "a node cannot exchange places with itself");
    if (op.replace) return OpError(i, "\"replace\" and \"exchange\" do not go together");
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
