// The mount's view of the project's namespace: node records by id and
// children by name, filled one directory at a time, the first time that
// directory is used, so a mount is ready at once whatever the project
// size. The source is the snapshot a cold mount decoded (kept in memory,
// sorted by parent) or, on a warm mount, the local state. Kept current
// from /changes. Thread-safe (a reader-writer lock, never held across a
// local-state query).
#pragma once

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
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

  // Starts from the snapshot's nodes (sorted by parent here if they are
  // not already): directories are read from it as they are used.
  void Load(std::shared_ptr<const Snapshot> snap);
  // Starts empty at `seq`: directories come from the local state on use.
  void StartLazy(uint64_t seq);
  // Applies one changed record (tombstones remove the node). On a warm
  // mount, a record whose directory is not loaded is left to the local
  // state: it must already hold it, so a directory loaded meanwhile
  // agrees. (Local changes reach the local state a little later, through
  // the write-back's writer: their directories are loaded, since the
  // names were looked up first.)
  void Apply(const NodeRecord& n);
  // The same for a local change the local state does not hold yet (the
  // write-back's writer saves it, as ticket `ticket`): until Saved says it
  // is, a directory read from the local state gets it replayed too (and a
  // node it moved or deleted is not read back where it was).
  void ApplyUnsaved(const NodeRecord& n, uint64_t ticket);
  // The local state holds every change up to `ticket`.
  void Saved(uint64_t ticket);

  // The server committed our change: the node's version and seq move, its
  // (local) name, place and attributes stay.
  void SetVersion(uint64_t id, uint64_t version, uint64_t seq);

  Result<std::optional<NodeRecord>> Get(uint64_t id);
  Result<std::optional<NodeRecord>> Lookup(uint64_t parent, const std::string& name);
  // Children of a directory, by name.
  Result<std::vector<NodeRecord>> Children(uint64_t parent);
  // The first `k` children of a directory whose names come after `name`.
  Result<std::vector<NodeRecord>> ChildrenAfter(uint64_t parent, const std::string& name, size_t k);
  // "/dir/name" of a node (for progress lines); "/" for the root.
  std::string PathOf(uint64_t id);
  uint64_t seq() const;
  // Also forgets the deletes NoteDeleted kept that are at or before `s`.
  void set_seq(uint64_t s);
  // A node this device's own commit deleted, at the server's `seq`: until
  // /changes reaches that seq, a record of the node from before it (still
  // on its way) must not bring the node back (RemoteSync asks
  // DeletedAfter).
  void NoteDeleted(uint64_t id, uint64_t seq);
  // Whether our own commit deleted `id` after `seq`, not yet reached.
  bool DeletedAfter(uint64_t id, uint64_t seq) const;
  // Nodes held in memory.
  size_t size() const;

 private:
  struct Dir {
    bool loaded = false;
    std::map<std::string, uint64_t> children;
    // Nodes whose name another node took: two records naming one place for
    // a moment (a remote create landing while a node of ours there waits
    // to be moved away as a conflict). The name goes back to one of them
    // when the node holding it leaves.
    std::multimap<std::string, uint64_t> shadowed;
  };
  // Makes sure `parent`'s children are in memory.
  Status EnsureDir(uint64_t parent);
  void InsertLocked(const NodeRecord& n);
  void ApplyLocked(const NodeRecord& n, std::optional<uint64_t> unsaved);
  // Requires mu_ held exclusively: drops the unsaved records the local
  // state holds now, unless a directory read is under way (it may have
  // read the state before they were saved).
  void DropSavedLocked();
  void RemoveLocked(uint64_t id);

  LocalState* const state_;
  mutable std::shared_mutex mu_;
  // Requires mu_ held exclusively. Fills `parent` from the snapshot.
  void LoadFromSnapshotLocked(uint64_t parent);

  std::shared_ptr<const Snapshot> snap_;                // guarded by mu_; cold mounts
  std::unordered_set<uint64_t> overridden_;            // guarded by mu_; changed since snap_
  uint64_t generation_ = 0;                             // guarded by mu_; bumped by Apply
  // Guarded by mu_: while directories are read from the local state (the
  // generation each started at), the records applied and the generation
  // each made, replayed over what the reads found.
  std::multiset<uint64_t> loading_;
  std::deque<std::pair<uint64_t, NodeRecord>> recent_;
  // Guarded by mu_: the last record of a node, applied as an unsaved local
  // change (with its ticket) where a directory read from the local state
  // would miss it (its directory not loaded, or the node not in memory);
  // dropped once saved (saved_ticket_) or superseded.
  std::unordered_map<uint64_t, std::pair<uint64_t, NodeRecord>> unsaved_;
  uint64_t saved_ticket_ = 0;
  std::unordered_map<uint64_t, NodeRecord> nodes_;      // guarded by mu_
  std::unordered_map<uint64_t, Dir> dirs_;              // guarded by mu_
  uint64_t seq_ = 0;                                    // guarded by mu_
  std::unordered_map<uint64_t, uint64_t> deleted_;      // guarded by mu_; NoteDeleted's, by id: seq
};

}  // namespace tidefs
