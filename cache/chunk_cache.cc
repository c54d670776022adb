#include "cache/chunk_cache.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <new>

#include <spdlog/spdlog.h>

#include "core/fd.h"
#include "core/logging.h"
#include "core/memory.h"

namespace tidefs {
namespace {

constexpr size_t kPage = 4096;        // O_DIRECT alignment of offsets, lengths and buffers

// Whether block `b` of the cache file `fd` holds what manifest `m` names
// there (a short read, past the file's end, does not). `buf`: kBlockSize.
bool HoldsManifestBlock(int fd, const Manifest& m, uint64_t b, std::string* buf) {
  const uint64_t off = b * kBlockSize;
  if (b >= m.blocks.size() || off >= m.size) return false;
  const size_t len = std::min<uint64_t>(kBlockSize, m.size - off);
  return ::pread(fd, buf->data(), len, static_cast<off_t>(off)) == static_cast<ssize_t>(len) &&
         HashBlock(buf->data(), len) == m.blocks[b];
}
constexpr size_t kHotChunks = 8;      // fetched chunks kept in memory (32 MiB): read-ahead's window twice
constexpr size_t kSpareBuffers = 20;  // about what hot chunks, the backlog and fetches hold
// A first read of a file this size or smaller fetches its bytes with its
// manifest (one round trip, not two). Up to 1 MiB: an opener of the same
// node waits for it (opening_slow_).
constexpr uint64_t kPrimeBytes = 1 << 20;
constexpr size_t kMaxPrefetches = 64;  // small files queued to be fetched ahead at most (Prefetch): four scans' windows
constexpr int kPrefetchers = 2;        // fetched at once (the others' fetch threads stay the readers')
constexpr auto kPrefetchQuiet = std::chrono::seconds(5);  // no prefetch after one failed, for this long
constexpr size_t kWriteBacklog = 8;   // chunks fetched and not yet on disk (32 MiB)
constexpr int kWriters = 2;
constexpr size_t kStageMax = 64 * 1024;  // a first write this small may wait in memory (Stage)

// Writes `len` bytes at `at`: the page-aligned part through `dfd`
// (O_DIRECT) when there is one, the rest (and all of it should the file
// system refuse direct I/O after all) through `fd`. 0 or the errno.
// `*direct_len` (if given): how many bytes from the start went direct.
int WriteFile(int fd, int dfd, const char* data, size_t len, uint64_t at, size_t* direct_len = nullptr) {
  size_t done = 0;
  if (direct_len) *direct_len = 0;
  size_t direct = dfd >= 0 && at % kPage == 0 && reinterpret_cast<uintptr_t>(data) % kPage == 0 ? len / kPage * kPage : 0;
  while (done < len) {
    const bool d = done < direct;
    const size_t want = d ? direct - done : len - done;
    ssize_t w = ::pwrite(d ? dfd : fd, data + done, want, static_cast<off_t>(at + done));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && d && errno == EINVAL) {
      direct = 0;  // alignment this file system does not take: buffered from here on
      continue;
    }
    if (w < 0) return errno;
    done += static_cast<size_t>(w);
    if (d && direct_len) *direct_len = done;
    if (d && done % kPage) direct = 0;  // a short direct write: the rest buffered
  }
  return 0;
}

Status CacheWriteError(int err) { return Status::IoError(std::string("cannot write to the cache: ") + std::strerror(err)); }

// Whether a failed exchange may go better if tried again (the server down,
// not answering, or failing inside), and the pause before try `attempt`
// (from 0) with the retry period ending at `deadline`.
bool Retryable(const Status& st) { return st.code() == Code::kUnavailable || st.code() == Code::kInternal; }
void PauseBeforeRetry(int attempt, std::chrono::steady_clock::time_point deadline) {
  auto pause = std::chrono::milliseconds(std::min(50 << std::min(attempt, 4), 1000));
  std::this_thread::sleep_for(std::min<std::chrono::steady_clock::duration>(
      pause, std::max<std::chrono::steady_clock::duration>(deadline - std::chrono::steady_clock::now(), {})));
}

}  // namespace

struct ChunkCache::BufferPool {
  std::mutex mu;
  std::vector<char*> spare;  // guarded by mu
  ~BufferPool() {
    for (char* p : spare) UnmapBig(p, kChunkSize);
  }
};

void ChunkCache::Entry::Rewrote(uint64_t b0, uint64_t b1) {
  if (!ahead.empty())
    for (uint64_t b = b0; b <= b1; ++b) ahead.erase(b);
  ahead_from = std::min(ahead_from, b0);
}

void ChunkCache::Entry::ForgetAhead() {
  ahead.clear();
  ahead_from = 0;
}

ChunkCache::Entry::~Entry() {
  if (fd >= 0) ::close(fd);
  if (dfd >= 0) ::close(dfd);
}

std::shared_ptr<ChunkCache::ChunkBuf> ChunkCache::TakeBuffer() {
  char* p = nullptr;
  {
    std::lock_guard lock(buffers_->mu);
    if (!buffers_->spare.empty()) {
      p = buffers_->spare.back();
      buffers_->spare.pop_back();
    }
  }
  if (!p) p = MapBig(kChunkSize);  // (aligned for O_DIRECT, core/memory.h)
  if (!p) throw std::bad_alloc();
  // Reused buffers keep their pages: no fresh memory to fault in per chunk.
  return std::shared_ptr<ChunkBuf>(new ChunkBuf{p, 0}, [pool = buffers_](ChunkBuf* b) {
    {
      std::lock_guard lock(pool->mu);
      if (pool->spare.size() < kSpareBuffers) {
        pool->spare.push_back(b->data);
        b->data = nullptr;
      }
    }
    UnmapBig(b->data, kChunkSize);
    delete b;
  });
}

void ChunkCache::KeepHot(const std::shared_ptr<Entry>& e, uint64_t chunk, const ChunkBuf* buf) {
  std::vector<HotRecord> out;
  {
    std::lock_guard lock(hot_mu_);
    hot_order_.push_back({e, chunk, buf});
    while (hot_order_.size() > kHotChunks) {
      out.push_back(std::move(hot_order_.front()));
      hot_order_.pop_front();
    }
  }
  for (const HotRecord& r : out) {
    auto old = r.entry.lock();
    if (!old) continue;
    std::lock_guard lock(old->mu);
    auto it = old->hot.find(r.chunk);
    if (it != old->hot.end() && it->second.get() == r.buf) old->hot.erase(it);  // not one kept since
  }
}


void ChunkCache::Entry::Grow(uint64_t size) {
  const uint64_t blocks = (size + kBlockSize - 1) / kBlockSize, chunks = (size + kChunkSize - 1) / kChunkSize;
  if (present.size() < blocks) present.resize(blocks, false);
  if (dirty.size() < blocks) dirty.resize(blocks, false);
  if (verified.size() < chunks) verified.resize(chunks, true);  // local bytes need no check
  if (pins.size() < chunks) pins.resize(chunks, 0);
}

ChunkCache::ChunkCache(std::string dir, ApiClient* client, LocalState* state, ChunkCacheOptions opts)
    : dir_(std::move(dir)),
      client_(client),
      state_(state),
      max_bytes_(opts.max_bytes),
      readahead_(opts.readahead_chunks),
      retry_for_(opts.retry_for),
      on_fetched_(opts.on_fetched),
      max_entries_(std::max<size_t>(opts.max_entries, 1)),
      buffers_(std::make_shared<BufferPool>()),
      direct_io_(opts.direct_io) {
  const int threads = opts.threads;
  // A quarter of the descriptors this process may open (sockets, SQLite
  // and the kernel's FUSE device need the rest), at most 4096.
  struct rlimit rl {};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
    max_open_ = std::clamp<size_t>(rl.rlim_cur / 4, 16, 4096);
  local_ = std::move(opts.local);
  std::filesystem::create_directories(dir_ + "/data");
  // What earlier mounts cached counts against the limit from the start.
  if (state_) {
    auto files = state_->LoadAllFiles();
    if (files.ok()) {
      std::lock_guard lock(mu_);
      for (const auto& f : *files) RekeyLocked(f.id, f.version, f.present, f.manifest.size);
    }
  }
  if (state_) {
    std::vector<Punch> punches;
    {
      std::lock_guard lock(mu_);
      punches = EvictLocked();
    }
    RunPunches(std::move(punches));
  }
  for (int i = 0; i < kWriters; ++i)
    writers_.emplace_back([this] {
      NameThread("tidefs-cachewr");
      for (;;) {
        WriteJob job;
        {
          std::unique_lock lock(write_mu_);
          write_cv_.wait(lock, [this] { return write_stop_ || !write_queue_.empty(); });
          if (write_queue_.empty()) return;  // stopping, and every fetched chunk written
          job = std::move(write_queue_.front());
          write_queue_.pop_front();
        }
        write_room_.notify_one();
        (void)WriteChunk(job);
      }
    });
  for (int i = 0; i < threads; ++i)
    pool_.emplace_back([this] {
      NameThread("tidefs-fetch");
      for (;;) {
        std::function<void()> task;
        {
          std::unique_lock lock(pool_mu_);
          pool_cv_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
          if (stopping_) return;
          task = std::move(tasks_.front());
          tasks_.pop_front();
        }
        task();
      }
    });
}

ChunkCache::~ChunkCache() {
  {
    std::lock_guard lock(pool_mu_);
    stopping_ = true;
  }
  pool_cv_.notify_all();
  for (auto& t : pool_) t.join();
  {
    std::lock_guard lock(write_mu_);
    write_stop_ = true;
  }
  write_cv_.notify_all();
  write_room_.notify_all();
  for (auto& t : writers_) t.join();
}

void ChunkCache::Post(std::function<void()> task) {
  {
    std::lock_guard lock(pool_mu_);
    if (stopping_) return;
    tasks_.push_back(std::move(task));
  }
  pool_cv_.notify_one();
}

ChunkCacheStats ChunkCache::stats() const {
  std::lock_guard lock(mu_);
  ChunkCacheStats s = stats_;
  s.files_in_memory = entries_.size();
  return s;
}

Result<std::shared_ptr<ChunkCache::Entry>> ChunkCache::Open(const NodeRecord& n, bool reading) {
  ASSIGN_OR_RETURN(std::shared_ptr<Entry> e, OpenEntry(n, reading));
  RETURN_IF_ERROR(EnsureOpen(*e));
  return e;
}

Status ChunkCache::EnsureOpen(Entry& e) {
  {
    std::lock_guard lock(e.mu);
    if (e.fd >= 0) return Status::Ok();
  }
  // Opened without e.mu held: OpenFile may take mu_ (which comes first).
  const std::string path = dir_ + "/data/" + std::to_string(e.id);
  int fd = OpenFile(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return Status::IoError("cannot open cache file " + path + ": " + std::strerror(errno));
  {
    std::lock_guard lock(e.mu);
    if (e.fd >= 0) {
      ::close(fd);  // another thread opened it meanwhile
      return Status::Ok();
    }
    e.fd = fd;
  }
  std::lock_guard lock(mu_);
  open_fds_++;
  CloseIdleLocked();  // (not this one: the caller holds it)
  return Status::Ok();
}

int ChunkCache::DirectFd(Entry& e) {
  std::lock_guard lock(e.mu);
  if (direct_io_ && e.dfd < 0 && !e.dfd_tried && e.fd >= 0) {
    e.dfd_tried = true;
    e.dfd = ::open((dir_ + "/data/" + std::to_string(e.id)).c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);  // -1: buffered only
  }
  return e.dfd;
}

int ChunkCache::OpenFile(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags, 0600);
  if (fd < 0 && (errno == EMFILE || errno == ENFILE)) {
    {
      std::lock_guard lock(mu_);
      CloseIdleLocked(/*all=*/true);  // out of descriptors: give back every idle one, then again
    }
    fd = ::open(path.c_str(), flags, 0600);
  }
  return fd;
}

