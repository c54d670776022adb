// The read cache: one sparse file per file plus a bitmap of the 64 KiB
// blocks present, both kept across remounts (bitmap and manifest in the
// LocalState). A new version keeps the blocks whose hash did not change. A miss fetches the 4 MiB chunk around it with a
// Range request pinned to the version; concurrent misses of one chunk share
// one fetch; every block is checked against the manifest's hash before it
// is written, so nothing unverified is ever cached. Sequential reads start
// read-ahead of the next chunks on a small pool. Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <list>
#include <tuple>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "client/api_client.h"
#include "client/local_state.h"
#include "core/manifest_codec.h"
#include "core/node.h"
#include "core/write_behind.h"

namespace tidefs {

struct ChunkCacheStats {
  uint64_t chunks_fetched = 0;
  uint64_t bytes_fetched = 0;
  uint64_t verify_failures = 0;
  uint64_t resumed = 0;         // transfers continued after a break
  uint64_t fetch_failures = 0;  // reads that gave up (EIO)
  uint64_t chunks_evicted = 0;
  uint64_t cached_bytes = 0;
  uint64_t files_in_memory = 0;  // entries: files whose cache state is held in memory now
  uint64_t files_let_go = 0;     // idle entries dropped to keep under max_entries
  uint64_t files_prefetched = 0; // small files fetched ahead of a reader going through their directory
};

inline constexpr uint64_t kKeepWritten = 1ull << 30;  // see Entry::write_behind
inline constexpr uint64_t kDefaultCacheBytes = 10ull << 30;

struct ChunkCacheOptions {
  uint64_t max_bytes = kDefaultCacheBytes;
  int readahead_chunks = 4;  // chunks fetched ahead of a sequential reader
  int threads = 8;           // read-ahead fetches in flight
  // Fetched chunks go to the cache file with O_DIRECT (no copy into the
  // page cache; the disk is written by DMA) where the file system allows,
  // and readers are served from the fetched buffer while it is recent.
  bool direct_io = true;
  // How long a read of missing bytes keeps trying an unreachable or failing
  // server (resuming a broken transfer where it stopped) before it fails.
  std::chrono::milliseconds retry_for{10000};
  // Files whose cache state is held in memory at most (about 2 KiB each):
  // beyond it the least recently used that are idle and only read in this
  // mount are let go (their saved state stays; the next use loads it and
  // re-hashes each chunk on its first read). Reading every file of a
  // project held them all: 100,000 files took 210 MB.
  size_t max_entries = 16384;
  // Nodes whose cached bytes are local changes not yet committed (from the
  // journal): known before the first eviction, never evicted.
  std::set<uint64_t> local;
  // Told of every chunk fetched (node, bytes), from the fetching thread.
  std::function<void(const NodeRecord&, uint64_t)> on_fetched;
};

class ChunkCache {
 public:
  // Keeps at most `max_bytes` of file data, evicting the least recently
  // read chunks (all cached data is clean while the mount is read-only).
  ChunkCache(std::string dir, ApiClient* client, LocalState* state, ChunkCacheOptions opts = {});
  // The machine restarted since the cache in `dir` was last used: a power
  // cut may have lost cached bytes its saved bitmaps count. Before a cache
  // opens there, the blocks of the files `local` names (changed, not yet
  // sent) that were fetched, not written here, are checked against their
  // manifests, and those that fail are dropped from the saved bitmaps.
  static Status CheckLocalAfterReboot(const std::string& dir, LocalState* state, const std::set<uint64_t>& local);
  ~ChunkCache();

  // Fetches a small file (at most 1 MiB) in the background, bytes and
  // manifest in one answer, unless it is open here already. At most
  // kMaxPrefetches wait (the oldest go first), two are fetched at once, and
  // `lookup` says what the node is when its turn comes (nothing: gone; its
  // version then is the one fetched). One try: a failure is left to the
  // reader, and further prefetches pause for a while.
  using NodeLookup = std::function<std::optional<NodeRecord>(uint64_t id)>;
  void Prefetch(const NodeRecord& n);
  void set_node_lookup(NodeLookup lookup) { lookup_ = std::move(lookup); }

