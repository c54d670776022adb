// The mount's local state in SQLite under the cache dir: the node mirror
// and the cursor (the seq it reflects), so a warm remount catches up
// through /changes instead of loading the snapshot again. Not thread-safe:
// the mount applies changes from one thread at a time.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/snapshot_codec.h"
#include "core/sqlite.h"
#include "core/status.h"

namespace tidefs {

class LocalState {
 public:
  // Opens or creates `path`; refuses a state that belongs to another project.
  static Result<std::unique_ptr<LocalState>> Open(const std::string& path, const std::string& project);

  // The tree an earlier mount saved, or nothing on a first mount.
  Result<std::optional<Snapshot>> Load();
  // Replaces the mirror with a snapshot.
  Status SaveSnapshot(const Snapshot& snap);
  // Applies changed records (tombstones delete) and moves the cursor, in
  // one transaction.
  Status ApplyChanges(const std::vector<NodeRecord>& changes, uint64_t seq);

 private:
  explicit LocalState(std::unique_ptr<Db> db) : db_(std::move(db)) {}
  Status Upsert(const NodeRecord& n);
  Status SetCursor(uint64_t seq);
  std::unique_ptr<Db> db_;
};

}  // namespace tidefs