void ChunkCache::CloseIdleLocked(bool all) {
  if (!all && open_fds_ <= max_open_) return;
  // The count is kept loosely (a reopened entry that was replaced since is
  // counted and never taken off): recount before closing.
  open_fds_ = 0;
  for (auto& [id, e] : entries_) {
    std::lock_guard elock(e->mu);
    open_fds_ += e->fd >= 0;
  }
  if (!all && open_fds_ <= max_open_) return;
  // Entries no one holds but the map (no read, write, flush or cache write
  // under way: those hold the entry) give their descriptors back; their
  // state stays, and the next use opens the file again.
  for (auto& [id, e] : entries_) {
    if (!all && open_fds_ <= max_open_ * 3 / 4) break;
    if (e.use_count() != 1) continue;
    std::lock_guard elock(e->mu);
    if (e->fd < 0 || !e->writing.empty() || !e->inflight.empty()) continue;
    ::close(e->fd);
    e->fd = -1;
    if (e->dfd >= 0) ::close(e->dfd);
    e->dfd = -1;
    e->dfd_tried = false;
    e->hot.clear();
    open_fds_--;
  }
}

// A file a prefetch may fetch: small, committed, with bytes to fetch.
static bool Prefetchable(const NodeRecord& n) {
  return n.kind == NodeKind::kFile && n.size > 0 && n.size <= kPrimeBytes && n.version != 0;
}

bool ChunkCache::HereOrOpeningLocked(uint64_t id) const {
  return entries_.count(id) || local_.count(id) || staged_.count(id) || opening_slow_.count(id);
}

void ChunkCache::Prefetch(const NodeRecord& n) {
  if (!Prefetchable(n)) return;
  {
    std::lock_guard lock(mu_);
    if (HereOrOpeningLocked(n.id)) return;
    if (std::chrono::steady_clock::now() < prefetch_quiet_until_) return;
    // Full: the oldest go (a reader is likely past them by now).
    if (prefetch_queue_.size() >= kMaxPrefetches) prefetch_queue_.pop_front();
    prefetch_queue_.push_back(n);
    if (prefetchers_ >= kPrefetchers) return;
    prefetchers_++;
  }
  Post([this] { DrainPrefetches(); });
}

void ChunkCache::DrainPrefetches() {
  for (;;) {
    bool stopping;
    {
      std::lock_guard pool(pool_mu_);
      stopping = stopping_;
    }
    NodeRecord hint;
    {
      std::lock_guard lock(mu_);
      if (prefetch_queue_.empty() || stopping) {
        prefetchers_--;
        return;
      }
      hint = std::move(prefetch_queue_.front());
      prefetch_queue_.pop_front();
      // (A reader opening it already fetches it itself.)
      if (HereOrOpeningLocked(hint.id)) continue;
    }
    // What it is now: deleted, or changed since the listing it came from.
    std::optional<NodeRecord> now = lookup_ ? lookup_(hint.id) : std::optional<NodeRecord>(hint);
    if (!now || !Prefetchable(*now)) continue;
    bool made = false;
    auto e = OpenEntry(*now, /*reading=*/true, /*once=*/true, &made);
    std::lock_guard lock(mu_);
    if (made) stats_.files_prefetched++;
    if (!e.ok() && e.status().code() != Code::kNotFound) {
      // The server failing or silent: readers get it to themselves for a
      // while (each prefetch would hold a fetch thread for its silence).
      spdlog::debug("prefetch of node {} failed: {}; none for {} s", hint.id, e.status().ToString(),
                    std::chrono::duration_cast<std::chrono::seconds>(kPrefetchQuiet).count());
      prefetch_quiet_until_ = std::chrono::steady_clock::now() + kPrefetchQuiet;
      prefetch_queue_.clear();
    }
  }
}