  // Bytes of a file held in place: `fd` has them at [off, off+len), and
  // they cannot be evicted while the Pinned lives, so a caller can hand the
  // fd to the kernel (splice) without copying.
  //
  // Chunks fetched moments ago are still in memory: then `mem` holds the
  // bytes instead (one piece per chunk the range touches, in order), and
  // the caller hands those to the kernel.
  struct Pinned {
    int fd = -1;
    uint64_t off = 0;
    size_t len = 0;                          // short at end of file
    std::vector<std::pair<const char*, size_t>> mem;  // empty: read them from fd
    std::shared_ptr<void> pin;  // keeps the file open, its chunks from eviction, `mem` alive
  };
  // Makes [off, off+len) of `n` at its version present (fetching what is
  // missing) and pins it.
  Result<Pinned> Pin(const NodeRecord& n, uint64_t off, size_t len);
  // Copies [off, off+len) into `out`; returns the bytes read.
  Result<size_t> Read(const NodeRecord& n, uint64_t off, size_t len, char* out);
  ChunkCacheStats stats() const;
  uint64_t max_bytes() const { return max_bytes_; }

  // Local changes. A node with local content (written and not yet
  // committed) is never evicted nor re-checked against its old manifest.
  // Writes `len` bytes at `off` into the cache file of `n` (a block only
  // partly overwritten is first completed from the server). `fresh`, if
  // given, tells whether a block of the manifest that was not in the cache
  // is now (the saved bitmap no longer says which blocks are here).
  Status Write(const NodeRecord& n, uint64_t off, const char* data, size_t len, bool* fresh = nullptr);
  // A new file's first write, small and at offset 0, may stay in memory
  // (the caller logs the bytes) instead of creating its cache file now:
  // true if kept. Materialize puts them in the file (the write-back's
  // writer does, soon after); any other use of the file does so first.
  bool Stage(const NodeRecord& n, const char* data, size_t len);
  // Drops what Stage kept (the caller could not log it).
  void Unstage(uint64_t id);
  // The staged bytes of `id` into its cache file, whole or not at all
  // (written beside it, then renamed); nothing if none are staged.
  Status Materialize(uint64_t id);
  // Bytes kept by Stage and not yet in cache files.
  uint64_t StagedBytes() const;
  // Cuts or extends (with zeros) the cached file to `size`.
  Status Truncate(const NodeRecord& n, uint64_t size);
  // Grows the cached file to at least `size` (zeros), space allocated
  // (fallocate): never shorter, also with writes running beside it.
  Status Extend(const NodeRecord& n, uint64_t size);
  // What the local state should hold for `id` now (version, manifest,
  // which blocks the cache file holds, local ones included): saved with a
  // flush's journal entry, so a restart knows which blocks to send.
  // Nothing when the node is not open in this cache.
  std::optional<LocalState::CachedFile> FileRecord(uint64_t id);
  // Whether the node is open in this cache (FileRecord would say something).
  bool Holds(uint64_t id) const;
  // Whether a write to the node ended within `d` (one write() the kernel
  // split into several requests may be half done).
  bool WrittenWithin(uint64_t id, std::chrono::steady_clock::duration d);
  // fdatasync of the cache file of `id` (fsync's promise).
  Status SyncFile(uint64_t id);
  // Whether a record of `id` saved now would call dirty a block whose
  // bytes from the server are not known to be on disk (a partial write):
  // then SyncFile first.
  bool NeedsSync(uint64_t id);
  // Marks a node as holding local content (also for one created here:
  // `created`, then the cache knows it has nothing saved of it).
  void MarkLocal(uint64_t id, bool created = false);
  bool IsLocal(uint64_t id) const;
  // What a flush of `n` sends: the fd of its cache file (kept open by the
  // returned pin), the manifest it was based on, and the blocks written
  // since (empty after a restart: then every present block is re-hashed).
  struct FlushView {
    int fd = -1;
    uint64_t size = 0;     // the local size (the cache file's)
    uint64_t version = 0;  // the server version the local content is based on (0: none)
    Manifest base;
    std::vector<bool> dirty;
    uint64_t write_gen = 0;
    std::shared_ptr<void> pin;
    // A new file's staged bytes (no cache file, no entry yet): fd is -1
    // and these are the file.
    std::optional<std::string> staged;
    // Dirty blocks already on the server (sent ahead) and untouched since.
    std::unordered_map<uint64_t, Hash128> known;
  };
  Result<FlushView> BeginFlush(const NodeRecord& n);
  // Sending ahead: a file still being written has its dirty blocks that
  // the writing has left behind (a chunk short of its furthest write)
  // sent before the flush, so a large copy in is on the server soon after
  // it ends. BeginAhead picks up to `max_bytes` of them (none unless at
  // least `min_bytes`); EndAhead records the hashes of those sent (`ok`)
  // that no write has touched since.
  struct AheadView {
    int fd = -1;
    uint64_t size = 0;  // the cache file's, when picked
    std::vector<uint64_t> blocks;
    std::shared_ptr<void> pin;
  };
  Result<std::optional<AheadView>> BeginAhead(const NodeRecord& n, uint64_t min_bytes, uint64_t max_bytes);
  void EndAhead(uint64_t id, const std::vector<uint64_t>& blocks, const std::vector<Hash128>& hashes, bool ok);
  // The server lacks blocks it was sent ahead (a commit said so): they
  // are read and sent again with the flush.
  void ForgetAhead(uint64_t id);
  // The flush of `id` was committed as `version` with `blocks`: the cache
  // now holds that version. Local content written meanwhile stays local.
  // (The caller saves FileRecord.)
  // `staged`: the view had a new file's staged bytes (no entry then); one
  // untouched since is all here at `version`. Without an entry, the
  // caller has saved that record first.
  void Committed(uint64_t id, uint64_t version, const Manifest& m, uint64_t write_gen, bool staged = false);
  // A file created here was committed without content of ours (never
  // written): unless it has been opened for writing since, nothing of it
  // is local any more.
  void CreatedCommitted(uint64_t id);
  // Our commit moved node `id` from `from` to `to` without new content
  // (attributes, a move): the cached bytes are those of `to` as well.
  void AdvanceVersion(uint64_t id, uint64_t from, uint64_t to);
  // The node is gone (deleted here or on the server): forget its cache.
  void Forget(uint64_t id);
  // `n`, open here, is being deleted (its saved record goes with the
  // delete, and Forget waits for its last close): what the record says
  // (a cut, local writes, cached blocks) is taken into memory first, for
  // its open descriptors. Nothing is fetched: without a record of it, the
  // server's version is what the file holds.
  void KeepOpen(const NodeRecord& n);
  // A remote commit moved file `old` to `now`: the byte ranges whose
  // blocks changed (offset, length; length 0 = to the end), from the
  // manifest the cache holds and the new one (fetched now; the next read
  // keeps the unchanged blocks). Nothing when the cache holds nothing of
  // the old version: then any page of the file may be stale.
  std::optional<std::vector<std::pair<uint64_t, uint64_t>>> ChangedRanges(const NodeRecord& old, const NodeRecord& now);

