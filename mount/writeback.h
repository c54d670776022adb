// Write-back: local changes go to the journal (in the local state, with
// the mirror rows, in one transaction) the moment they happen; a thread
// commits them to the server in order, in batches. A file's content is
// sent when its flush entry is reached (on close, fsync, truncate): only
// the blocks the server lacks, then a write (or the create that made it)
// naming its base version. A stale base becomes a conflict copy beside the
// file; a name taken on the server gets a conflict name. Nothing written
// leaves the journal before the server has it.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache/chunk_cache.h"
#include "client/api_client.h"
#include "client/local_state.h"
#include "client/uploader.h"
#include "mount/tree.h"

namespace tidefs {

class WriteBack {
 public:
  // `ready` completes when the local state may be written (a cold mount
  // saves its snapshot first).
  WriteBack(ApiClient* client, LocalState* state, Tree* tree, ChunkCache* cache, std::string device,
            std::shared_future<void> ready);
  ~WriteBack();

  // Records local changes: the mirror rows (and the tree), the journal
  // entries and the cache bitmaps of `files` go to the intent log at once
  // (one write(): from then on a kill -9 loses nothing), and into the
  // databases on the writer thread, everything queued meanwhile in one
  // transaction, which then wakes the flusher. Fails, changing nothing,
  // when the log cannot be written (ENOSPC).
  // `staged`: bytes the cache kept in memory (ChunkCache::Stage), logged
  // here and put in their cache files by the writer before it saves.
  Status Record(const std::vector<NodeRecord>& rows, const std::vector<LocalState::JournalEntry>& entries,
                const std::vector<uint64_t>& files = {}, std::vector<StagedBytes> staged = {});
  // Returns once everything recorded before the call is saved in the
  // databases (fsync then syncs them), or the error that keeps it out.
  Status WaitWritten();
  // Commits everything now; gives up after `patience` without progress
  // (the server unreachable, or silent: the client's exchanges fail after
  // that long without a byte from then on): what is left stays in the
  // journal.
  Status Drain(std::chrono::seconds patience);
  // Journal entries not yet committed to the server (queued ones too).
  uint64_t Pending();
  // File blocks read and hashed for uploads, and sent (those the server
  // lacked), since the mount began; sent ahead of a flush among them.
  struct UploadCounters {
    uint64_t blocks_hashed = 0, blocks_sent = 0, bytes_sent = 0, blocks_sent_ahead = 0;
  };
  UploadCounters uploads() const;
  // Whether the journal holds an entry naming `id`, or a mirror row of it
  // is still queued (kept in memory: asked for every remote change).
  bool HasPending(uint64_t id);
  // Open here, or with entries in the journal: its cache holds bytes that
  // may be nowhere else, so it is never dropped for the server's.
  bool WrittenHereStill(uint64_t id);
  // Tells whether a node is open (its cache must then stay); set once,
  // before changes flow.
  void set_is_open(std::function<bool(uint64_t)> f) { is_open_ = std::move(f); }
  // Asked before a file's content is sent: true (only if `may_hold`)
  // holds it (and what follows it in the journal) back for now, e.g.
  // while a program is still writing it; the write-back looks again when
  // kicked (Kick) or a little later. false: its flush begins now. Set
  // once, before changes flow.
  void set_hold(std::function<bool(uint64_t id, bool may_hold)> f) { hold_ = std::move(f); }
  // Something held back may go now.
  void Kick();
  // Whether a file held back sends blocks ahead (SendAhead); set once,
  // before changes flow.
  void set_send_ahead(bool on) { send_ahead_ = on; }
  // Told of each file upload as it goes (done == total at the end, then
  // `end`); set once, before changes flow.
  using ProgressFn = std::function<void(const std::string& path, uint64_t done, uint64_t total, double rate, bool end)>;
  void set_progress(ProgressFn f) {
    std::lock_guard lock(progress_mu_);
    progress_ = std::move(f);
  }
  // Tells the kernel to forget what it holds of a node whose content the
  // write-back changed under it (a conflict moved it to the other version).
  void set_invalidate(std::function<void(uint64_t)> f) {
    std::lock_guard lock(progress_mu_);
    invalidate_ = std::move(f);
  }
  // Tells the kernel a directory's listing changed.
  void set_invalidate_listing(std::function<void(uint64_t)> f) {
    std::lock_guard lock(progress_mu_);
    invalidate_listing_ = std::move(f);
  }
  // Tells the kernel a name in a directory changed (a fix-up moved or
  // brought back a node).
  void set_invalidate_entry(std::function<void(uint64_t parent, const std::string& name)> f) {
    std::lock_guard lock(progress_mu_);
    invalidate_entry_ = std::move(f);
  }

