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
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "core/commit_codec.h"
#include "core/local_change.h"
#include "core/manifest_codec.h"
#include "core/snapshot_codec.h"
#include "core/sqlite.h"
#include "core/status.h"

namespace tidefs {

class LocalState {
 public:
  // Opens or creates `path`; refuses a state that belongs to another project.
  // The databases are held exclusively: one process at a time (the mount
  // locks its cache dir first).
  static Result<std::unique_ptr<LocalState>> Open(const std::string& path, const std::string& project);
  ~LocalState();

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

  using JournalEntry = tidefs::JournalEntry;
  using CachedFile = tidefs::CachedFile;
  using Change = LocalChange;

  // The intent log (intent.log beside state.db): a change is appended
  // with one write() the moment it is made, so a kill -9 of the mount
  // cannot lose it; the databases get it a little later, many changes in
  // one transaction (SaveChanges). Open replays what a dead process logged
  // and did not save. Changes carry tickets in the order they were made.
  Status LogChange(const Change& c);
  // Staged bytes (LocalChange::staged) of logged changes, into the cache
  // files under `data_dir` that are not there yet (not for nodes the
  // changes delete, nor those in `absent`).
  static Status RestoreStaged(const std::string& data_dir, const std::vector<const Change*>& todo,
                              const std::unordered_set<uint64_t>* absent = nullptr);
  // `bytes` as the whole of `file`, or nothing: written beside it, then
  // renamed into place (a crash leaves the old state, never a part).
  static Status PlaceStaged(const std::string& file, std::string_view bytes);
  // Saves changes (in ticket order) in the databases: the bitmaps, then the
  // rows, the journal entries and the last ticket, in one transaction.
  Status SaveChanges(const std::vector<const Change*>& changes);
  // Empties the intent log: everything in it is saved.
  Status ResetLog();
  // How much the intent log holds.
  uint64_t log_bytes();
  // The last ticket saved or replayed (the next change takes the one after).
  uint64_t last_ticket() const { return last_ticket_; }
  // The oldest `limit` entries.
  Result<std::vector<JournalEntry>> PendingJournal(size_t limit);
  // Drops the entries up to `last` and stores the versions the server
  // gave the nodes in `rows`.
  // `known` (id, version): versions our commits made, kept for changes
  // that wait still (KnownVersions); `forget_known` drops all kept (none
  // waits).
  Status CompleteJournal(uint64_t last, const std::vector<NodeRecord>& rows,
                         const std::vector<std::pair<uint64_t, uint64_t>>& known = {}, bool forget_known = false);
  // Those kept (id -> version).
  Result<std::unordered_map<uint64_t, uint64_t>> KnownVersions();
  Result<uint64_t> JournalSize();
  // The last journal entry of a commit sent without a known outcome (the
  // answer was lost): the same entries go again, so the server can tell a
  // retry from a new commit. 0: none.
  Result<uint64_t> InflightBatch();
  // The idempotency key saved with it ("" for none).
  Result<std::string> InflightKey();
  Status SetInflightBatch(uint64_t last, const std::string& key = "");
  // Small values of the mount's own under `key` in the meta table ("": none;
  // setting "" removes it).
  Result<std::string> Meta(const std::string& key);
  Status SetMeta(const std::string& key, const std::string& value);
  // Makes everything committed so far durable on disk (fsync's promise):
  // both databases are checkpointed, which syncs them.
  Status Sync();

  Result<std::optional<CachedFile>> LoadFile(uint64_t id);
  Result<std::vector<CachedFile>> LoadAllFiles();
  Status SaveFile(const CachedFile& f);
  // Several, in one transaction.
  Status SaveFiles(const std::vector<CachedFile>& files);
  // The bitmap of `id`, if its saved record is of `version` (a late save
  // of an older version changes nothing).
  Status SavePresent(uint64_t id, uint64_t version, const std::vector<bool>& present);
  Status DropFile(uint64_t id);
  Status DropFiles(const std::vector<uint64_t>& ids);

 private:
  LocalState(std::unique_ptr<Db> db, std::unique_ptr<Db> files)
      : db_(std::move(db)), files_db_(std::move(files)) {}
  // Requires mu_, in a transaction.
  Status InsertJournal(const std::vector<JournalEntry>& entries);
  // Replays the changes `path` holds past the last saved ticket, then
  // opens it (empty) for appending.
  Status OpenLog(const std::string& path);
  std::mutex log_mu_;
  int log_fd_ = -1;         // guarded by log_mu_
  uint64_t log_size_ = 0;   // guarded by log_mu_: the end of the last whole frame
  uint64_t log_room_ = 0;   // guarded by log_mu_: bytes allocated to the log file
  bool log_prealloc_ = true;  // guarded by log_mu_: false where fallocate is not supported
  uint64_t last_ticket_ = 0;
  Status SetCursor(uint64_t seq);
  Status WriteRows(const std::vector<NodeRecord>& rows);  // requires mu_, in a transaction
  std::mutex mu_;
  std::unique_ptr<Db> db_;  // guarded by mu_
  std::mutex files_mu_;
  std::unique_ptr<Db> files_db_;  // guarded by files_mu_
};

}  // namespace tidefs