 private:
  // A fetched chunk's bytes (4 MiB, page-aligned for O_DIRECT), shared by
  // readers; the buffer goes back to the pool when the last holder drops it.
  struct ChunkBuf {
    char* data = nullptr;
    size_t len = 0;  // bytes of the file it holds (short at end of file)
  };
  struct Entry {
    std::mutex mu;
    uint64_t id = 0;
    uint64_t version = 0;
    int fd = -1;
    int dfd = -1;  // the same file opened O_DIRECT (on first use, DirectFd), or -1
    bool dfd_tried = false;
    // guarded by mu: recent chunks still in memory, byte-for-byte what the
    // cache file holds there (dropped by any local change to the chunk)
    std::map<uint64_t, std::shared_ptr<const ChunkBuf>> hot;
    std::set<uint64_t> writing;         // guarded by mu: chunks in hot not yet in the file
    std::condition_variable written;    // a chunk left `writing`
    std::set<uint64_t> cancelled;       // guarded by mu: in `writing`, cut off by a truncate: not written
    std::map<uint64_t, Status> write_errors;  // guarded by mu: fetched, but the file did not take it
    // Guarded by mu, set under the cache's mu_ too: a newer version (or a
    // delete) owns the file: write nothing.
    bool retired = false;
    std::mutex save_mu;    // one bitmap save at a time (SaveBitmap); taken before mu
    // Shared by a fetch from its choice of blocks to write until they are
    // written; a truncate takes it once after shrinking the manifest's
    // view (Truncate). Taken before mu.
    std::shared_mutex resize_mu;
    Manifest manifest;
    std::vector<bool> present;                                // guarded by mu, per block
    std::map<uint64_t, std::shared_future<Status>> inflight;  // guarded by mu, per chunk
    uint64_t next_sequential = 0;                             // guarded by mu
    uint64_t readahead_from = 0;                              // guarded by mu; first chunk not yet posted
    std::vector<uint32_t> pins;  // guarded by mu, per chunk: readers using it; eviction skips those
    std::vector<bool> verified;  // guarded by mu, per chunk: fetched or re-hashed by this mount
    std::vector<bool> dirty;     // guarded by mu, per block: written since the last flush began
    uint64_t write_gen = 0;      // guarded by mu, bumped by every local write
    // guarded by mu: local changes (write, truncate, extend) under way, from
    // before the node is marked local until their blocks are claimed and
    // written: a commit meanwhile keeps the node local and its blocks dirty.
    int changing = 0;
    // guarded by mu: a commit that landed while `changing` at this
    // write_gen: the last change to end clears what it would have, if
    // that change claimed nothing.
    std::optional<uint64_t> clear_at;
    // guarded by mu: when a local write last ended.
    std::chrono::steady_clock::time_point last_write{};
    // guarded by mu: of local writes to the file. What the send-ahead will
    // read soon stays in the page cache: it reads blocks 4 MiB and more
    // behind the writer, in rounds of 16 to 128 MiB, and drops them itself
    // once read. A copy in from the page cache outruns the upload by
    // hundreds of MiB: with 256 MiB kept, the send-ahead read 450-740 MiB
    // of a 1 GiB copy back from the disk; with 1 GiB, none.
    WriteBehind write_behind{0, kKeepWritten};
    uint64_t write_front = 0;    // guarded by mu: the furthest end of a local write
    // guarded by mu: dirty blocks sent to the server ahead of the file's
    // flush, with their hash (nullopt: being sent). A local write to a
    // block, before and after its bytes land, or a resize, takes it out:
    // a hash here is always that of the bytes in the file.
    std::unordered_map<uint64_t, std::optional<Hash128>> ahead;
    // guarded by mu: every block before it is clean or in `ahead` (where
    // BeginAhead looks from; a write, a resize or a failed send moves it back)
    uint64_t ahead_from = 0;
    bool tracked = true;         // guarded by mu; false: local writes of an earlier mount, unmarked
    // guarded by mu: bumped when a block holding the server's bytes is
    // written only in part (or cut, or grown from): its record must not
    // call it dirty before those bytes are on disk (a reboot's check skips
    // dirty blocks), so the file is synced first (NeedsSync) up to here.
    uint64_t partial_gen = 0, synced_gen = 0;
    uint64_t used = 0;           // guarded by ChunkCache::mu_: when last opened (use_tick_)
    // guarded by mu: changed in this mount (written, resized, committed,
    // opened with local content): its saved record may lag the write-back's
    // queue, so it is never let go (DropIdleLocked).
    bool changed_here = false;
    // Requires mu. Room for `size` bytes in the per-block/chunk vectors.
    void Grow(uint64_t size);
    // Requires mu. Blocks [b0, b1] were written: not sent ahead any more.
    void Rewrote(uint64_t b0, uint64_t b1);
    // Requires mu. The file was resized or committed: nothing is ahead.
    void ForgetAhead();
    ~Entry();
  };