Result<std::shared_ptr<ChunkCache::Entry>> ChunkCache::OpenEntry(const NodeRecord& n, bool reading, bool once,
                                                                 bool* made, bool saved_only) {
  bool local, created;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(n.id);
    local = local_.count(n.id) > 0;
    created = created_.count(n.id) > 0;
    // A node with local content keeps its entry whatever the tree says; a
    // tree that lags a commit just made (an older version) too.
    // (Not one retired: its replacement is being opened, or failed to be.)
    if (it != entries_.end() && !it->second->retired && (it->second->version >= n.version || local)) {
      it->second->used = ++use_tick_;
      return it->second;
    }
  }
  // One slow path at a time per node: a second opener of the same node
  // must not truncate or punch the cache file the first one is filling.
  {
    std::unique_lock lock(mu_);
    opened_slow_.wait(lock, [&] { return !opening_slow_.count(n.id); });
    opening_slow_.insert(n.id);
  }
  struct SlowPath {
    ChunkCache* cache;
    uint64_t id;
    ~SlowPath() {
      // Forgotten meanwhile: the file and record this opener may have made
      // go (none of it was published; the entry closed its file), before
      // the next opener of the node may make its own.
      bool gone;
      {
        std::lock_guard lock(cache->mu_);
        gone = cache->forgotten_.count(id) > 0;
      }
      if (gone) {
        if (cache->state_) (void)cache->state_->DropFile(id);
        ::unlink((cache->dir_ + "/data/" + std::to_string(id)).c_str());
      }
      {
        std::lock_guard lock(cache->mu_);
        cache->opening_slow_.erase(id);
        cache->forgotten_.erase(id);
        cache->advanced_while_opening_.erase(id);
      }
      cache->opened_slow_.notify_all();
    }
  } slow_path{this, n.id};
  if (once && lookup_) {
    // Deleted or changed before this became the one opener (a Forget from
    // now on leaves a mark in forgotten_ instead).
    auto now = lookup_(n.id);
    if (!now || now->version != n.version)
      return Status::NotFound("node " + std::to_string(n.id) + " was deleted or changed before it was fetched ahead");
  }
  bool placed = false;  // the staged bytes, the whole file, went in just now
  std::shared_ptr<ChunkBuf> primed;  // a small file's bytes, fetched with its manifest
  {
    // Staged bytes go to the file first, and nothing is staged for the
    // node from now on (Stage needs it in created_). (Read again: a
    // commit may have landed while this waited.)
    {
      std::lock_guard lock(mu_);
      local = local_.count(n.id) > 0;
      created = created_.count(n.id) > 0;
      created_.erase(n.id);
    }
    std::lock_guard staging(stage_mu_);
    RETURN_IF_ERROR(MaterializeLocked(n.id, &placed));
  }
  std::shared_ptr<Entry> older;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(n.id);
    if (it != entries_.end() && !it->second->retired && (it->second->version >= n.version || local_.count(n.id)))
      return it->second;
    if (it != entries_.end()) {
      older = it->second;
      // Retired under both locks, as a change begins (Changing): no change
      // of it starts from here on, and none was under way (not local).
      std::lock_guard elock(older->mu);
      older->retired = true;
    }
  }
  // The older version writes nothing more, and what it queued lands
  // before this one touches the file.
  if (older) {
    WaitWrites(*older);
    {
      // Reads pinned in it end first: they read its file, which this
      // version is about to punch and rewrite. (None pins it from now on.)
      std::unique_lock lock(older->mu);
      older->written.wait(lock, [&] { return std::all_of(older->pins.begin(), older->pins.end(), [](uint32_t k) { return k == 0; }); });
    }
    // A fetch that chose its blocks before the retirement writes them
    // first (not over this version's, below).
    { std::unique_lock resized(older->resize_mu); }
    std::lock_guard saved(older->save_mu);  // a save under way ends first
  }
  // The saved bitmap is read with no punch of its chunks under way, and
  // eviction chooses none of them until the entry is in entries_.
  {
    std::unique_lock lock(mu_);
    punched_.wait(lock, [&] { return !punching_.count(n.id); });
    opening_[n.id]++;
  }
  Counted opening_mark(this, opening_, n.id);
  std::optional<LocalState::CachedFile> saved;
  if (state_ && !created) {
    auto f = state_->LoadFile(n.id);
    if (f.ok()) saved = std::move(*f);
  }
  auto e = std::make_shared<Entry>();
  e->id = n.id;
  e->version = n.version;
  e->verified.assign((n.size + kChunkSize - 1) / kChunkSize, false);
  e->pins.assign(e->verified.size(), 0);
  std::string path = dir_ + "/data/" + std::to_string(n.id);
  e->tracked = !local || n.version == 0;
  const bool from_saved = saved && (saved->version == n.version || local);
  // (Bytes written here, in the cache file or staged just now, are the
  // file's: a new file unlinked while open as its first bytes go out.)
  if (saved_only && !from_saved && n.version != 0 && !local)
    return Status::NotFound("node " + std::to_string(n.id) + " has no saved cache record");
  if (from_saved) {
    e->version = saved->version;
    e->manifest = std::move(saved->manifest);
    e->present = std::move(saved->present);
    // Written here by an earlier mount: still to send, and in every record
    // saved from now on.
    if (local && saved->dirty) e->dirty = std::move(*saved->dirty);
  } else if (n.version == 0) {
    // Created here, never committed: nothing on the server to fetch.
    e->manifest = Manifest{};
  } else {
    const auto deadline = std::chrono::steady_clock::now() + retry_for_;
    bool have_manifest = false;
    if (reading && !local && n.size > 0 && n.size <= kPrimeBytes) {
      // A small file's first read: its bytes and its manifest in one
      // answer (a server before protocol 3 sends the bytes alone: its
      // manifest is asked for below). Checked against the manifest below,
      // and in the cache once the entry is.
      auto buf = TakeBuffer();
      std::optional<Manifest> m;
      size_t got = 0;
      Status st = client_->ReadContent(n.id, n.version, 0, n.size - 1, buf->data, &got, &m);
      if (st.ok() && got == n.size) {
        if (m) {
          e->manifest = std::move(*m);
          have_manifest = true;
        }
        buf->len = got;
        primed = std::move(buf);
      } else if (!st.ok() && (once || !Retryable(st) || std::chrono::steady_clock::now() >= deadline)) {
        return Status(st.code(), "node " + std::to_string(n.id) + ": " + st.message());
      } else {
        spdlog::debug("node {}: {}; asking for its manifest alone", n.id, st.ok() ? "a short answer" : st.message());
      }
    }
    // The manifest names every block; fetched once per version.
    // (Tried again as a chunk is, until the retry period ends.)
    for (int attempt = 0; !have_manifest; ++attempt) {
      auto m = client_->GetManifest(n.id, n.version);
      if (m.ok()) {
        e->manifest = std::move(*m);
        break;
      }
      if (once || !Retryable(m.status()) || std::chrono::steady_clock::now() >= deadline) return m.status();
      spdlog::debug("manifest of node {}: {}; trying again", n.id, m.status().message());
      PauseBeforeRetry(attempt, deadline);
    }
    e->present.assign(e->manifest.blocks.size(), false);
    if (saved) {
      // A new version keeps every block whose hash (at the same offset) did
      // not change; the others are dropped.
      for (size_t b = 0; b < e->present.size() && b < saved->present.size(); ++b)
        e->present[b] = saved->present[b] && saved->manifest.blocks[b] == e->manifest.blocks[b];
    }
  }
  spdlog::trace("node {} opened at version {} ({} bytes{}): manifest {} bytes, {}", n.id, e->version, n.size,
                local ? ", local" : "", e->manifest.size,
                from_saved ? "as saved" : saved ? "fetched, saved record of another version" : "fetched, no saved record");
  if (!local && n.version != 0 && e->manifest.size != n.size)
    return Status::Corruption("manifest of node " + std::to_string(n.id) + " says " + std::to_string(e->manifest.size) +
                              " bytes, the node record " + std::to_string(n.size));
  if (primed) {
    // (Nothing cached of bytes that do not match: the read fails, as a
    // fetched chunk's would.)
    for (uint64_t off = 0; off < primed->len; off += kBlockSize) {
      const size_t len = std::min<uint64_t>(kBlockSize, primed->len - off);
      if (HashBlock(primed->data + off, len) != e->manifest.blocks[off / kBlockSize]) {
        std::lock_guard lock(mu_);
        stats_.verify_failures++;
        return Status::Corruption("node " + std::to_string(n.id) + " block " + std::to_string(off / kBlockSize) +
                                  ": bytes from the server do not match the manifest's hash");
      }
    }
    // Every block is written from these bytes below: the changed ones are
    // punched first, the unchanged ones written over with the same bytes
    // (never a hole under a reader of the older version meanwhile).
  }
  // Without saved state any bytes in the file are unknown: start empty.
  // (Local bytes of a file whose bitmap was never saved are kept: written
  // here and not closed before a crash.)
  e->fd = OpenFile(path, O_RDWR | O_CREAT | O_CLOEXEC | (saved || local ? 0 : O_TRUNC));
  if (e->fd < 0) return Status::IoError("cannot open cache file " + path + ": " + std::strerror(errno));
  if (saved && saved->version != n.version) {
    for (size_t b = 0; b < saved->present.size(); ++b)
      if (saved->present[b] && (b >= e->present.size() || !e->present[b]))
        (void)::fallocate(e->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, b * kBlockSize, kBlockSize);
  }
  // A file with local content keeps its size: the cache file is the truth
  // (the tree may already show a newer remote version of it).
  uint64_t size = n.size;
  if (local) {
    struct stat st;
    if (::fstat(e->fd, &st) != 0) return Status::IoError("cannot stat cache file " + path + ": " + std::strerror(errno));
    size = static_cast<uint64_t>(st.st_size);
  } else if (::ftruncate(e->fd, static_cast<off_t>(n.size)) != 0) {
    return Status::IoError("cannot size cache file " + path + ": " + std::strerror(errno));
  }
  // Every block the manifest names has its bits, also where the file is
  // shorter (local content cut after the record's manifest was saved).
  e->Grow(std::max(size, e->manifest.size));
  e->changed_here = local;
  if (local && from_saved && !e->tracked) {
    // An earlier mount's local bytes: its saved dirty bits may lack blocks
    // it wrote after it saved them (it died first), or be unknown (an
    // older cache dir). Its cache file is as it left it (a new boot had
    // its fetched blocks checked already): a present block that is not the
    // manifest's was written there. Marked now, so every record saved from
    // here on names all of them (a later reboot's check keeps them).
    std::string buf(kBlockSize, '\0');
    for (uint64_t b = 0; b < std::min<uint64_t>(e->present.size(), e->manifest.blocks.size()); ++b)
      if (e->present[b] && !e->dirty[b] && !HoldsManifestBlock(e->fd, e->manifest, b, &buf)) e->dirty[b] = true;
    e->tracked = true;
  }
  if (primed) {
    // In the file before the saved record below says so; a few pages
    // through the page cache, here (no hand-over to the cache's writer).
    if (int err = WriteFile(e->fd, -1, primed->data, primed->len, 0)) return CacheWriteError(err);
    std::fill(e->present.begin(), e->present.end(), true);
    e->verified[0] = true;
  }
  if (placed && local) {
    // The file is the staged bytes, ours whether or not a commit of them
    // landed meanwhile (making the server's version just these bytes).
    // (Once not local, a record of that commit says so, or the bytes are
    // taken for unknown: a newer remote version may be in the tree.)
    for (size_t b = 0; b < e->present.size(); ++b) e->present[b] = e->dirty[b] = true;
  } else if (local && !from_saved) {
    // Past the server's version (all of a file never committed, or whose
    // create alone was), the cache file holds bytes written here: staged
    // bytes the writer put there, or an earlier mount's writes. Present,
    // so that once committed nothing of them is fetched back.
    for (size_t b = e->manifest.blocks.size(); b < e->present.size(); ++b) e->present[b] = e->dirty[b] = true;
  }
  // A file created here has nothing to remember until its first flush
  // (which saves its bitmap with the journal entry); nor has one with
  // local content (its flush saves it, and a commit of staged bytes saves
  // its record first: not to be written over from here).
  const bool created_here = n.version == 0 && !saved;
  if (state_ && !created_here && !from_saved && !local) {
    RETURN_IF_ERROR(state_->SaveFile({n.id, e->version, e->manifest, e->present, std::vector<bool>()}));
  }
  if (state_ && local && !from_saved && !IsLocal(n.id)) {
    // Committed while this opened (its staged bytes, sent from memory):
    // the record made then says what is here. Its version may be newer
    // than the one this opener was handed (looked up before the commit's
    // answer moved the tree): taken if the file holds just its bytes (the
    // staged ones; nothing else changes a file with no entry), else a
    // change through this entry named the older version as its base and
    // came back a conflict with itself.
    auto f = state_->LoadFile(n.id);
    if (f.ok() && *f) {
      LocalState::CachedFile& r = **f;
      bool take = r.version == e->version && r.manifest == e->manifest && r.present.size() == e->present.size();
      if (!take && r.version > e->version && r.present.size() == r.manifest.blocks.size()) {
        struct stat st;
        std::string buf(kBlockSize, '\0');
        take = ::fstat(e->fd, &st) == 0 && static_cast<uint64_t>(st.st_size) == r.manifest.size;
        for (uint64_t b = 0; take && b < r.manifest.blocks.size(); ++b) take = HoldsManifestBlock(e->fd, r.manifest, b, &buf);
      }
      if (take) {
        std::lock_guard elock(e->mu);
        if (r.version != e->version) {
          spdlog::trace("node {}: committed at version {} while it opened at {}; taken as that", n.id, r.version,
                        e->version);
          e->version = r.version;
          e->manifest = std::move(r.manifest);
          e->present.assign(e->manifest.blocks.size(), false);
          e->dirty.assign(e->manifest.blocks.size(), false);
          e->Grow(e->manifest.size);
          e->tracked = true;
        }
        e->present = std::move(r.present);
        std::fill(e->dirty.begin(), e->dirty.end(), false);
      }
    }
  }
  std::vector<Punch> punches;
  {
    std::unique_lock lock(mu_);
    if (forgotten_.count(n.id)) {
      // Forgotten while this opened it. A prefetch publishes nothing (what
      // it made is removed as the gate opens, below): the node is likely
      // deleted. Any other opener serves a syscall on a node that may well
      // live on (a Forget also drops a file's local state for the
      // server's): it goes on as before there were marks.
      if (once) return Status::NotFound("node " + std::to_string(n.id) + " was deleted while it was fetched ahead");
      forgotten_.erase(n.id);
    }
    auto it = entries_.find(n.id);
    if (it != entries_.end() && !it->second->retired && (it->second->version >= e->version || local_.count(n.id)))
      return it->second;  // another reader won
    if (auto a = advanced_while_opening_.find(n.id); a != advanced_while_opening_.end()) {
      std::lock_guard elock(e->mu);
      if (e->version == a->second.first) {
        spdlog::trace("node {}: moved to version {} while it opened at {}; taken as that", n.id, a->second.second,
                      e->version);
        e->version = a->second.second;
      }
      advanced_while_opening_.erase(a);
    }
    RekeyLocked(n.id, e->version, e->present, e->manifest.size);
    if (it != entries_.end() && it->second->fd >= 0) open_fds_--;  // the older version's, closed once let go
    entries_[n.id] = e;
    e->used = ++use_tick_;
    open_fds_++;
    created_.erase(n.id);
    CloseIdleLocked();
    DropIdleLocked();
    if (primed) {
      stats_.chunks_fetched++;
      stats_.bytes_fetched += primed->len;
      punches = EvictLocked();  // (its bytes count from now on)
    }
  }
  if (primed && on_fetched_) on_fetched_(n, primed->len);
  RunPunches(std::move(punches));
  if (made) *made = primed != nullptr;
  return e;
}

void ChunkCache::DropIdleLocked() {
  // (A scan that could not get down to the target is not repeated before
  // a quarter of the bound more entries came: files changed here are never
  // let go, and a scan per new entry over them all was quadratic.)
  if (entries_.size() <= max_entries_ || entries_.size() < next_drop_scan_) return;
  // Idle: held by the map alone (no open file, read, write, flush, fetch
  // or cache write holds it), nothing under way in it. Only read here:
  // its saved record (version, manifest, bitmap: saved with every fetch,
  // check and eviction) is all there is to it. The oldest uses go first.
  std::vector<std::pair<uint64_t, uint64_t>> idle;  // (used, id)
  for (auto& [id, e] : entries_) {
    if (e.use_count() != 1 || local_.count(id) || staged_.count(id)) continue;
    std::lock_guard elock(e->mu);
    if (e->changed_here || !e->tracked || e->retired || !e->writing.empty() || !e->inflight.empty() ||
        !e->write_errors.empty())
      continue;
    idle.emplace_back(e->used, id);
  }
  const size_t target = max_entries_ * 3 / 4;
  const size_t drop = std::min(idle.size(), entries_.size() - std::min(entries_.size(), target));
  std::nth_element(idle.begin(), idle.begin() + drop, idle.end());
  for (size_t i = 0; i < drop; ++i) {
    auto it = entries_.find(idle[i].second);
    Entry& e = *it->second;
    {
      std::lock_guard elock(e.mu);
      if (e.fd >= 0) {
        ::close(e.fd);
        open_fds_--;
      }
      if (e.dfd >= 0) ::close(e.dfd);
      e.fd = e.dfd = -1;
    }
    entries_.erase(it);
    stats_.files_let_go++;
  }
  next_drop_scan_ = entries_.size() > target ? entries_.size() + std::max<size_t>(max_entries_ / 4, 1) : 0;
}

void ChunkCache::ForgetLocked(uint64_t id) {
  // The index is ordered by (id, version, chunk): a node's chunks are adjacent.
  auto it = lru_index_.lower_bound(ChunkKey{id, 0, 0});
  while (it != lru_index_.end() && std::get<0>(it->first) == id) {
    stats_.cached_bytes -= it->second->second;
    lru_.erase(it->second);
    it = lru_index_.erase(it);
  }
}

void ChunkCache::AddChunkLocked(const ChunkKey& key, uint64_t bytes) {
  if (lru_index_.count(key)) return;
  lru_.emplace_front(key, bytes);
  lru_index_[key] = lru_.begin();
  stats_.cached_bytes += bytes;
}