 private:
  // A conflict copy that took a file's edit (kept_in_), at the version our
  // commit gave it.
  struct KeptIn {
    uint64_t copy = 0, version = 0;
  };
  void Loop();
  // After a conflict copy took file `id`'s edit: its cache is dropped, or
  // kept (open, or more to send) with its later flushes sent to `copy`.
  void KeepOrForget(uint64_t id, KeptIn copy);
  // kept_in_ is kept in the local state as well, so that after a restart
  // (a crash with writes of the file still in the journal) they go to the
  // same copy, not to a second one.
  void LoadKeptIn();
  void SaveKeptIn();
  // Files of kept_in_ closed since with nothing left to send: their cache
  // (our bytes, in the copy now) goes, and the kernel's view of them.
  void ForgetKeptClosed();
  // Drops our bytes of file `id` (in a conflict copy now) and shows the
  // server's newest version of it here; opened or written here again
  // meanwhile, it keeps them, linked to `copy` (where its edit went) if
  // given.
  void ShowTheirs(uint64_t id, std::optional<KeptIn> copy = std::nullopt);
  // After a commit (`made`: its records): a file our op moved to a version
  // made elsewhere, with no local bytes, shows that version's size, time
  // and (unless a change of ours to it is in `waiting`) mode.
  void ShowServersAttributes(const std::vector<NodeRecord>& made, const std::unordered_set<uint64_t>& waiting);
  // Journal entries in the local state.
  uint64_t Persisted();
  // "WHAT needs a server of protocol 2 ...; upgrade the server": a swap
  // held for a server older than swaps.
  Status ServerTooOld(const std::string& what) const;
  // The writer thread: queued changes into the local state.
  void WriterLoop();