  // The entry of `n` at its version, its cache file open.
  Result<std::shared_ptr<Entry>> Open(const NodeRecord& n, bool reading = false);
  // Ends one count of `id` in `counts` (opening_ or punching_, already
  // counted under mu_) when it goes out of scope, and wakes the waiters.
  class Counted {
   public:
    Counted(ChunkCache* cache, std::unordered_map<uint64_t, int>& counts, uint64_t id)
        : cache_(cache), counts_(&counts), id_(id) {}
    ~Counted();
    Counted(const Counted&) = delete;
    Counted& operator=(const Counted&) = delete;

   private:
    ChunkCache* cache_;
    std::unordered_map<uint64_t, int>* counts_;
    uint64_t id_;
  };
  // A local change of `e` (node `id`) from now until it goes out of scope:
  // counted in e->changing and the node marked local, at once. Not on an
  // entry retired meanwhile (a newer version replacing it, a Forget):
  // stale(), and the change opens the node again (OpenToChange).
  class Changing {
   public:
    Changing(ChunkCache* cache, const std::shared_ptr<Entry>& e, uint64_t id);
    ~Changing();
    Changing(const Changing&) = delete;
    Changing& operator=(const Changing&) = delete;
    bool stale() const { return stale_; }

   private:
    ChunkCache* cache_;
    std::shared_ptr<Entry> e_;
    uint64_t id_;
    bool stale_ = false;
  };
  // The entry of `n` with a change of it begun (`changing`); `was_local`:
  // whether the node had local bytes before.
  Result<std::shared_ptr<Entry>> OpenToChange(const NodeRecord& n, bool* was_local, std::optional<Changing>* changing);
  // `reading`: opened for a read, which of a small file not here yet
  // fetches its bytes with its manifest, in one answer. `once`: that
  // answer is tried once (a prefetch), not until the retry period ends,
  // and the node is looked up again once this is its one opener (gone or
  // changed: NotFound); `*made`: this call fetched and published it.
  // `saved_only`: only from a saved record (or one created or written
  // here, its bytes in the cache file or staged): NotFound
  // rather than asking the server.
  Result<std::shared_ptr<Entry>> OpenEntry(const NodeRecord& n, bool reading = false, bool once = false,
                                           bool* made = nullptr, bool saved_only = false);
  void DrainPrefetches();
  // Requires mu_. `id` has state here, local or staged content, or an opener.
  bool HereOrOpeningLocked(uint64_t id) const;
  // Opens the cache file again if it was closed while idle.
  Status EnsureOpen(Entry& e);
  // The O_DIRECT descriptor of an open entry, opened on first use; -1: none.
  int DirectFd(Entry& e);
  // Requires mu_. Over max_entries_ entries, lets the least recently used
  // idle and clean ones go, down to three quarters of it.
  void DropIdleLocked();
  // Requires mu_. Over max_open_ open cache files (or `all`), closes idle ones.
  void CloseIdleLocked(bool all = false);
  // open(2) that, out of descriptors, closes idle cache files and tries again.
  int OpenFile(const std::string& path, int flags);
  // The entry of `id` open in this mount, or null.
  std::shared_ptr<Entry> FindEntry(uint64_t id);
  // Pin's one try; `replaced`: it failed as the entry it used was retired.
  Result<Pinned> PinOnce(const NodeRecord& n, uint64_t off, size_t len, bool* replaced);
  // Makes every block of `chunk` present, fetching it if needed.
  // With `memory_ok`, a chunk fetched and not yet in the file will do
  // (in e->hot); otherwise only bytes in the file count.
  Status EnsureChunk(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t chunk, bool memory_ok = false);
  Status Fetch(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t chunk);
  // A file end at `end` keeps the first bytes of the block it falls in:
  // that block is made present (fetched) first.
  Status EnsureBlockAt(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t end, bool check);
  // Re-hashes the blocks of a chunk an earlier mount cached; clears the
  // ones that fail (a crash may have lost bytes the bitmap counts).
  void Verify(Entry& e, uint64_t chunk);
  // Block `b`'s bytes are here, before a write that keeps part of it;
  // fetched if not. With `check` (the node had no local bytes before the
  // change), its chunk is re-hashed first if this mount has not yet.
  Status EnsureCheckedBlock(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t b, bool check);
  void Post(std::function<void()> task);
  // A page-aligned chunk buffer, from the pool when one is free.
  std::shared_ptr<ChunkBuf> TakeBuffer();
  // Records that `buf` was put in e->hot; the oldest beyond kHotChunks leave.
  void KeepHot(const std::shared_ptr<Entry>& e, uint64_t chunk, const ChunkBuf* buf);
  // A fetched chunk on its way to the cache file (O_DIRECT where the file
  // system takes it): the chunk is in e->writing until it is there.
  struct WriteJob {
    std::shared_ptr<Entry> entry;
    uint64_t id = 0, version = 0, chunk = 0;
    std::shared_ptr<ChunkBuf> buf;
    std::vector<Hash128> hashes;  // of its blocks, as fetched
  };
  Status WriteChunk(const WriteJob& job);
  // Saves e's block bitmap in the local state (the newest, in order).
  void SaveBitmap(Entry& e);
  // Until no fetched chunk of `e` from `from_chunk` on waits to be written.
  void WaitWrites(Entry& e, uint64_t from_chunk = 0);
  // Sequential access: fetch the chunks after c1 before they are asked for.
  void StartReadahead(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t off, size_t len, uint64_t c1);
  using ChunkKey = std::tuple<uint64_t, uint64_t, uint64_t>;  // id, version, chunk
  // Marks a chunk recently used (and counts its bytes when first cached).
  void Touch(const ChunkKey& key, uint64_t bytes);
  // A chunk taken out of the cache whose disk space is still to be given
  // back. For a file open in this mount, the chunk is marked in flight
  // until the hole is punched, so a reader waits and fetches it afresh
  // instead of having new bytes zeroed by a late punch.
  struct Punch {
    std::shared_ptr<Entry> entry;  // null: a file not open in this mount
    uint64_t id = 0, version = 0, chunk = 0;
    std::shared_ptr<std::promise<Status>> done;
  };
  // Requires mu_. Takes chunks from the cold end until under the limit;
  // the caller runs the punches after unlocking (no disk I/O under mu_).
  std::vector<Punch> EvictLocked();
  void RunPunches(std::vector<Punch> punches);

