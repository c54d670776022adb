// Real-time sync: the mount's subscriber. Commits announced on the
// project's WebSocket (client/event_stream) are applied to the local state
// and the tree, then exactly the kernel entries, attributes and page
// ranges they changed are invalidated. When the socket is down it polls
// /changes with backoff; any gap in the announced seqs (a resync, a
// reconnect, a big commit) is filled from /changes. Nodes with local
// changes not yet committed keep our view until the journal has sent them.
// After applying, the device's checkpoint is recorded (at most once a
// second, and at Stop). Also carries the mount's transfer progress to the
// server and keeps what other devices report.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "cache/chunk_cache.h"
#include "client/api_client.h"
#include "client/event_stream.h"
#include "client/local_state.h"
#include "core/event_codec.h"
#include "mount/tree.h"

namespace tidefs {

class RemoteSync {
 public:
  // How the kernel is told (fuse_lowlevel_notify_*), set by the mount.
  struct Kernel {
    std::function<void(uint64_t parent, const std::string& name)> inval_entry;
    std::function<void(uint64_t parent, uint64_t child, const std::string& name)> deleted;
    // off < 0: attributes only; len 0: to the end.
    std::function<void(uint64_t ino, int64_t off, int64_t len)> inval_inode;
    // A directory's cached listing.
    std::function<void(uint64_t dir)> inval_listing;
  };
  struct Deps {
    ApiClient* client = nullptr;
    LocalState* state = nullptr;
    Tree* tree = nullptr;
    ChunkCache* cache = nullptr;
    std::mutex* meta_mu = nullptr;  // the mount's namespace lock
    // A file deleted elsewhere: while open here, kept for its handles
    // (true; its cache goes at the last close), else false.
    std::function<bool(const NodeRecord&)> keep_if_open;
    // Whether the node has local changes not yet committed (journal
    // entries, or written and not yet closed). Asked under meta_mu.
    std::function<bool(uint64_t)> has_local_changes;
    std::string device;
    std::shared_future<void> ready;  // the local state may be written
    Kernel kernel;
  };
  explicit RemoteSync(Deps deps);
  ~RemoteSync();

  void Start();
  // Before Start: remote records the mount's start did not apply (nodes
  // with journal entries), applied as the others held back here are.
  void Hold(std::vector<NodeRecord> records);
  // Stops the subscriber and records the checkpoint.
  void Stop();
  // Pulls /changes now and applies them (also what a poll does).
  Status CatchUp();

  // A transfer of ours in progress (shown by `tidefs status`, sent to the
  // server for the other devices). Keyed by (direction, path).
  void SetTransfer(const Transfer& t);
  void EndTransfer(bool upload, const std::string& path);
  // Bytes of a file fetched for reading: one download per path, shown
  // until it has been idle for a second.
  void AddDownloaded(const std::string& path, uint64_t bytes, uint64_t total);

  struct Status_ {
    bool connected = false;
    uint64_t cursor = 0;
    uint64_t head = 0;
    uint64_t commits_applied = 0;   // remote changes applied
    uint64_t events = 0;            // messages received
    uint64_t polls = 0;             // /changes pulls
    uint64_t deferred = 0;          // remote changes waiting for our journal
    uint64_t checkpoint = 0;        // last recorded
    std::vector<Transfer> ours;
    std::map<std::string, std::vector<Transfer>> others;
  };
  Status_ Snapshot() const;

 private:
  void Loop();
  Status OnMessage(std::string_view msg);
  // Applies records that move the cursor to `next` (already in seq order).
  Status Apply(const std::vector<NodeRecord>& records, uint64_t next);
  // The cursor saved with applied changes: before the oldest change still
  // waiting for our journal, so that a mount killed before applying it
  // pulls it again (the one in memory goes on past it).
  uint64_t CursorToSave(uint64_t seq) const;
  // Remote changes to nodes of ours that were waiting: applied once the
  // journal no longer names them (when still newer than what we hold).
  Status RetryDeferred();
  struct Change {
    std::optional<NodeRecord> old;
    NodeRecord now;
  };
  void Notify(const std::vector<Change>& changes);
  void MaybeCheckpoint(bool force);
  void ReportProgress();

  Deps d_;
  EventStream stream_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;  // guarded by mu_: commits and resyncs to handle
  bool need_pull_ = true;     // guarded by mu_
  bool retry_pull_ = false;   // guarded by mu_: a pull failed; again at the next poll time
  bool stopping_ = false;     // guarded by mu_
  bool connected_ = false;    // guarded by mu_
  uint64_t head_ = 0;         // guarded by mu_
  uint64_t n_events_ = 0, n_applied_ = 0, n_polls_ = 0;  // guarded by mu_
  uint64_t checkpoint_ = 0;   // guarded by mu_
  std::map<std::string, std::vector<Transfer>> others_;  // guarded by mu_
  std::map<std::pair<bool, std::string>, Transfer> ours_;  // guarded by mu_
  bool progress_dirty_ = false;                           // guarded by mu_
  std::chrono::steady_clock::time_point last_report_{};   // guarded by mu_
  struct DownloadTimes {
    std::chrono::steady_clock::time_point start, last;
  };
  std::map<std::string, DownloadTimes> downloads_;        // guarded by mu_
  // Requires mu_. Ends downloads idle for a second.
  void ExpireDownloadsLocked();
  static constexpr std::chrono::milliseconds kReportEvery{250};
  std::unordered_map<uint64_t, NodeRecord> deferred_;     // worker thread only (and Stop, after it): size mirrored below
  std::atomic<uint64_t> n_deferred_{0};
  std::chrono::steady_clock::time_point last_checkpoint_{};
  std::thread thread_;
};

}  // namespace tidefs
