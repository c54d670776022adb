// A node record as the server stores it and every client sees it.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json_fwd.hpp>

#include "core/status.h"

namespace tidefs {

inline constexpr uint64_t kRootId = 1;
// Node ids are 63-bit: they must fit SQLite's signed 64-bit integers.
inline constexpr uint64_t kMaxNodeId = (uint64_t{1} << 63) - 1;
inline constexpr uint32_t kModeMask = 07777;

enum class NodeKind : uint8_t { kFile = 1, kDir = 2, kSymlink = 3 };

const char* KindName(NodeKind kind);
// Parses "file", "dir" or "symlink".
bool ParseKind(std::string_view s, NodeKind* kind);

struct NodeRecord {
  uint64_t id = 0;
  uint64_t parent = 0;  // 0 only for the root
  std::string name;     // empty only for the root
  NodeKind kind = NodeKind::kFile;
  uint32_t mode = 0644;  // permission bits only
  uint64_t size = 0;
  int64_t mtime_ns = 0;
  uint64_t version = 0;
  uint64_t seq = 0;
  bool deleted = false;
  std::string target;  // symlinks only

  bool operator==(const NodeRecord&) const = default;
};

void to_json(nlohmann::json& j, const NodeRecord& n);
// Parses and checks a record received from outside.
Result<NodeRecord> NodeFromJson(const nlohmann::json& j);

}  // namespace tidefs