Status ChunkCache::Fetch(const std::shared_ptr<Entry>& entry, const NodeRecord& n, uint64_t chunk) {
  Entry& e = *entry;
  const uint64_t first = chunk * kChunkSize;
  uint64_t msize, version;
  std::vector<Hash128> hashes;  // this chunk's, taken under the lock (a truncate may shrink the manifest)
  // Blocks here already when the fetch began: not checked, never written
  // nor served from what comes back. (The block a cut falls in is one: the
  // manifest's hash is of the whole block, the view now ends inside it.)
  std::vector<bool> unchecked;
  {
    // The entry's version, which its manifest is of (the record may be
    // older or newer: a version change under way, a node changed here).
    std::lock_guard lock(e.mu);
    version = e.version;
    msize = e.manifest.size;
    for (uint64_t b = first / kBlockSize; b < std::min<uint64_t>(first / kBlockSize + kBlocksPerChunk, e.manifest.blocks.size()); ++b) {
      hashes.push_back(e.manifest.blocks[b]);
      unchecked.push_back(b < e.present.size() && e.present[b]);
    }
  }
  if (first >= msize) return Status::Ok();  // nothing of the server's left here
  const uint64_t last = std::min<uint64_t>(first + kChunkSize, msize) - 1;
  // Straight into a pooled buffer: no 4 MiB allocation or copy per chunk.
  std::shared_ptr<ChunkBuf> buf = TakeBuffer();
  char* const data = buf->data;
  const size_t want = last - first + 1;
  size_t have = 0;
  // A broken transfer resumes where it stopped; an unreachable or failing
  // server is tried again until the retry period ends.
  const auto deadline = std::chrono::steady_clock::now() + retry_for_;
  for (int attempt = 0;; ++attempt) {
    size_t got = 0;
    Status st = client_->ReadContent(n.id, version, first + have, last, data + have, &got);
    if (got > want - have) return Status::Corruption("node " + std::to_string(n.id) + ": longer answer than asked for");
    have += got;
    if (st.ok() && have == want) break;
    if (st.ok()) st = Status::Unavailable("the transfer ended after " + std::to_string(have) + " of " + std::to_string(want) + " bytes");
    if (!Retryable(st) || std::chrono::steady_clock::now() >= deadline) {
      return Status(st.code(), "node " + std::to_string(n.id) + " chunk " + std::to_string(chunk) + ": " + st.message());
    }
    if (got > 0) {
      std::lock_guard lock(mu_);
      stats_.resumed++;
    }
    spdlog::debug("chunk {} of node {}: {}; trying again from byte {}", chunk, n.id, st.message(), first + have);
    PauseBeforeRetry(attempt, deadline);
  }
  std::string_view bytes(data, have);
  for (uint64_t off = 0; off < bytes.size(); off += kBlockSize) {
    size_t len = std::min<uint64_t>(kBlockSize, bytes.size() - off);
    uint64_t block = (first + off) / kBlockSize;
    if (unchecked[block - first / kBlockSize]) continue;
    if (HashBlock(bytes.data() + off, len) != hashes[block - first / kBlockSize]) {
      std::lock_guard lock(mu_);
      stats_.verify_failures++;
      return Status::Corruption("node " + std::to_string(n.id) + " block " + std::to_string(block) +
                                ": bytes from the server do not match the manifest's hash");
    }
  }
  // Only blocks not present are written: a present block may hold bytes
  // written here since (local content). A chunk wholly ours is kept in
  // memory at once, in the same step: readers take it from there while
  // the cache's writer puts it on disk (a local write, a truncate or an
  // eviction of the chunk waits for that).
  std::vector<bool> have_block;
  bool whole = true;
  // From the choice of blocks until they are written: a truncate shrinking
  // the manifest's view waits for this (a disk write, not the network),
  // so nothing lands past its cut after it.
  std::shared_lock resizing(e.resize_mu);
  {
    // Blocks past a manifest a truncate shrank meanwhile are not written,
    // nor ones the manifest names other bytes for now (a commit replaced
    // it while this fetched).
    std::lock_guard lock(e.mu);
    e.Grow(std::min<uint64_t>(e.manifest.size, (last + 1)));  // (bits for every block chosen)
    for (uint64_t b = first / kBlockSize; b <= last / kBlockSize; ++b) {
      have_block.push_back(b >= e.manifest.blocks.size() || e.present[b] || unchecked[b - first / kBlockSize] ||
                           e.manifest.blocks[b] != hashes[b - first / kBlockSize]);
      whole = whole && !have_block.back();
    }
    if (e.retired) {
      // A newer version owns the file now: the bytes serve this read only.
      buf->len = bytes.size();
      if (whole) e.hot[chunk] = buf;
      return Status::Ok();
    }
    if (whole) {
      buf->len = bytes.size();
      e.hot[chunk] = buf;
      e.verified[chunk] = true;
      e.writing.insert(chunk);
    }
  }
  {
    std::lock_guard lock(mu_);
    stats_.chunks_fetched++;
    stats_.bytes_fetched += bytes.size();
  }
  if (on_fetched_) on_fetched_(n, bytes.size());
  if (whole) {
    KeepHot(entry, chunk, buf.get());
    (void)DirectFd(e);  // opened once, before the writer needs it
    WriteJob job{entry, n.id, version, chunk, std::move(buf), std::move(hashes)};
    {
      // A disk behind by a full backlog slows the fetches down to its pace
      // (through the page cache instead costs a CPU-second per GiB here,
      // more than the disk's wait; dropping the chunk would lose the cache).
      std::unique_lock lock(write_mu_);
      write_room_.wait(lock, [this] { return write_queue_.size() < kWriteBacklog || write_stop_; });
      if (!write_stop_) {
        write_queue_.push_back(std::move(job));
        write_cv_.notify_one();
        return Status::Ok();
      }
    }
    return WriteChunk(job);  // shutting down: here
  }
  for (size_t i = 0; i < have_block.size();) {
    if (have_block[i]) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < have_block.size() && !have_block[j]) ++j;
    const uint64_t from = i * kBlockSize, to = std::min<uint64_t>(j * kBlockSize, bytes.size());
    if (int err = WriteFile(e.fd, -1, data + from, to - from, first + from)) return CacheWriteError(err);
    i = j;
  }
  std::vector<bool> present;
  {
    std::lock_guard lock(e.mu);
    // The blocks written now, if the manifest still names their bytes (a
    // commit or a truncate may have changed it meanwhile); the others were
    // here already, or are not the server's (past a cut, or replaced).
    for (uint64_t b = first / kBlockSize; b <= last / kBlockSize; ++b) {
      const size_t i = b - first / kBlockSize;
      if (!have_block[i] && b < e.manifest.blocks.size() && b < e.present.size() && e.manifest.blocks[b] == hashes[i])
        e.present[b] = true;
    }
    if (chunk < e.verified.size()) e.verified[chunk] = true;
  }
  // The bytes are in the file before the bitmap says so.
  SaveBitmap(e);
  Touch({n.id, version, chunk}, bytes.size());
  return Status::Ok();
}

Status ChunkCache::WriteChunk(const WriteJob& job) {
  Entry& e = *job.entry;
  const uint64_t first = job.chunk * kChunkSize;
  bool cancelled;
  uint64_t version;
  {
    std::lock_guard lock(e.mu);
    cancelled = e.cancelled.erase(job.chunk) > 0;  // cut off by a truncate meanwhile
    version = e.version;
  }
  // Room first: the chunk counts against the cache (older ones evicted)
  // before its bytes reach the disk, so the cache never holds more.
  if (!cancelled) Touch({job.id, version, job.chunk}, job.buf->len);
  size_t direct = 0;
  const int err = cancelled ? 0 : WriteFile(e.fd, e.dfd, job.buf->data, job.buf->len, first, &direct);
  Status st = err ? CacheWriteError(err) : Status::Ok();
  // A read-ahead of the file (a splice) may have cached a page of the hole
  // while the direct write ran: gone before the blocks count as present.
  // (Bytes written through the page cache are in it already: dropping
  // them would start their write-back at once, a disk request per small
  // file read.)
  if (st.ok() && direct > 0)
    (void)::posix_fadvise(e.fd, static_cast<off_t>(first), static_cast<off_t>(direct), POSIX_FADV_DONTNEED);
  {
    std::lock_guard lock(e.mu);
    if (st.ok() && !cancelled) {
      // (Not a block the manifest names other bytes for now: a commit
      // replaced it while this was fetched and written.)
      const uint64_t end = std::min<uint64_t>((first + job.buf->len + kBlockSize - 1) / kBlockSize, e.manifest.blocks.size());
      for (uint64_t b = first / kBlockSize; b < end; ++b)
        if (b - first / kBlockSize < job.hashes.size() && e.manifest.blocks[b] == job.hashes[b - first / kBlockSize])
          e.present[b] = true;
    } else if (!st.ok()) {
      auto it = e.hot.find(job.chunk);
      if (it != e.hot.end() && it->second == job.buf) e.hot.erase(it);  // it never reached the file
      e.write_errors[job.chunk] = st;
    }
    e.writing.erase(job.chunk);
  }
  e.written.notify_all();
  if (!st.ok()) {
    spdlog::warn("cache: chunk {} of node {} not kept: {}", job.chunk, job.id, st.ToString());
    return st;
  }
  if (cancelled) return Status::Ok();
  // The bytes are in the file before the bitmap says so.
  SaveBitmap(e);
  return Status::Ok();
}

void ChunkCache::SaveBitmap(Entry& e) {
  if (!state_) return;
  // One save at a time per file, each with the bitmap as it is then: two
  // writers saving copies taken in one order and stored in the other left
  // a chunk out of the saved bitmap (its bytes then unreadable offline).
  std::lock_guard save(e.save_mu);
  std::vector<bool> present;
  uint64_t version;
  {
    std::lock_guard lock(e.mu);
    if (e.retired) return;  // a newer version owns the saved state
    present = e.present;
    version = e.version;
  }
  (void)state_->SavePresent(e.id, version, present);
}

void ChunkCache::WaitWrites(Entry& e, uint64_t from_chunk) {
  std::unique_lock lock(e.mu);
  e.written.wait(lock, [&] { return e.writing.lower_bound(from_chunk) == e.writing.end(); });
}

void ChunkCache::Touch(const ChunkKey& key, uint64_t bytes) {
  std::vector<Punch> punches;
  {
    std::lock_guard lock(mu_);
    auto it = lru_index_.find(key);
    if (it != lru_index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return;
    }
    if (bytes == 0) return;  // not cached (evicted meanwhile): nothing to track
    AddChunkLocked(key, bytes);
    punches = EvictLocked();
  }
  RunPunches(std::move(punches));
}

std::vector<ChunkCache::Punch> ChunkCache::EvictLocked() {
  std::vector<Punch> out;
  auto it = lru_.end();
  while (stats_.cached_bytes > max_bytes_ && it != lru_.begin()) {
    --it;
    const auto [id, version, chunk] = it->first;
    if (local_.count(id)) continue;  // local content lives only here until committed
    Punch p{nullptr, id, version, chunk, nullptr};
    auto e = entries_.find(id);
    const bool open = e != entries_.end() && e->second->version == version;
    if (!open && opening_.count(id)) continue;  // its saved bitmap being read: not now
    if (open) {
      Entry& entry = *e->second;
      std::lock_guard elock(entry.mu);
      if (entry.retired || entry.inflight.count(chunk) || entry.writing.count(chunk) || entry.pins[chunk] > 0)
        continue;  // in use (or the file a newer version's now): not now
      uint64_t b0 = chunk * kBlocksPerChunk;
      uint64_t b1 = std::min<uint64_t>(b0 + kBlocksPerChunk, entry.present.size());
      for (uint64_t b = b0; b < b1; ++b) entry.present[b] = false;
      entry.hot.erase(chunk);
      p.entry = e->second;
      p.done = std::make_shared<std::promise<Status>>();
      entry.inflight.emplace(chunk, p.done->get_future().share());
    }
    if (!p.entry) punching_[id]++;
    out.push_back(std::move(p));
    stats_.cached_bytes -= it->second;
    stats_.chunks_evicted++;
    lru_index_.erase(it->first);
    it = lru_.erase(it);
  }
  return out;
}