  // Commits one batch. kUnavailable: the server could not be reached.
  // `held`: the batch stopped, empty, at a file held back (set_hold),
  // whose id goes in `held_id`.
  Status FlushBatch(bool* held = nullptr, uint64_t* held_id = nullptr);
  bool KickedOrStopping();
  // Requires `lock` on mu_. Waits up to `limit` for a kick (Kick wakes the
  // flusher only while it waits here) or for the stop.
  void WaitForKick(std::unique_lock<std::mutex>& lock, std::chrono::milliseconds limit);
  // Sends ahead some of the blocks of file `id`, held back while it is
  // written (ChunkCache::BeginAhead).
  // The requests go through `sender` (made at the first round that sends).
  enum class Ahead { kSent, kNothingYet, kFailed };
  Ahead SendAhead(uint64_t id, std::optional<BlockSender>* sender);
  // Rounds of SendAhead as the writing leaves blocks behind, until the
  // file is closed (a kick), the writing pauses or a round fails; true
  // when the stint's time ran out instead (the journal is looked at again
  // at once: the hold has its own limit). The stint's requests stay in
  // flight from one round to the next, and are all answered before it
  // ends; it holds flush_mu_ till then, so no batch (an unmount's drain)
  // names a block still on its way.
  bool SendAheadWhileHeld(uint64_t id);
  // `failed`: a round failed (and backed off).
  bool SendAheadRounds(uint64_t id, std::optional<BlockSender>* sender, bool* failed);
  void AheadFailed();
  // Adds an upload to the counters `uploads()` reports.
  void Count(const UploadStats& up);
  ProgressFn CurrentProgress();
  // The flush of `id` begins: a transfer shown for its send ahead ends
  // (it may have been under another name).
  void EndAheadShown(uint64_t id);
  // A directory deleted here that the server kept (someone put files in
  // it): its record and its entries come back into the tree (a failure
  // is logged: the directory is still on the server).
  void RestoreDir(uint64_t id);
  Status ReadBackDir(uint64_t id);
  // A move of ours the server could not make (and that was dropped): the
  // node goes back where the server has it (a failure is logged; the
  // next cold mount sees it right).
  void RestoreNode(uint64_t id);
  // Whether node `id`'s bytes differ between versions `ours` and `theirs`
  // (not known: yes; not a file: no).
  bool BytesDiffer(uint64_t id, uint64_t ours, uint64_t theirs);
  // A file's content sent in the batch being committed.
  struct Sent {
    uint64_t id;  // 0: its content went into a conflict copy
    ChunkCache::FlushView view;
    Manifest m;
    bool staged = false;  // sent from staged bytes (view.staged, let go once read)
    uint64_t parent = 0;  // where it was when sent
    std::string name;
  };
  // Before the journal lets go of a replayed batch's entries: the cache
  // takes the versions the earlier attempt's bytes made, on disk (a kill
  // after the entries went left the file's later bytes on the older
  // version: a conflict copy of this device's own change).
  void CommitReplayedBytes(const std::vector<NodeRecord>& made, const std::vector<Sent>& sent,
                           const std::unordered_map<uint64_t, uint64_t>& based);
  // A commit answered `replayed` (an earlier attempt was applied, its
  // answer lost): the local view follows the records it made. `named`:
  // the nodes the batch's journal entries name (not conflict copies).
  void ApplyReplayed(const std::vector<CommitOp>& ops, const std::vector<NodeRecord>& made,
                     const std::vector<Sent>& sent, const std::unordered_map<uint64_t, uint64_t>& based,
                     const std::unordered_set<uint64_t>& named);
  // The nodes the entries up to `last` name.
  static std::unordered_set<uint64_t> Named(const std::vector<LocalState::JournalEntry>& entries, uint64_t last);
  std::string ConflictName(const std::string& name) const;

