// The mount's local state in SQLite under the cache dir, in two files so
// that a long write to one never stalls the other:
// - state.db: the node mirror and the cursor (the seq it reflects), so a
//   warm remount catches up through /changes instead of loading the
//   snapshot again, and reads directories from it only as they are used;
// - files.db: for each cached file its version, manifest and block-presence
//   bitmap, so the cache survives a remount.
// Thread-safe (one mutex per file; calls are short except SaveSnapshot,
// which a cold mount runs in the background).
#pragma once

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "core/commit_codec.h"
#include "core/manifest_codec.h"
#include "core/snapshot_codec.h"
#include "core/sqlite.h"
#include "core/status.h"

namespace tidefs {

class LocalState {
 public:
  // Opens or creates `path`; refuses a state that belongs to another project.
  static Result<std::unique_ptr<LocalState>> Open(const std::string& path, const std::string& project);

  // The seq of the tree an earlier mount saved, or nothing on a first mount.
  Result<std::optional<uint64_t>> Cursor();
  // The tree an earlier mount saved, whole (tests and tools).
  Result<std::optional<Snapshot>> Load();
  // One node, or nothing.
  Result<std::optional<NodeRecord>> GetNode(uint64_t id);
  // The children of a directory.
  Result<std::vector<NodeRecord>> Children(uint64_t parent);
  // Replaces the mirror with a snapshot.
  Status SaveSnapshot(const Snapshot& snap);
  // Applies changed records (tombstones delete) and moves the cursor, in
  // one transaction.
  Status ApplyChanges(const std::vector<NodeRecord>& changes, uint64_t seq);

  // The journal: local changes not yet committed to the server, in order.
  struct JournalEntry {
    uint64_t seq = 0;    // journal order (set when stored)
    CommitOp op;         // a namespace op; or, with `flush`, "send the
    bool flush = false;  // content of op.id as the cache holds it"
  };
  // Records local changes in one transaction: the mirror rows (tombstones
  // delete) and the journal entries that will tell the server.
  Status RecordLocal(const std::vector<NodeRecord>& rows, const std::vector<JournalEntry>& entries);
  // The oldest `limit` entries.
  Result<std::vector<JournalEntry>> PendingJournal(size_t limit);
  // Drops the entries up to `last` and stores the versions the server
  // gave the nodes in `rows`.
  Status CompleteJournal(uint64_t last, const std::vector<NodeRecord>& rows);
  Result<uint64_t> JournalSize();
  // The last journal entry of a commit sent without a known outcome (the
  // answer was lost): the same entries go again, so the server can tell a
  // retry from a new commit. 0: none.
  Result<uint64_t> InflightBatch();
  Status SetInflightBatch(uint64_t last);
  // Makes everything committed so far durable on disk (fsync's promise):
  // both databases are checkpointed, which syncs them.
  Status Sync();

  struct CachedFile {
    uint64_t id = 0;
    uint64_t version = 0;
    Manifest manifest;
    std::vector<bool> present;  // per block
  };
  Result<std::optional<CachedFile>> LoadFile(uint64_t id);
  Result<std::vector<CachedFile>> LoadAllFiles();
  Status SaveFile(const CachedFile& f);
  Status SavePresent(uint64_t id, const std::vector<bool>& present);
  Status DropFile(uint64_t id);

 private:
  LocalState(std::unique_ptr<Db> db, std::unique_ptr<Db> files)
      : db_(std::move(db)), files_db_(std::move(files)) {}
  Status SetCursor(uint64_t seq);
  Status WriteRows(const std::vector<NodeRecord>& rows);  // requires mu_, in a transaction
  std::mutex mu_;
  std::unique_ptr<Db> db_;  // guarded by mu_
  std::mutex files_mu_;
  std::unique_ptr<Db> files_db_;  // guarded by files_mu_
};

}  // namespace tidefs