void ChunkCache::RunPunches(std::vector<Punch> punches) {
  for (auto& p : punches) {
    if (p.entry) {
      Entry& entry = *p.entry;
      // The bitmap without the chunk is saved first (a crash in between
      // leaves bytes not counted, never a hole counted), then the disk
      // space goes back; the file keeps its size (and holes).
      SaveBitmap(entry);
      const bool opened = EnsureOpen(entry).ok();
      {
        // Not once retired: the newer entry may have taken the chunk for
        // present from the saved record (retired before the save above,
        // which then saved nothing), and would read a hole as its bytes.
        // (Under the lock: retiring waits for a punch under way.)
        std::lock_guard lock(entry.mu);
        if (opened && !entry.retired && entry.fd >= 0)
          (void)::fallocate(entry.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, p.chunk * kChunkSize, kChunkSize);
        entry.inflight.erase(p.chunk);
      }
      p.done->set_value(Status::Ok());
      continue;
    }
    // Not open in this mount when chosen: clear its bits in the saved
    // state, then punch. An opener reading the saved bitmap meanwhile
    // would count the chunk present and read zeros after the punch: one
    // that began before was skipped when choosing (opening_), one that
    // begins now waits for this (counted in punching_ when chosen).
    Counted done(this, punching_, p.id);
    if (!state_) continue;
    std::lock_guard records(closed_records_mu_);  // (AdvanceVersion moves it meanwhile: not punched)
    auto f = state_->LoadFile(p.id);
    if (!f.ok() || !*f || (*f)->version != p.version) continue;
    auto& bits = (*f)->present;
    for (uint64_t b = p.chunk * kBlocksPerChunk; b < std::min<uint64_t>((p.chunk + 1) * kBlocksPerChunk, bits.size()); ++b)
      bits[b] = false;
    (void)state_->SavePresent(p.id, p.version, bits);
    int fd = ::open((dir_ + "/data/" + std::to_string(p.id)).c_str(), O_RDWR | O_CLOEXEC);
    if (fd >= 0) {
      (void)::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, p.chunk * kChunkSize, kChunkSize);
      ::close(fd);
    }
  }
}

Status ChunkCache::CheckLocalAfterReboot(const std::string& dir, LocalState* state, const std::set<uint64_t>& ids) {
  // A local file's cache file holds its local bytes and the server's bytes
  // of blocks fetched before them; its flush re-hashes every present block
  // and sends what differs. A fetched block whose bytes a power cut lost
  // (written, never synced; its bit saved in the bitmap) would so be sent
  // as zeros: such blocks are dropped here (fetched again when read, and
  // the flush takes their hashes from the manifest). Blocks written here
  // (the dirty bits saved with the file's last record) are not checked:
  // they are the user's bytes, as fsync left them.
  std::string buf(kBlockSize, '\0');
  for (uint64_t id : ids) {
    ASSIGN_OR_RETURN(auto saved, state->LoadFile(id));
    if (!saved) continue;
    LocalState::CachedFile& f = *saved;
    if (!f.dirty) {
      spdlog::info("node {}: changed before the restart, saved without its written blocks; its cached blocks are "
                   "taken as they are", id);
      continue;
    }
    const std::string path = dir + "/data/" + std::to_string(id);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;  // nothing cached: nothing to check
    const Fd closing(fd);
    uint64_t dropped = 0;
    for (uint64_t b = 0; b < f.present.size() && b < f.manifest.blocks.size(); ++b) {
      if (!f.present[b] || (b < f.dirty->size() && (*f.dirty)[b]) || HoldsManifestBlock(fd, f.manifest, b, &buf)) continue;
      f.present[b] = false;  // (a fetch writes it over)
      ++dropped;
    }
    if (dropped == 0) continue;
    spdlog::warn("node {}: {} blocks fetched before the machine restarted did not survive it; they are fetched again "
                 "from the server, the blocks written here are kept",
                 id, dropped);
    // (Not saved: the mount does not start, and the next one checks again.)
    if (Status saved_st = state->SaveFile(f); !saved_st.ok())
      return Status(saved_st.code(), "cannot save the checked bitmap of node " + std::to_string(id) + ": " +
                                         saved_st.message());
  }
  return Status::Ok();
}

void ChunkCache::Verify(Entry& e, uint64_t chunk) {
  const uint64_t b0 = chunk * kBlocksPerChunk;
  std::string buf(kBlockSize, '\0');
  std::vector<uint64_t> bad;
  for (uint64_t b = b0; b < b0 + kBlocksPerChunk; ++b) {
    Hash128 want;
    size_t len;
    {
      // (The manifest under the lock: a truncate or a commit replaces it.)
      std::lock_guard lock(e.mu);
      if (b >= e.manifest.blocks.size()) break;
      if (!e.present[b] || e.dirty[b]) continue;  // (written here: not the manifest's bytes)
      want = e.manifest.blocks[b];
      len = std::min<uint64_t>(kBlockSize, e.manifest.size - b * kBlockSize);
    }
    ssize_t r = ::pread(e.fd, buf.data(), len, b * kBlockSize);
    if (r != static_cast<ssize_t>(len) || HashBlock(buf.data(), len) != want) bad.push_back(b);
  }
  {
    std::lock_guard lock(e.mu);
    for (uint64_t b : bad)
      if (!e.dirty[b]) e.present[b] = false;  // (one written meanwhile holds its new bytes)
    e.verified[chunk] = true;
  }
  if (!bad.empty()) {
    spdlog::warn("cache: {} blocks of node {} failed their hash check; fetching them again", bad.size(), e.id);
    SaveBitmap(e);
  }
}

Status ChunkCache::EnsureChunk(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t chunk, bool memory_ok) {
  const bool local = IsLocal(n.id);  // its bytes are ours: nothing to check them against
  bool verify;
  {
    std::lock_guard lock(e->mu);
    verify = !local && chunk < e->verified.size() && !e->verified[chunk] && !e->inflight.count(chunk);
  }
  if (verify) Verify(*e, chunk);
  for (;;) {
    std::shared_future<Status> wait;
    std::promise<Status> mine;
    {
      std::unique_lock lock(e->mu);
      // Blocks past the manifest's end are local (written here, or zeros).
      uint64_t b0 = chunk * kBlocksPerChunk;
      uint64_t b1 = std::min<uint64_t>(b0 + kBlocksPerChunk, e->manifest.blocks.size());
      bool all = true;
      for (uint64_t b = b0; b < b1 && all; ++b) all = e->present[b];
      if (all) return Status::Ok();
      if (memory_ok && e->hot.count(chunk)) return Status::Ok();
      if (e->writing.count(chunk)) {
        // Fetched, on its way to the file: there in a moment.
        e->written.wait(lock, [&] { return !e->writing.count(chunk); });
        continue;
      }
      if (auto err = e->write_errors.find(chunk); err != e->write_errors.end()) {
        Status st = err->second;  // the fetch worked, the cache file did not take it
        e->write_errors.erase(err);
        return st;
      }
      if (e->retired) return Status::Unavailable("node " + std::to_string(n.id) + " changed while it was read; read it again");
      auto it = e->inflight.find(chunk);
      if (it != e->inflight.end()) {
        wait = it->second;
      } else {
        e->inflight.emplace(chunk, mine.get_future().share());
      }
    }
    if (wait.valid()) {
      // Another reader's fetch, or an eviction's punch: then look again.
      RETURN_IF_ERROR(wait.get());
      continue;
    }
    Status st = Fetch(e, n, chunk);
    if (!st.ok()) {
      spdlog::error("fetching chunk {} of node {} failed: {}", chunk, n.id, st.ToString());
      std::lock_guard lock(mu_);
      stats_.fetch_failures++;
    }
    mine.set_value(st);
    {
      std::lock_guard lock(e->mu);
      e->inflight.erase(chunk);
    }
    RETURN_IF_ERROR(st);
    // Fetched: in memory now, in the file once its writer is done.
  }
}

void ChunkCache::StartReadahead(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t off, size_t len,
                                uint64_t c1) {
  // Sequential access: fetch the next chunks before they are asked for.
  uint64_t ra_from = 0, ra_to = 0;
  {
    std::lock_guard lock(e->mu);
    if (off == e->next_sequential || off == 0) {
      const uint64_t chunks = (n.size + kChunkSize - 1) / kChunkSize;
      ra_from = std::max(c1 + 1, e->readahead_from);
      ra_to = std::min<uint64_t>(c1 + 1 + readahead_, chunks);
      if (ra_to > ra_from) e->readahead_from = ra_to;
    }
    e->next_sequential = off + len;
  }
  for (uint64_t c = ra_from; c < ra_to; ++c) Post([this, e, n, c] { (void)EnsureChunk(e, n, c); });
}

Result<ChunkCache::Pinned> ChunkCache::Pin(const NodeRecord& n, uint64_t off, size_t len) {
  NodeRecord cur = n;
  for (int attempt = 0;; ++attempt) {
    bool replaced = false;
    auto p = PinOnce(cur, off, len, &replaced);
    // A newer version replaced the entry while this read used it (what it
    // lacked, the retired entry fetches no more): the read is the newer
    // one's, as a read that began a moment later is. Not a node deleted
    // meanwhile (nothing of it is opened again).
    if (p.ok() || !replaced || attempt >= 8) return p;
    if (lookup_) {
      auto now = lookup_(n.id);
      if (!now) return p;
      cur = *now;
    }
    spdlog::debug("node {}: a newer version arrived during a read; reading that", n.id);
  }
}

