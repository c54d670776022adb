// The mount's view of the project's namespace: node records by id and
// children by name, built from the snapshot and kept current from
// /changes. Thread-safe (a reader-writer lock; lookups never wait on I/O).
#pragma once

#include <map>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/node.h"
#include "core/snapshot_codec.h"

namespace tidefs {

class Tree {
 public:
  // Replaces everything with the snapshot's nodes.
  void Load(const Snapshot& snap);
  // Applies one changed record (tombstones remove the node).
  void Apply(const NodeRecord& n);

  std::optional<NodeRecord> Get(uint64_t id) const;
  std::optional<NodeRecord> Lookup(uint64_t parent, const std::string& name) const;
  // Children of a directory, by name.
  std::vector<NodeRecord> Children(uint64_t parent) const;
  uint64_t seq() const;
  void set_seq(uint64_t s);
  size_t size() const;

 private:
  void InsertLocked(const NodeRecord& n);
  void RemoveLocked(uint64_t id);

  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, NodeRecord> nodes_;                    // guarded by mu_
  std::unordered_map<uint64_t, std::map<std::string, uint64_t>> dirs_;  // guarded by mu_
  uint64_t seq_ = 0;                                                  // guarded by mu_
};

}  // namespace tidefs