  const std::string dir_;
  ApiClient* client_;
  LocalState* state_;
  const uint64_t max_bytes_;
  const int readahead_;
  const std::chrono::milliseconds retry_for_;
  const std::function<void(const NodeRecord&, uint64_t)> on_fetched_;
  mutable std::mutex mu_;
  std::list<std::pair<ChunkKey, uint64_t>> lru_;  // guarded by mu_; most recent first, with bytes
  std::map<ChunkKey, std::list<std::pair<ChunkKey, uint64_t>>::iterator> lru_index_;  // guarded by mu_
  std::map<uint64_t, std::shared_ptr<Entry>> entries_;  // guarded by mu_; by node id
  const size_t max_entries_;
  uint64_t use_tick_ = 0;  // guarded by mu_: counts opens (Entry::used)
  size_t next_drop_scan_ = 0;  // guarded by mu_: DropIdleLocked scans again at this many entries
  // Requires mu_. Forgets the LRU records of a node (its version changed).
  void ForgetLocked(uint64_t id);
  void AddChunkLocked(const ChunkKey& key, uint64_t bytes);
  // Requires mu_. The LRU records of `id` now name `version`.
  void RekeyLocked(uint64_t id, uint64_t version, const std::vector<bool>& present, uint64_t size);
  struct BufferPool;
  std::shared_ptr<BufferPool> buffers_;
  const bool direct_io_;
  std::mutex write_mu_;
  std::condition_variable write_cv_;    // a job queued
  std::condition_variable write_room_;  // a job taken
  std::deque<WriteJob> write_queue_;  // guarded by write_mu_
  bool write_stop_ = false;           // guarded by write_mu_
  std::vector<std::thread> writers_;
  std::mutex hot_mu_;
  struct HotRecord {
    std::weak_ptr<Entry> entry;
    uint64_t chunk = 0;
    const ChunkBuf* buf = nullptr;  // identity only: the one this record kept
  };
  std::deque<HotRecord> hot_order_;  // guarded by hot_mu_; oldest first
  // guarded by mu_: nodes in Open's slow path (file creation, truncation,
  // the manifest's fetch): one opener per node at a time, any number of
  // nodes at once (a global lock held across the fetch made parallel
  // readers of small files wait for one another). A Forget holds a node's
  // place too while it runs.
  std::unordered_set<uint64_t> opening_slow_;
  std::condition_variable opened_slow_;  // (with mu_) a node left opening_slow_
  // Forgotten while in opening_slow_: its opener publishes nothing and
  // removes what it made (it would outlive the node). guarded by mu_.
  std::unordered_set<uint64_t> forgotten_;
  // Versions AdvanceVersion moved a node between while it was in
  // opening_slow_ (from, to): its opener may have read the saved record,
  // or the tree's version with none saved, before, and takes the move as
  // it publishes. guarded by mu_.
  std::unordered_map<uint64_t, std::pair<uint64_t, uint64_t>> advanced_while_opening_;
  std::deque<NodeRecord> prefetch_queue_;  // guarded by mu_: oldest first
  int prefetchers_ = 0;                    // guarded by mu_: DrainPrefetches tasks running
  std::chrono::steady_clock::time_point prefetch_quiet_until_{};  // guarded by mu_: after a failure
  NodeLookup lookup_;  // set before the first Prefetch
  size_t open_fds_ = 0;  // guarded by mu_: entries with their cache file open
  size_t max_open_ = 4096;  // beyond, idle entries' files are closed
  ChunkCacheStats stats_;                                                   // guarded by mu_
  std::set<uint64_t> local_;  // guarded by mu_: nodes with local content not yet committed
  std::set<uint64_t> created_;  // guarded by mu_: created in this mount, not opened yet
  // guarded by mu_: nodes whose saved bitmap an opener is reading (eviction
  // leaves their chunks alone), and nodes with punches of chunks chosen
  // while no entry was open, not yet done (an opener waits for them).
  std::unordered_map<uint64_t, int> opening_, punching_;
  std::condition_variable punched_;  // (with mu_) a punch of punching_ is done
  // Held while the saved record of a node not open here is read and
  // rewritten (an eviction's punch, AdvanceVersion); taken before mu_.
  std::mutex closed_records_mu_;
  std::unordered_map<uint64_t, std::string> staged_;  // guarded by mu_: Stage's bytes, not in the file yet
  uint64_t staged_bytes_ = 0;                         // guarded by mu_: their total
  // Requires mu_. Drops the staged bytes of `id`; false if there were none.
  bool DropStagedLocked(uint64_t id);
  std::mutex stage_mu_;  // one materialization at a time; taken inside Open's slow path
  // Requires stage_mu_.
  Status MaterializeLocked(uint64_t id, bool* placed = nullptr);

  std::mutex pool_mu_;
  std::condition_variable pool_cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by pool_mu_
  bool stopping_ = false;                    // guarded by pool_mu_
  std::vector<std::thread> pool_;
};

}  // namespace tidefs