Result<ChunkCache::Pinned> ChunkCache::PinOnce(const NodeRecord& n, uint64_t off, size_t len, bool* replaced) {
  Pinned p;
  p.off = off;
  if (off >= n.size || len == 0) return p;
  len = std::min<uint64_t>(len, n.size - off);
  const uint64_t c0 = off / kChunkSize;
  uint64_t c1 = (off + len - 1) / kChunkSize;
  std::shared_ptr<Entry> e;
  uint64_t version;  // the entry's
  for (;;) {
    ASSIGN_OR_RETURN(e, Open(n, /*reading=*/true));
    // Pinned before they are fetched, so a fetch that overflows the cache
    // never evicts the chunks this read is waiting for; and never in an
    // entry a newer version retired (its opener, once the pins it found
    // are gone, rewrites the file: this read would see its holes).
    std::lock_guard lock(e->mu);
    if (e->retired) continue;  // (the opener's turn first: then its entry)
    // A record older than the entry (a newer, shorter version arrived
    // while this read began) reads no further than the entry's chunks.
    // (Past its end of file within that last chunk, the reply comes short.)
    const uint64_t chunks = e->pins.size();
    if (c0 >= chunks) return p;
    if (c1 >= chunks) {
      c1 = chunks - 1;
      len = (c1 + 1) * kChunkSize - off;
    }
    for (uint64_t c = c0; c <= c1; ++c) e->pins[c]++;
    version = e->version;
    break;
  }
  struct Guard {
    Guard(std::shared_ptr<Entry> entry, uint64_t first, uint64_t last) : e(std::move(entry)), c0(first), c1(last) {}
    Guard(const Guard&) = delete;
    std::shared_ptr<Entry> e;
    uint64_t c0, c1;
    std::vector<std::shared_ptr<const ChunkBuf>> bufs;  // what Pinned::mem points into
    ~Guard() {
      std::lock_guard lock(e->mu);
      for (uint64_t c = c0; c <= c1; ++c) e->pins[c]--;
      if (e->retired) e->written.notify_all();  // (its replacement's opener waits for the last)
    }
  };
  auto guard = std::make_shared<Guard>(e, c0, c1);
  // A failure in an entry retired meanwhile says so (the caller reads again).
  auto retired = [&](Status st) {
    std::lock_guard lock(e->mu);
    *replaced = e->retired;
    return st;
  };
  p.pin = guard;
  // A chunk still in memory needs nothing else (it may still be on its
  // way to disk); any other is made present in the cache file.
  auto take_hot = [&](uint64_t c) -> std::shared_ptr<const ChunkBuf> {
    std::lock_guard lock(e->mu);
    auto it = e->hot.find(c);
    const uint64_t to = std::min<uint64_t>(off + len, (c + 1) * kChunkSize) - c * kChunkSize;
    return it == e->hot.end() || to > it->second->len ? nullptr : it->second;
  };
  std::vector<std::shared_ptr<const ChunkBuf>> held;
  bool all_held = true;
  for (uint64_t c = c0; c <= c1; ++c) {
    auto b = take_hot(c);
    if (!b) {
      if (Status st = EnsureChunk(e, n, c, /*memory_ok=*/true); !st.ok()) return retired(st);
      b = take_hot(c);
    }
    all_held = all_held && b;
    held.push_back(std::move(b));
    Touch({n.id, version, c}, 0);
  }
  StartReadahead(e, n, off, len, c1);
  p.fd = e->fd;
  p.len = len;
  if (all_held) {
    for (uint64_t c = c0; c <= c1; ++c) {
      const uint64_t from = std::max<uint64_t>(off, c * kChunkSize) - c * kChunkSize;
      const uint64_t to = std::min<uint64_t>(off + len, (c + 1) * kChunkSize) - c * kChunkSize;
      p.mem.emplace_back(held[c - c0]->data + from, to - from);
    }
    guard->bufs = std::move(held);
    return p;
  }
  // Not all of it in memory: all of it from the file, once there.
  for (uint64_t c = c0; c <= c1; ++c)
    if (Status st = EnsureChunk(e, n, c); !st.ok()) return retired(st);
  return p;
}

Result<size_t> ChunkCache::Read(const NodeRecord& n, uint64_t off, size_t len, char* out) {
  ASSIGN_OR_RETURN(Pinned p, Pin(n, off, len));
  if (!p.mem.empty()) {
    size_t at = 0;
    for (const auto& [bytes, size] : p.mem) {
      std::memcpy(out + at, bytes, size);
      at += size;
    }
    return at;
  }
  size_t done = 0;
  while (done < p.len) {
    ssize_t r = ::pread(p.fd, out + done, p.len - done, off + done);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return Status::IoError(std::string("cannot read the cache: ") + std::strerror(errno));
    done += r;
  }
  return done;
}

ChunkCache::Counted::~Counted() {
  {
    std::lock_guard lock(cache_->mu_);
    if (--(*counts_)[id_] <= 0) counts_->erase(id_);
  }
  cache_->punched_.notify_all();
}

ChunkCache::Changing::Changing(ChunkCache* cache, const std::shared_ptr<Entry>& e, uint64_t id)
    : cache_(cache), e_(e), id_(id) {
  // Under both locks, as a retirement is: an opener of a newer version
  // either saw the node local (and kept this entry) or retired it first,
  // and then nothing of this change reaches the file it now rewrites.
  // (A commit that cleared the mark before the count finds both set
  // again; one after sees the count and keeps the mark.)
  std::lock_guard lock(cache->mu_);
  std::lock_guard elock(e_->mu);
  if (e_->retired) {
    stale_ = true;
    return;
  }
  e_->changing++;
  e_->changed_here = true;
  cache->local_.insert(id);
}

Result<std::shared_ptr<ChunkCache::Entry>> ChunkCache::OpenToChange(const NodeRecord& n, bool* was_local,
                                                                     std::optional<Changing>* changing) {
  for (;;) {
    ASSIGN_OR_RETURN(auto e, Open(n));
    *was_local = IsLocal(n.id);  // (before this change marks it)
    changing->emplace(this, e, n.id);
    if (!(*changing)->stale()) return e;
    changing->reset();  // replaced meanwhile: the newer entry (its opener done first)
  }
}

ChunkCache::Changing::~Changing() {
  if (stale_) return;
  std::lock_guard lock(cache_->mu_);
  std::lock_guard elock(e_->mu);
  if (--e_->changing > 0) return;
  // A commit landed meanwhile and this change claimed nothing after all
  // (an error, a size already there): what the commit kept, it clears now.
  if (e_->clear_at && *e_->clear_at == e_->write_gen) {
    std::fill(e_->dirty.begin(), e_->dirty.end(), false);
    e_->ForgetAhead();
    cache_->local_.erase(id_);
  }
  e_->clear_at.reset();
}

void ChunkCache::MarkLocal(uint64_t id, bool created) {
  std::lock_guard lock(mu_);
  local_.insert(id);
  if (created) created_.insert(id);
}

bool ChunkCache::IsLocal(uint64_t id) const {
  std::lock_guard lock(mu_);
  return local_.count(id) > 0;
}

bool ChunkCache::Stage(const NodeRecord& n, const char* data, size_t len) {
  if (n.version != 0 || len == 0 || len > kStageMax) return false;
  MarkLocal(n.id);
  std::lock_guard lock(mu_);
  // Created here and never opened in this cache: no file, no entry yet.
  if (!created_.count(n.id) || entries_.count(n.id) || staged_.count(n.id)) return false;
  staged_.emplace(n.id, std::string(data, len));
  staged_bytes_ += len;
  return true;
}

bool ChunkCache::DropStagedLocked(uint64_t id) {
  auto it = staged_.find(id);
  if (it == staged_.end()) return false;
  staged_bytes_ -= it->second.size();
  staged_.erase(it);
  return true;
}

void ChunkCache::Unstage(uint64_t id) {
  std::lock_guard lock(mu_);
  DropStagedLocked(id);
}

uint64_t ChunkCache::StagedBytes() const {
  std::lock_guard lock(mu_);
  return staged_bytes_;
}

Status ChunkCache::Materialize(uint64_t id) {
  {
    std::lock_guard lock(mu_);
    if (!staged_.count(id)) return Status::Ok();
  }
  std::lock_guard staging(stage_mu_);
  return MaterializeLocked(id);
}

Status ChunkCache::MaterializeLocked(uint64_t id, bool* placed) {
  if (placed) *placed = false;
  std::string bytes;
  {
    std::lock_guard lock(mu_);
    auto it = staged_.find(id);
    if (it == staged_.end()) return Status::Ok();
    bytes = it->second;
  }
  const std::string path = dir_ + "/data/" + std::to_string(id);
  RETURN_IF_ERROR(LocalState::PlaceStaged(path, bytes));
  bool forgotten;
  {
    std::lock_guard lock(mu_);
    forgotten = !DropStagedLocked(id);  // Forget ran meanwhile: the node is gone
    created_.erase(id);                  // (there is a file now)
  }
  if (forgotten) ::unlink(path.c_str());
  if (placed) *placed = !forgotten;
  return Status::Ok();
}

Status ChunkCache::Write(const NodeRecord& n, uint64_t off, const char* data, size_t len, bool* fresh) {
  if (fresh) *fresh = false;
  if (len == 0) return Status::Ok();
  bool was_local;
  std::optional<Changing> changing;
  ASSIGN_OR_RETURN(auto e, OpenToChange(n, &was_local, &changing));
  const uint64_t end = off + len;
  // A block only partly overwritten is first completed from the server.
  uint64_t mblocks, msize;
  {
    std::lock_guard lock(e->mu);
    mblocks = e->manifest.blocks.size();
    msize = e->manifest.size;
  }
  std::vector<uint64_t> partial;  // blocks that keep some of the server's bytes
  for (uint64_t b : {off / kBlockSize, (end - 1) / kBlockSize}) {
    if (b >= mblocks || (!partial.empty() && partial.back() == b)) continue;
    const uint64_t bs = b * kBlockSize, be = std::min<uint64_t>(bs + kBlockSize, msize);
    if (!(off <= bs && end >= be)) {
      RETURN_IF_ERROR(EnsureCheckedBlock(e, n, b, !was_local));
      partial.push_back(b);
    }
  }
  // Past the end, from a later block: the block the old end falls in keeps
  // its first bytes (the rest of it becomes zeros), so it is here first,
  // as for Extend. (Not, it would be sent as the cache file's hole.) It is
  // not the manifest's block any more: dirty too.
  std::optional<uint64_t> old_last;
  if (off > msize && msize % kBlockSize && msize / kBlockSize < off / kBlockSize) {
    RETURN_IF_ERROR(EnsureBlockAt(e, n, msize, !was_local));
    old_last = msize / kBlockSize;
  }
  bool newly_partial = false;  // such a block dirty for the first time: synced before its record
  if (!partial.empty() || old_last) {
    std::lock_guard lock(e->mu);
    for (uint64_t b : partial) newly_partial = newly_partial || (b < e->dirty.size() && !e->dirty[b]);
    if (old_last) newly_partial = newly_partial || (*old_last < e->dirty.size() && !e->dirty[*old_last]);
  }
  // Claim the blocks (present, dirty) once no fetch is writing their chunk;
  // a fetch that starts later leaves present blocks alone.
  for (uint64_t c = off / kChunkSize; c <= (end - 1) / kChunkSize; ++c) {
    for (;;) {
      std::shared_future<Status> wait;
      {
        std::unique_lock lock(e->mu);
        e->Grow(end);
        auto it = e->inflight.find(c);
        if (it != e->inflight.end()) {
          wait = it->second;
        } else if (e->writing.count(c)) {
          // A fetched chunk still on its way to the file: after it.
          e->written.wait(lock, [&] { return !e->writing.count(c); });
          continue;
        } else {
          const uint64_t b0 = std::max(off, c * kChunkSize) / kBlockSize;
          const uint64_t b1 = (std::min(end, (c + 1) * kChunkSize) - 1) / kBlockSize;
          for (uint64_t b = b0; b <= b1; ++b) {
            if (fresh && b < e->manifest.blocks.size() && !e->present[b]) *fresh = true;
            e->present[b] = e->dirty[b] = true;
          }
          e->Rewrote(b0, b1);
          e->hot.erase(c);
          e->write_gen++;
          break;
        }
      }
      (void)wait.get();
    }
  }
  const int err = WriteFile(e->fd, -1, data, len, off);
  std::optional<WriteBehind::Work> behind;
  {
    // Again once the bytes are in (or some of them, on an error): a flush
    // that began between the claim and the pwrite must not count these
    // blocks as sent, nor a send ahead that read them half written.
    std::lock_guard lock(e->mu);
    e->write_gen++;
    e->last_write = std::chrono::steady_clock::now();
    if (old_last && *old_last < e->dirty.size()) {
      e->dirty[*old_last] = true;
      e->Rewrote(*old_last, *old_last);
    }
    if (newly_partial) e->partial_gen++;
    if (!err) behind = e->write_behind.Wrote(off, end);
    e->write_front = std::max(e->write_front, end);
    e->Rewrote(off / kBlockSize, (end - 1) / kBlockSize);
  }
  if (err)
    return Status(err == ENOSPC ? Code::kTooLarge : Code::kIoError,
                  std::string("cannot write to the cache file of node ") + std::to_string(n.id) + ": " + std::strerror(err));
  // A large copy in goes on to the disk as it comes (core/write_behind.h).
  if (behind) WriteBehind::Run(e->fd, *behind);
  return Status::Ok();
}