  ApiClient* client_;
  LocalState* state_;
  Tree* tree_;
  ChunkCache* cache_;
  const std::string device_;
  std::shared_future<void> ready_;
  std::function<bool(uint64_t)> is_open_;
  std::function<bool(uint64_t, bool)> hold_;
  bool send_ahead_ = true;
  // The write-back thread's: a failed send ahead waits until ahead_after_.
  std::chrono::milliseconds ahead_backoff_{0};
  std::chrono::steady_clock::time_point ahead_after_{};
  std::atomic<uint64_t> blocks_hashed_{0}, blocks_sent_{0}, bytes_sent_{0}, blocks_sent_ahead_{0};
  std::unordered_map<uint64_t, std::string> ahead_shown_;  // guarded by progress_mu_: path shown per file sent ahead
  std::atomic<uint64_t> last_persisted_{0};  // Persisted()'s last answer from the local state
  // Entries out of the journal whose commit's local fix-ups (versions, a
  // conflict copy's new bytes, invalidations) are still being applied:
  // counted as pending, so "nothing pending" means this mount shows it.
  std::atomic<uint64_t> applying_{0};
  std::mutex progress_mu_;
  ProgressFn progress_;  // guarded by progress_mu_
  std::function<void(uint64_t)> invalidate_;  // guarded by progress_mu_
  std::function<void(uint64_t)> invalidate_listing_;  // guarded by progress_mu_
  std::function<void(uint64_t, const std::string&)> invalidate_entry_;  // guarded by progress_mu_
  void InvalidateEntry(uint64_t parent, const std::string& name);
  // Tells the kernel to drop what it holds of node `id` (invalidate_).
  void InvalidateNode(uint64_t id);


  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;  // guarded by mu_
  bool kicked_ = false;    // guarded by mu_
  // Guarded by mu_: the flusher waits for a kick (a kick at other times is
  // seen at its next look; waking it for nothing cost a switch per file).
  bool awaits_kick_ = false;
  std::mutex flush_mu_;    // one batch (or send-ahead stint) at a time
  // guarded by flush_mu_ (and, while a BlockSender has it, by that
  // sender's lock): request bodies of large uploads, kept from one stint
  // or file to the next while files are written, freed once none is.
  std::vector<BigBuffer> bodies_;
  std::unordered_map<uint64_t, uint64_t> versions_;  // guarded by flush_mu_: versions our commits made
  bool versions_loaded_ = false;  // guarded by flush_mu_: with those an earlier mount saved
  // Guarded by flush_mu_: a file whose edit a conflict copy keeps, while
  // it is still open or has later flushes in the journal -> that copy, at
  // the version our commit gave it. Its later flushes (refused as stale
  // the same way) go to the copy too, based on that version (an edit of
  // the copy elsewhere makes them a copy of their own), instead of making
  // one copy per flush. In memory only: after a restart they make a
  // second copy (nothing is lost).
  std::unordered_map<uint64_t, KeptIn> kept_in_;
  std::mutex ids_mu_;
  std::unordered_map<uint64_t, int> pending_ids_;  // guarded by ids_mu_: journal entries per node
  std::unordered_map<uint64_t, uint64_t> deleted_parent_;  // guarded by ids_mu_: directories deleted here -> parent
  // Counts (d = +1) or uncounts the nodes of journal entries and rows.
  void CountPending(const std::vector<LocalState::JournalEntry>& entries, const std::vector<NodeRecord>& rows, int d);
  // The entries of `entries` up to `last` are done (committed, giving the
  // versions in `made`, or nothing was left to send): out of the journal,
  // uncounted, and the in-flight mark cleared if `inflight`.
  Status Finish(const std::vector<LocalState::JournalEntry>& entries, uint64_t last, const std::vector<NodeRecord>& made,
                bool inflight);

  std::mutex q_mu_;
  std::condition_variable q_cv_;        // the writer waits for work
  std::condition_variable written_cv_;  // WaitWritten waits for the writer
  std::deque<LocalState::Change> queue_;  // guarded by q_mu_; in the intent log; popped by the writer once saved
  uint64_t queued_ticket_ = 0;          // guarded by q_mu_: the last ticket handed out
  // guarded by q_mu_: the changes that came close together (a burst:
  // cp -r, tar x, a build): the last one, the current dense run's length,
  // and the stream it is part of (when it began, whether it had a dense
  // run long enough to count)
  std::chrono::steady_clock::time_point last_change_{};
  size_t dense_len_ = 0;
  std::chrono::steady_clock::time_point stream_since_{};
  bool stream_dense_ = false;
  // Waits while a burst of changes is under way (for a while at most):
  // its commits then do not take the CPU from the program making it.
  void LetBurstFinish();
  uint64_t written_ticket_ = 0;         // guarded by q_mu_: everything up to it is in the local state
  uint64_t queued_entries_ = 0;         // guarded by q_mu_: journal entries in queue_
  Status write_error_;                  // guarded by q_mu_: why the last write failed (ok once one works)
  bool writer_stopping_ = false;        // guarded by q_mu_
  bool writer_awaits_ = false;          // guarded by q_mu_: the writer waits for changes (else no wake-up)
  int waiters_ = 0;                     // guarded by q_mu_: threads in WaitWritten
  uint64_t attempts_ = 0;               // guarded by q_mu_: saves tried, done or failed
  // The writer's only: staged bytes whose records are saved while the
  // intent log alone holds them (besides the cache's memory); the log is
  // not emptied until they are in their cache files.
  std::vector<uint64_t> unplaced_;
  Status PlaceStaged();
  std::thread writer_;
  std::thread thread_;
};

}  // namespace tidefs
