// The mount's view of the project's namespace: node records by id and
// children by name. A cold mount fills it whole from the snapshot; a warm
// mount starts empty and reads each directory from the local state the
// first time it is used, so it is ready at once whatever the project size.
// Kept current from /changes. Thread-safe (a reader-writer lock, never held
// across a local-state query).
#pragma once

#include <map>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "client/local_state.h"
#include "core/node.h"
#include "core/snapshot_codec.h"
#include "core/status.h"

namespace tidefs {

class Tree {
 public:
  // `state` backs a lazily loaded tree (StartLazy); may be null otherwise.
  explicit Tree(LocalState* state = nullptr) : state_(state) {}

  // Replaces everything with the snapshot's nodes (every directory loaded).
  void Load(const Snapshot& snap);
  // Starts empty at `seq`: directories come from the local state on use.
  void StartLazy(uint64_t seq);
  // Applies one changed record (tombstones remove the node). The local
  // state must already hold it, so a directory loaded meanwhile agrees.
  void Apply(const NodeRecord& n);

  Result<std::optional<NodeRecord>> Get(uint64_t id);
  Result<std::optional<NodeRecord>> Lookup(uint64_t parent, const std::string& name);
  // Children of a directory, by name.
  Result<std::vector<NodeRecord>> Children(uint64_t parent);
  uint64_t seq() const;
  void set_seq(uint64_t s);
  // Nodes held in memory.
  size_t size() const;

 private:
  struct Dir {
    bool loaded = false;
    std::map<std::string, uint64_t> children;
  };
  // Makes sure `parent`'s children are in memory.
  Status EnsureDir(uint64_t parent);
  void InsertLocked(const NodeRecord& n);
  void RemoveLocked(uint64_t id);

  LocalState* const state_;
  mutable std::shared_mutex mu_;
  bool all_loaded_ = false;                             // guarded by mu_
  uint64_t generation_ = 0;                             // guarded by mu_; bumped by Apply
  std::unordered_map<uint64_t, NodeRecord> nodes_;      // guarded by mu_
  std::unordered_map<uint64_t, Dir> dirs_;              // guarded by mu_
  uint64_t seq_ = 0;                                    // guarded by mu_
};

}  // namespace tidefs