Status ChunkCache::EnsureBlockAt(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t end, bool check) {
  if (end % kBlockSize == 0) return Status::Ok();  // no block cut in two
  return EnsureCheckedBlock(e, n, end / kBlockSize, check);
}

Status ChunkCache::EnsureCheckedBlock(const std::shared_ptr<Entry>& e, const NodeRecord& n, uint64_t b, bool check) {
  const uint64_t c = b / kBlocksPerChunk;
  bool verify;
  {
    // The node is marked local by now (the change is under way), so
    // EnsureChunk would skip the check a read makes: a block a saved
    // bitmap claims (a crash, a punch) is re-hashed here when the node had
    // no local bytes before this change (`check`: every present block is
    // then the manifest's; a flushed block not yet committed is not).
    std::lock_guard lock(e->mu);
    if (b >= e->manifest.blocks.size()) return Status::Ok();  // past the server's bytes: ours
    verify = check && e->tracked && c < e->verified.size() && !e->verified[c] && !e->inflight.count(c);
  }
  if (verify) Verify(*e, c);
  bool present;
  {
    std::lock_guard lock(e->mu);
    present = b >= e->manifest.blocks.size() || e->present[b];
  }
  return present ? Status::Ok() : EnsureChunk(e, n, c);
}

Status ChunkCache::Truncate(const NodeRecord& n, uint64_t size) {
  bool was_local;
  std::optional<Changing> changing;
  ASSIGN_OR_RETURN(auto e, OpenToChange(n, &was_local, &changing));
  // The block the new end (or the old end, when growing) falls in keeps
  // some of its bytes: it must be here first.
  const uint64_t cut = std::min(n.size, size);
  RETURN_IF_ERROR(EnsureBlockAt(e, n, cut, !was_local));
  {
    // Past the cut the server's old bytes no longer count: the view of the
    // manifest shrinks first (a fetch from now on writes nothing there),
    // fetched chunks waiting to be written there are called off, and one
    // being written finishes before the file is cut.
    std::unique_lock lock(e->mu);
    if (e->manifest.size > cut) {
      e->manifest.size = cut;
      e->manifest.blocks.resize((cut + kBlockSize - 1) / kBlockSize);
    }
    // A change from here: a commit landing before the cut is done takes
    // its version as the base only up to the cut (Committed), instead of
    // putting the whole of it back under a file about to be cut (a write
    // after would then fetch the old bytes back).
    e->write_gen++;
    // A fetch that chose its blocks before the view shrank writes them
    // without the lock: those writes end before the file is cut. (Its
    // transfer is not waited for: with the server away that is the retry
    // period, and the caller may hold the mount's metadata lock.)
    lock.unlock();
    { std::unique_lock resized(e->resize_mu); }
    lock.lock();
    e->hot.erase(e->hot.lower_bound(cut / kChunkSize), e->hot.end());
    for (auto it = e->writing.upper_bound(cut / kChunkSize); it != e->writing.end(); ++it) e->cancelled.insert(*it);
    e->written.wait(lock, [&] { return e->writing.lower_bound(cut / kChunkSize) == e->writing.end(); });
    e->cancelled.clear();
  }
  if (::ftruncate(e->fd, static_cast<off_t>(size)) != 0)
    return Status::IoError("cannot resize the cache file of node " + std::to_string(n.id) + ": " + std::strerror(errno));
  Manifest m;
  std::vector<bool> present;
  std::optional<std::vector<bool>> dirty;
  {
    std::lock_guard lock(e->mu);
    e->Grow(size);
    e->hot.erase(e->hot.lower_bound(cut / kChunkSize), e->hot.end());
    const uint64_t keep = (size + kBlockSize - 1) / kBlockSize;
    for (uint64_t b = keep; b < e->present.size(); ++b) e->present[b] = e->dirty[b] = false;
    if (cut % kBlockSize) {
      const uint64_t b = cut / kBlockSize;
      if (b < e->manifest.blocks.size() && !e->dirty[b]) e->partial_gen++;  // (the server's first bytes)
      e->present[b] = e->dirty[b] = true;
    }
    for (uint64_t b = cut / kBlockSize; b < keep; ++b) e->present[b] = e->dirty[b] = true;
    e->write_gen++;
    e->ForgetAhead();
    e->write_front = std::min(e->write_front, size);
    m = e->manifest;
    present = e->present;
    if (e->tracked) dirty = e->dirty;
  }
  if (state_) RETURN_IF_ERROR(state_->SaveFile({n.id, e->version, m, present, dirty}));
  return Status::Ok();
}

Status ChunkCache::Extend(const NodeRecord& n, uint64_t size) {
  bool was_local;
  std::optional<Changing> changing;
  ASSIGN_OR_RETURN(auto e, OpenToChange(n, &was_local, &changing));
  struct stat st;
  if (::fstat(e->fd, &st) != 0)
    return Status::IoError("cannot stat the cache file of node " + std::to_string(n.id) + ": " + std::strerror(errno));
  const uint64_t old = static_cast<uint64_t>(st.st_size);
  if (old >= size) return Status::Ok();
  // The block the old end falls in keeps its first bytes: here first.
  RETURN_IF_ERROR(EnsureBlockAt(e, n, old, !was_local));
  WaitWrites(*e, old / kChunkSize);  // nothing fetched lands in the new part afterwards
  // Mode 0 only ever moves the end outwards: a write landing meanwhile keeps its bytes.
  if (::fallocate(e->fd, 0, static_cast<off_t>(old), static_cast<off_t>(size - old)) != 0) {
    int err = errno;
    return Status(err == ENOSPC || err == EFBIG ? Code::kTooLarge : Code::kIoError,
                  "cannot grow the cache file of node " + std::to_string(n.id) + ": " + std::strerror(err));
  }
  std::lock_guard lock(e->mu);
  e->Grow(size);
  e->hot.erase(e->hot.lower_bound(old / kChunkSize), e->hot.end());
  // The new blocks are local zeros (and the one the old end fell in).
  if (old % kBlockSize && old / kBlockSize < e->manifest.blocks.size() && !e->dirty[old / kBlockSize])
    e->partial_gen++;  // (the server's first bytes)
  for (uint64_t b = old / kBlockSize; b < (size + kBlockSize - 1) / kBlockSize; ++b) e->present[b] = e->dirty[b] = true;
  e->write_gen++;
  e->ForgetAhead();
  return Status::Ok();
}

Result<ChunkCache::FlushView> ChunkCache::BeginFlush(const NodeRecord& n) {
  FlushView v;
  {
    // Sent from memory: its cache file is made once the changes pause.
    std::lock_guard lock(mu_);
    auto it = staged_.find(n.id);
    if (it != staged_.end() && !entries_.count(n.id)) {
      v.staged = it->second;
      v.size = it->second.size();
      v.dirty.assign((v.size + kBlockSize - 1) / kBlockSize, true);
      return v;
    }
  }
  ASSIGN_OR_RETURN(auto e, Open(n));
  // The size under the entry's lock, with the bitmap and write_gen: taken
  // before it, a write ending in between was counted as sent (its
  // write_gen in the view) while the size left its bytes out, and the
  // commit then showed the file without them.
  std::lock_guard lock(e->mu);
  struct stat st;
  if (::fstat(e->fd, &st) != 0)
    return Status::IoError("cannot stat the cache file of node " + std::to_string(n.id) + ": " + std::strerror(errno));
  v.size = static_cast<uint64_t>(st.st_size);  // the local size, whatever the tree shows
  v.fd = e->fd;
  v.version = e->version;
  v.base = e->manifest;
  v.dirty = e->dirty;
  // Blocks written here but not marked (an earlier mount's writes): every
  // present block is re-hashed; the server's missing-list keeps the upload
  // to what really changed.
  if (!e->tracked)
    for (size_t b = 0; b < e->present.size(); ++b)
      if (e->present[b]) {
        if (v.dirty.size() <= b) v.dirty.resize(b + 1, false);
        v.dirty[b] = true;
      }
  v.write_gen = e->write_gen;
  for (const auto& [b, h] : e->ahead)
    if (h && b < v.dirty.size() && v.dirty[b]) v.known.emplace(b, *h);
  v.pin = e;
  return v;
}

Result<std::optional<ChunkCache::AheadView>> ChunkCache::BeginAhead(const NodeRecord& n, uint64_t min_bytes,
                                                                     uint64_t max_bytes) {
  {
    std::lock_guard lock(mu_);
    if (staged_.count(n.id) && !entries_.count(n.id)) return std::optional<AheadView>();  // in memory: small
  }
  ASSIGN_OR_RETURN(auto e, Open(n));
  struct stat st;
  if (::fstat(e->fd, &st) != 0)
    return Status::IoError("cannot stat the cache file of node " + std::to_string(n.id) + ": " + std::strerror(errno));
  AheadView v;
  v.size = static_cast<uint64_t>(st.st_size);
  std::lock_guard lock(e->mu);
  // Whole blocks a chunk or more behind the furthest write: a program
  // writing front to back is done with them.
  // Looked for from the cursor only: each look costs what was written
  // since, not the file's size.
  const uint64_t settled = e->write_front > kChunkSize ? std::min(e->write_front - kChunkSize, v.size) / kBlockSize : 0;
  uint64_t b = e->ahead_from;
  for (; b < std::min<uint64_t>(settled, e->dirty.size()) && v.blocks.size() * kBlockSize < max_bytes; ++b)
    if (e->dirty[b] && !e->ahead.count(b)) v.blocks.push_back(b);
  if (v.blocks.empty() || v.blocks.size() * kBlockSize < min_bytes) return std::optional<AheadView>();
  for (uint64_t picked : v.blocks) e->ahead.emplace(picked, std::nullopt);
  e->ahead_from = b;
  v.fd = e->fd;
  v.pin = e;
  return std::optional<AheadView>(std::move(v));
}

void ChunkCache::EndAhead(uint64_t id, const std::vector<uint64_t>& blocks, const std::vector<Hash128>& hashes, bool ok) {
  auto e = FindEntry(id);
  if (!e) return;
  std::lock_guard lock(e->mu);
  for (size_t i = 0; i < blocks.size(); ++i) {
    auto it = e->ahead.find(blocks[i]);
    if (it == e->ahead.end() || it->second) continue;  // written since (or not ours)
    if (ok) {
      it->second = hashes[i];
    } else {
      e->ahead.erase(it);
      e->ahead_from = std::min(e->ahead_from, blocks[i]);
    }
  }
}

void ChunkCache::ForgetAhead(uint64_t id) {
  if (auto e = FindEntry(id)) {
    std::lock_guard lock(e->mu);
    e->ForgetAhead();
  }
}

void ChunkCache::Committed(uint64_t id, uint64_t version, const Manifest& m, uint64_t write_gen, bool staged) {
  // What the commit made clean counts against the limit from now on:
  // written here, it may take the cache past it (a copy in of more than
  // the limit), and nothing else evicts before the next fetch.
  std::vector<Punch> punches;
  {
    std::lock_guard lock(mu_);
    auto it = entries_.find(id);
    if (it != entries_.end()) {
      std::shared_ptr<Entry> e = it->second;
      std::vector<bool> present;
      {
        // Decided and applied under both locks: a write that claims blocks
        // now either bumps write_gen first or sees the node still local;
        // one under way (counted in `changing`) keeps it local too.
        std::lock_guard elock(e->mu);
        e->version = version;
        // Changed here since the bytes committed were read (or they are an
        // earlier attempt's): the new version is the base only as far as
        // the view of the old one reached. A cut since shrank that view
        // (Truncate); the server's bytes past it are gone here, and a
        // partial write or a read there must not fetch them back. (What
        // lies past it and is the file's was written here: present, dirty.)
        const uint64_t clip = e->write_gen == write_gen ? m.size : std::min(m.size, e->manifest.size);
        e->manifest = m;
        e->Grow(m.size);  // (its bits cover every block it names)
        if (clip < m.size) {
          e->manifest.size = clip;
          e->manifest.blocks.resize((clip + kBlockSize - 1) / kBlockSize);
        }
        e->tracked = true;
        e->changed_here = true;  // (its record is saved by the write-back, later)
        if (e->write_gen == write_gen && e->changing > 0) e->clear_at = write_gen;  // (by the last change to end)
        if (e->write_gen == write_gen && e->changing == 0) {
          std::fill(e->dirty.begin(), e->dirty.end(), false);
          e->synced_gen = e->partial_gen;  // (nothing dirty to keep)
          e->ForgetAhead();
          local_.erase(id);
          // Sent from its staged bytes, and the entry opened since holds
          // just those: all of it is here.
          if (staged) e->present.assign(m.blocks.size(), true);
        }
        present = e->present;
      }
      RekeyLocked(id, version, present, m.size);
      punches = EvictLocked();
    } else if (staged) {
      // Sent from its staged bytes and untouched since (any other use
      // opens the entry): clean at `version`, all of it here once the bytes
      // are in the file, if they are not already (the intent log keeps
      // them until then; a chunk evicted before leaves its bits cleared).
      local_.erase(id);
      created_.erase(id);
      RekeyLocked(id, version, std::vector<bool>(m.blocks.size(), true), m.size);
      punches = EvictLocked();
    }
  }
  RunPunches(std::move(punches));
}

void ChunkCache::RekeyLocked(uint64_t id, uint64_t version, const std::vector<bool>& present, uint64_t size) {
  ForgetLocked(id);
  for (uint64_t c = 0; c * kBlocksPerChunk < present.size(); ++c) {
    uint64_t bytes = 0;
    // (The last block of the version counts what it holds, as a fetch of
    // it does; blocks past it, written here, count whole.)
    for (uint64_t b = c * kBlocksPerChunk; b < std::min<uint64_t>((c + 1) * kBlocksPerChunk, present.size()); ++b)
      if (present[b]) bytes += b * kBlockSize < size ? std::min<uint64_t>(kBlockSize, size - b * kBlockSize) : kBlockSize;
    if (bytes) AddChunkLocked({id, version, c}, bytes);
  }
}

std::shared_ptr<ChunkCache::Entry> ChunkCache::FindEntry(uint64_t id) {
  std::lock_guard lock(mu_);
  auto it = entries_.find(id);
  return it == entries_.end() ? nullptr : it->second;
}

Status ChunkCache::SyncFile(uint64_t id) {
  std::shared_ptr<Entry> e = FindEntry(id);
  if (!e) {
    // Never opened here: staged bytes, or a file the writer put them in.
    RETURN_IF_ERROR(Materialize(id));
    const std::string path = dir_ + "/data/" + std::to_string(id);
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT ? Status::Ok() : Status::IoError("cannot open " + path + ": " + std::strerror(errno));
    int rc = ::fdatasync(fd);
    int err = errno;
    ::close(fd);
    if (rc != 0) return Status::IoError("cannot sync " + path + ": " + std::strerror(err));
    // (Its name too: the file may have been renamed into place just now.)
    const std::string data = dir_ + "/data";
    fd = ::open(data.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return Status::IoError("cannot open " + data + ": " + std::strerror(errno));
    rc = ::fsync(fd);
    err = errno;
    ::close(fd);
    if (rc != 0) return Status::IoError("cannot sync " + data + ": " + std::strerror(err));
    return Status::Ok();
  }
  RETURN_IF_ERROR(EnsureOpen(*e));
  uint64_t gen;
  {
    std::lock_guard lock(e->mu);
    gen = e->partial_gen;
  }
  if (::fdatasync(e->fd) != 0)
    return Status::IoError("cannot sync the cache file of node " + std::to_string(id) + ": " + std::strerror(errno));
  std::lock_guard lock(e->mu);
  e->synced_gen = std::max(e->synced_gen, gen);
  return Status::Ok();
}

bool ChunkCache::NeedsSync(uint64_t id) {
  std::shared_ptr<Entry> e = FindEntry(id);
  if (!e) return false;
  std::lock_guard lock(e->mu);
  return e->synced_gen != e->partial_gen;
}

bool ChunkCache::Holds(uint64_t id) const {
  std::lock_guard lock(mu_);
  return entries_.count(id) > 0;
}

bool ChunkCache::WrittenWithin(uint64_t id, std::chrono::steady_clock::duration d) {
  std::shared_ptr<Entry> e = FindEntry(id);
  if (!e) return false;
  std::lock_guard lock(e->mu);
  return std::chrono::steady_clock::now() - e->last_write < d;
}

std::optional<LocalState::CachedFile> ChunkCache::FileRecord(uint64_t id) {
  std::shared_ptr<Entry> e = FindEntry(id);
  if (!e) return std::nullopt;
  std::lock_guard lock(e->mu);
  // (Dirty bits only once they are complete: not for an earlier mount's
  // local bytes not yet looked at.)
  return LocalState::CachedFile{id, e->version, e->manifest, e->present,
                                e->tracked ? std::optional<std::vector<bool>>(e->dirty) : std::nullopt};
}

void ChunkCache::CreatedCommitted(uint64_t id) {
  std::lock_guard lock(mu_);
  if (entries_.count(id) || staged_.count(id)) return;  // written since: its flush clears it
  local_.erase(id);
  created_.erase(id);
}

void ChunkCache::AdvanceVersion(uint64_t id, uint64_t from, uint64_t to) {
  if (std::shared_ptr<Entry> e = FindEntry(id)) {
    LocalState::CachedFile f;
    {
      std::lock_guard lock(mu_);
      std::lock_guard elock(e->mu);
      if (e->version != from) return;
      e->version = to;
      f = {id, to, e->manifest, e->present, e->tracked ? std::optional<std::vector<bool>>(e->dirty) : std::nullopt};
      RekeyLocked(id, to, f.present, f.manifest.size);
    }
    if (state_) (void)state_->SaveFile(f);
    return;
  }
  if (!state_) return;
  // Not open here: the saved record moves, and its chunks' keys in the
  // index with it (else their eviction, finding another version saved,
  // punched nothing and the disk held more than counted).
  std::lock_guard records(closed_records_mu_);
  auto saved = state_->LoadFile(id);
  const bool had = saved.ok() && *saved && (*saved)->version == from;
  if (had) {
    (*saved)->version = to;
    (void)state_->SaveFile(**saved);
  }
  std::lock_guard lock(mu_);
  // An opener that read the record before this, or found none and took
  // `from` from the tree: it moves as it publishes, or here if it did
  // meanwhile (else a change through it names `from`, and comes back a
  // conflict with this device's own commit).
  if (auto it = entries_.find(id); it == entries_.end()) {
    if (had) RekeyLocked(id, to, (*saved)->present, (*saved)->manifest.size);
    if (opening_slow_.count(id)) advanced_while_opening_[id] = {from, to};
  } else if (!it->second->retired) {
    std::lock_guard elock(it->second->mu);
    if (it->second->version == from) {
      it->second->version = to;
      RekeyLocked(id, to, it->second->present, it->second->manifest.size);
    }
  }
}

void ChunkCache::KeepOpen(const NodeRecord& n) {
  if (n.kind != NodeKind::kFile || Holds(n.id)) return;
  auto e = OpenEntry(n, /*reading=*/false, /*once=*/false, nullptr, /*saved_only=*/true);
  if (!e.ok()) {
    spdlog::trace("node {}: nothing saved to keep ({})", n.id, e.status().message());
    return;
  }
  std::lock_guard lock((*e)->mu);
  (*e)->changed_here = true;  // (never let go: its record is gone)
}

void ChunkCache::Forget(uint64_t id) {
  spdlog::trace("node {}: its cache goes", id);
  // Openers of the node from now on wait until it is forgotten, then start
  // from the server's (a change that found its entry retired here would
  // otherwise open it again from the state this drops, and write into a
  // file about to go). One under way finds the mark in forgotten_.
  bool gate;
  {
    std::lock_guard lock(mu_);
    gate = opening_slow_.insert(id).second;
  }
  struct Gate {
    ChunkCache* cache;
    uint64_t id;
    bool held;
    ~Gate() {
      if (!held) return;
      {
        std::lock_guard lock(cache->mu_);
        cache->opening_slow_.erase(id);
        cache->advanced_while_opening_.erase(id);
      }
      cache->opened_slow_.notify_all();
    }
  } gate_release{this, id, gate};
  // Its fetched chunks land (in a file about to go) before its records go.
  if (std::shared_ptr<Entry> e = FindEntry(id)) {
    {
      std::lock_guard lock(mu_);  // (as every retirement: see Changing)
      std::lock_guard elock(e->mu);
      e->retired = true;
    }
    WaitWrites(*e);
  }
  {
    std::lock_guard lock(mu_);
    if (auto it = entries_.find(id); it != entries_.end()) {
      if (it->second->fd >= 0) open_fds_--;
      entries_.erase(it);
    }
    local_.erase(id);
    created_.erase(id);
    DropStagedLocked(id);
    ForgetLocked(id);
    if (!gate) forgotten_.insert(id);  // its opener removes what it makes
  }
  if (state_) (void)state_->DropFile(id);
  ::unlink((dir_ + "/data/" + std::to_string(id)).c_str());
}

std::optional<std::vector<std::pair<uint64_t, uint64_t>>> ChunkCache::ChangedRanges(const NodeRecord& old,
                                                                                    const NodeRecord& now) {
  std::optional<Manifest> before;
  if (auto e = FindEntry(old.id)) {
    std::lock_guard lock(e->mu);
    if (e->version == old.version) before = e->manifest;
  }
  if (!before && state_) {
    auto f = state_->LoadFile(old.id);
    if (f.ok() && *f && (*f)->version == old.version) before = std::move((*f)->manifest);
  }
  if (!before) return std::nullopt;
  if (now.size == 0) return std::vector<std::pair<uint64_t, uint64_t>>{{0, 0}};
  auto after = client_->GetManifest(now.id, now.version);
  if (!after.ok()) return std::nullopt;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  const size_t common = std::min(before->blocks.size(), after->blocks.size());
  for (size_t b = 0; b < common; ++b) {
    if (before->blocks[b] == after->blocks[b]) continue;
    uint64_t off = b * kBlockSize;
    if (!ranges.empty() && ranges.back().first + ranges.back().second == off) ranges.back().second += kBlockSize;
    else ranges.emplace_back(off, kBlockSize);
  }
  // A size change: the last common block may have changed length, and
  // everything after it is new or gone.
  if (before->size != after->size) {
    uint64_t from = std::min(before->size, after->size) / kBlockSize * kBlockSize;
    while (!ranges.empty() && ranges.back().first >= from) ranges.pop_back();
    if (!ranges.empty() && ranges.back().first + ranges.back().second > from) ranges.back().second = from - ranges.back().first;
    ranges.emplace_back(from, 0);
  }
  return ranges;
}

}  // namespace tidefs
