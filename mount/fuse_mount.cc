// The FUSE adapter: one small function per operation, translating kernel
// requests into calls on the Tree and the ChunkCache. It holds no policy.
#define FUSE_USE_VERSION 35
#include "mount/fuse_mount.h"

#include <fuse_lowlevel.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <fstream>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cache/chunk_cache.h"
#include "client/local_state.h"
#include "core/fd.h"
#include "core/hash.h"
#include "core/logging.h"
#include "core/memory.h"
#include "client/importer.h"
#include "core/names.h"
#include "mount/fuse_settings.h"
#include "mount/remote_sync.h"
#include "mount/tree.h"
#include "mount/writeback.h"

namespace tidefs {
namespace {

// The kernel keeps entries and attributes this long; changes made elsewhere
// are pushed by invalidation (the real-time issue), not found by expiry.
constexpr double kAttrTimeout = 3600;
// The preferred I/O size programs see (st_blksize): cp and friends move
// 1 MiB at a time, one FUSE request each (max_write and max_read match).
constexpr blksize_t kIoSize = 1 << 20;

// What the kernel caches (listings with cache_readdir, pages with
// keep_cache) is dropped when it changes under it; but a reply built
// before the change and taken in by the kernel just after the drop would
// stay cached, stale, for good. So every drop is made again a moment later
// (once the replies in flight have landed), and a directory handle opened
// before a change reads the directory again when read from the start.
class KernelDrops {
 public:
  static constexpr auto kAgainAfter = std::chrono::milliseconds(300);
  explicit KernelDrops(std::atomic<fuse_session*>* se) : se_(se) {
    thread_ = std::thread([this] { Run(); });
  }
  ~KernelDrops() { Stop(); }
  // Once the session stops answering (se_ cleared first): no more drops.
  void Stop() {
    {
      std::lock_guard lock(mu_);
      if (stop_) return;
      stop_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  // off < 0: attributes only; len 0: to the end.
  void Inode(uint64_t ino, int64_t off, int64_t len) {
    // (Attributes need no second drop: the kernel orders those replies.)
    if (Notify(Key{ino, off, len, {}}) && off >= 0) Again(Key{ino, off, len, {}});
  }
  void Listing(uint64_t dir) {
    {
      std::lock_guard lock(gen_mu_);
      ++listing_gen_[dir];
    }
    Inode(dir, 0, 0);
  }
  // A name in a directory (a lookup answered before, a negative one too).
  void Entry(uint64_t parent, const std::string& name) {
    if (Notify(Key{parent, kEntry, 0, name})) Again(Key{parent, kEntry, 0, name});
  }
  // A name deleted (the kernel forgets the entry, and tells whoever waits
  // on it); a lookup answered before it is dropped again later.
  void Deleted(uint64_t parent, uint64_t child, const std::string& name) {
    fuse_session* se = se_->load();
    if (!se) return;
    int rc = fuse_lowlevel_notify_delete(se, parent, child, name.data(), name.size());
    if (rc != 0 && rc != -ENOENT) spdlog::debug("announcing the delete of {}/{}: {}", parent, name, strerror(-rc));
    Again(Key{parent, kEntry, 0, name});
  }
  // Moves on with every drop of directory `dir`'s listing.
  uint64_t ListingGen(uint64_t dir) {
    std::lock_guard lock(gen_mu_);
    auto it = listing_gen_.find(dir);
    return it == listing_gen_.end() ? 0 : it->second;
  }

 private:
  std::mutex gen_mu_;
  std::unordered_map<uint64_t, uint64_t> listing_gen_;  // guarded by gen_mu_; directories dropped at least once
  static constexpr int64_t kEntry = std::numeric_limits<int64_t>::min();  // Key::off of a name
  struct Key {
    uint64_t ino;
    int64_t off, len;
    std::string name;
    bool operator==(const Key& o) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      return std::hash<uint64_t>()(k.ino ^ (static_cast<uint64_t>(k.off) << 20) ^ static_cast<uint64_t>(k.len)) ^
             std::hash<std::string>()(k.name);
    }
  };
  // false: no session (not mounted yet, or stopping).
  bool Notify(const Key& k) {
    fuse_session* se = se_->load();
    if (!se) return false;
    int rc = k.off == kEntry ? fuse_lowlevel_notify_inval_entry(se, k.ino, k.name.data(), k.name.size())
                             : fuse_lowlevel_notify_inval_inode(se, k.ino, k.off, k.len);
    if (rc != 0 && rc != -ENOENT) spdlog::debug("invalidating inode {} [{}, +{}) {}: {}", k.ino, k.off, k.len, k.name, strerror(-rc));
    return true;
  }
  void Again(Key k) {
    const auto due = std::chrono::steady_clock::now() + kAgainAfter;
    std::lock_guard lock(mu_);
    if (stop_) return;
    // Once per key, after its last drop: each drop covers the replies
    // before it.
    due_[k] = due;
    queue_.push_back({due, std::move(k)});
    if (queue_.size() == 1) cv_.notify_one();
  }
  void Run() {
    NameThread("tidefs-drops");
    std::unique_lock lock(mu_);
    for (;;) {
      if (stop_) return;
      if (queue_.empty()) {
        cv_.wait(lock);
        continue;
      }
      const auto due = queue_.front().first;
      if (std::chrono::steady_clock::now() < due) {
        cv_.wait_until(lock, due);
        continue;
      }
      Key k = std::move(queue_.front().second);
      queue_.pop_front();
      auto it = due_.find(k);
      if (it == due_.end() || it->second != due) continue;  // dropped again since: its own turn comes
      due_.erase(it);
      lock.unlock();  // the kernel may wait on a request that waits on Again
      Notify(k);
      lock.lock();
    }
  }
  std::atomic<fuse_session*>* se_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, Key>> queue_;
  std::unordered_map<Key, std::chrono::steady_clock::time_point, KeyHash> due_;
  bool stop_ = false;
  std::thread thread_;
};

// A reader going through a directory's files in name order (grep -r,
// tar, cp -r out, cat *: readdir's order, or the shell's): once two files
// it opened in a row that were not in the cache are neighbours in one
// directory, the small files after the one opened are fetched in the
// background, kScanAhead ahead of the reader for as long as it goes on.
class ScanAhead {
 public:
  static constexpr size_t kScanAhead = 16;
  // A read-only open of file `n` (`cold`: the cache held no state for it).
  // `after(dir, name, k)` gives the k entries of a directory after a name.
  // Returns the files to fetch.
  template <typename AfterFn>
  std::vector<NodeRecord> Opened(const NodeRecord& n, bool cold, AfterFn after) {
    std::lock_guard lock(mu_);
    const bool in_scan = n.parent == dir_ && !window_.empty() && n.name >= window_.front();
    const bool follows = cold && n.parent == last_parent_ && n.name > last_name_;
    if (cold) {
      last_parent_ = n.parent;
      last_name_ = n.name;
    }
    if (!in_scan && !follows) return {};
    if (!in_scan) {
      spdlog::debug("reading through directory {} from {}: fetching its next small files ahead", n.parent, n.name);
      dir_ = n.parent;
      window_.clear();
    }
    // Entries asked for that the reader has reached are done; more are
    // asked for once fewer than half the window is left ahead of it.
    while (!window_.empty() && window_.front() <= n.name) window_.pop_front();
    if (window_.size() > kScanAhead / 2) return {};
    auto next = after(dir_, window_.empty() ? n.name : window_.back(), kScanAhead - window_.size());
    if (!next.ok()) return {};
    std::vector<NodeRecord> out;
    for (NodeRecord& r : *next) {
      window_.push_back(r.name);
      if (r.kind == NodeKind::kFile) out.push_back(std::move(r));
    }
    if (window_.empty()) dir_ = 0;  // (the end of the directory: the scan is over)
    return out;
  }

 private:
  std::mutex mu_;
  uint64_t last_parent_ = 0;
  std::string last_name_;
  uint64_t dir_ = 0;                // the directory being read through
  std::deque<std::string> window_;  // names asked for ahead of the reader, in order
};

struct Fs {
  Fs(ApiClient* c, LocalState* state) : client(c), tree(state) {}
  ApiClient* client;
  Tree tree;
  // Namespace and size changes, one at a time (they read, then record).
  // Before sync, cache and wb: their threads call back into these.
  std::mutex meta_mu;
  std::unordered_map<uint64_t, int> open_count;  // guarded by meta_mu
  // guarded by meta_mu: files unlinked (or replaced) while open, as their
  // handles change them (fstat of such a file asks by node, not handle).
  std::unordered_map<uint64_t, NodeRecord> orphans;
  // Files made here whose handles queue their flush entry at the first
  // write (no FLUSH round trip at close), while handles that wrote are
  // open or an entry is queued. guarded by meta_mu.
  struct Unsent {
    int writers = 0;           // open handles that wrote
    int64_t last_write = 0;    // steady clock, ns
    int64_t queued_at = 0;     // when the queued entry was logged
    bool queued = false;       // a flush entry the write-back has not begun
  };
  std::unordered_map<uint64_t, Unsent> unsent;
  // Before sync, cache and wb: destroyed after them (their threads call it).
  std::atomic<fuse_session*> se{nullptr};  // set once mounted (kernel notifications)
  KernelDrops drops{&se};
  // Before cache and wb: destroyed after them (their threads report to it).
  std::unique_ptr<RemoteSync> sync;
  std::atomic<RemoteSync*> live_sync{nullptr};  // set once sync exists (fetch threads report to it)
  std::unique_ptr<ChunkCache> cache;
  ScanAhead scan_ahead;
  uid_t uid = getuid();
  gid_t gid = getgid();
  std::string project, server, cache_dir, device;
  std::unique_ptr<WriteBack> wb;
  LocalState* state = nullptr;
  // Requests answered, by kind (`tidefs status`).
  std::atomic<uint64_t> n_lookup{0}, n_getattr{0}, n_readdir{0}, n_open{0}, n_read{0}, read_bytes{0}, n_errors{0};
};

Fs* Self(fuse_req_t req) { return static_cast<Fs*>(fuse_req_userdata(req)); }

// The node, or an error already answered to the kernel (ENOENT when it is
// gone, EIO when the local state cannot be read).
std::optional<NodeRecord> NodeOrReply(fuse_req_t req, fuse_ino_t ino) {
  auto n = Self(req)->tree.Get(ino);
  if (!n.ok()) {
    spdlog::error("reading node {} from the local state failed: {}", ino, n.status().ToString());
    fuse_reply_err(req, EIO);
    return std::nullopt;
  }
  if (!*n) fuse_reply_err(req, ENOENT);
  return *n;
}

void FillStat(const Fs& fs, const NodeRecord& n, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = n.id;
  switch (n.kind) {
    case NodeKind::kDir: st->st_mode = S_IFDIR | n.mode; st->st_nlink = 2; break;
    case NodeKind::kSymlink: st->st_mode = S_IFLNK | 0777; st->st_nlink = 1; break;
    case NodeKind::kFile: st->st_mode = S_IFREG | n.mode; st->st_nlink = 1; break;
  }
  st->st_size = static_cast<off_t>(n.size);
  st->st_blocks = static_cast<blkcnt_t>((n.size + 511) / 512);
  st->st_blksize = kIoSize;
  st->st_uid = fs.uid;
  st->st_gid = fs.gid;
  st->st_mtim.tv_sec = n.mtime_ns / 1'000'000'000;
  st->st_mtim.tv_nsec = n.mtime_ns % 1'000'000'000;
  st->st_atim = st->st_ctim = st->st_mtim;
}

void FillEntry(const Fs& fs, const NodeRecord& n, fuse_entry_param* e) {
  std::memset(e, 0, sizeof *e);
  e->ino = n.id;
  e->generation = 1;
  e->attr_timeout = kAttrTimeout;
  e->entry_timeout = kAttrTimeout;
  FillStat(fs, n, &e->attr);
}

void OpInit(void*, fuse_conn_info* conn) { TuneFuseConnection(conn); }

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Fs* fs = Self(req);
  fs->n_lookup++;
  auto found = fs->tree.Lookup(parent, name);
  if (!found.ok()) {
    spdlog::error("lookup of {} in directory {} failed: {}", name, parent, found.status().ToString());
    return (void)fuse_reply_err(req, EIO);
  }
  const auto& n = *found;
  fuse_entry_param e;
  if (!n) {
    // A name known absent: a negative entry the kernel may cache (ino 0).
    std::memset(&e, 0, sizeof e);
    e.entry_timeout = kAttrTimeout;
    fuse_reply_entry(req, &e);
    return;
  }
  FillEntry(*fs, *n, &e);
  fuse_reply_entry(req, &e);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Fs* fs = Self(req);
  fs->n_getattr++;
  auto n = fs->tree.Get(ino);
  if (!n.ok()) {
    spdlog::error("reading node {} from the local state failed: {}", ino, n.status().ToString());
    return (void)fuse_reply_err(req, EIO);
  }
  if (!*n) {
    // Unlinked while open: still there for fstat(), as on a local disk
    // (the kernel asks by node, not by handle).
    std::lock_guard lock(fs->meta_mu);
    auto o = fs->orphans.find(ino);
    if (o == fs->orphans.end()) return (void)fuse_reply_err(req, ENOENT);
    *n = o->second;
  }
  struct stat st;
  FillStat(*fs, **n, &st);
  fuse_reply_attr(req, &st, kAttrTimeout);
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  auto n = NodeOrReply(req, ino);
  if (!n) return;
  if (n->kind != NodeKind::kSymlink) return (void)fuse_reply_err(req, EINVAL);
  fuse_reply_readlink(req, n->target.c_str());
}

// A directory handle holds the listing taken at opendir, so offsets stay
// stable while it is read.
struct DirHandle {
  std::vector<NodeRecord> entries;
  uint64_t parent = 0;  // for ".."
  uint64_t gen = 0;     // Fs::drops.ListingGen of the directory when taken
};

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Fs* fs = Self(req);
  auto n = NodeOrReply(req, ino);
  if (!n) return;
  if (n->kind != NodeKind::kDir) return (void)fuse_reply_err(req, ENOTDIR);
  const uint64_t gen = fs->drops.ListingGen(ino);
  auto kids = fs->tree.Children(ino);
  if (!kids.ok()) {
    spdlog::error("listing directory {} failed: {}", ino, kids.status().ToString());
    return (void)fuse_reply_err(req, EIO);
  }
  auto* h = new DirHandle{std::move(*kids), n->parent ? n->parent : ino, gen};
  fi->fh = reinterpret_cast<uint64_t>(h);
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  Fs* fs = Self(req);
  fs->n_readdir++;
  auto* h = reinterpret_cast<DirHandle*>(fi->fh);
  if (off == 0) {
    // A listing dropped since the handle took its own: the kernel keeps
    // what this reply holds, so it must be today's.
    const uint64_t gen = fs->drops.ListingGen(ino);
    if (gen != h->gen) {
      auto kids = fs->tree.Children(ino);
      if (!kids.ok()) {
        spdlog::error("listing directory {} failed: {}", ino, kids.status().ToString());
        return (void)fuse_reply_err(req, EIO);
      }
      h->entries = std::move(*kids);
      h->gen = gen;
    }
  }
  std::vector<char> buf(size);
  size_t used = 0;
  // Offsets: 1 is ".", 2 is "..", 3+i is entry i.
  for (off_t i = off; i < static_cast<off_t>(h->entries.size()) + 2; ++i) {
    const char* name;
    struct stat st;
    std::memset(&st, 0, sizeof st);
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    const NodeRecord* rec = nullptr;
    if (i == 0) {
      name = ".";
      st.st_ino = ino;
      st.st_mode = S_IFDIR;
    } else if (i == 1) {
      name = "..";
      st.st_ino = h->parent;
      st.st_mode = S_IFDIR;
    } else {
      rec = &h->entries[i - 2];
      name = rec->name.c_str();
      FillStat(*fs, *rec, &st);
    }
    size_t n;
    if (plus) {
      if (rec) FillEntry(*fs, *rec, &e);
      else e.attr = st;
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, name, &e, i + 1);
    } else {
      n = fuse_add_direntry(req, buf.data() + used, size - used, name, &st, i + 1);
    }
    if (n > size - used) {
      break;  // full; this entry comes with the next call (and is not counted)
    }
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReadDir(req, ino, size, off, fi, false);
}

void OpReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ReadDir(req, ino, size, off, fi, true);
}

void OpReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  delete reinterpret_cast<DirHandle*>(fi->fh);
  fuse_reply_err(req, 0);
}

// An open file. It keeps the node's record, so a file unlinked while open
// stays readable and writable until its last close.
struct FileHandle {
  uint64_t id = 0;
  NodeRecord rec;
  // Opened by open(): written since the last flush entry (queued at close).
  // Made by create(): has written (counted in Fs::unsent; each write makes
  // sure a flush entry is queued, and close sends no FLUSH).
  bool wrote = false;
  bool created = false;
  uint64_t logged_size = 0;  // created: the row as last recorded
  int64_t logged_mtime = 0;
};

// A file made by create() is new: the cache file holds all of it, its size
// is the cache file's, and a restart after a crash sends it all (no block
// bitmap to keep up to date). Its handles therefore queue the flush entry
// at the first write instead of at close: close() then needs no FLUSH
// round trip (a third of the kernel's requests of a small-file copy), and
// a kill -9 right after a write loses nothing.
constexpr int64_t kWriteIdleNs = 2'000'000'000;  // open, written this recently: not sent yet
constexpr int64_t kMaxHoldNs = 10'000'000'000;   // ...unless its entry waited this long

int64_t SteadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

FileHandle* HandleOf(fuse_file_info* fi) { return fi ? reinterpret_cast<FileHandle*>(fi->fh) : nullptr; }

int64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

// The node of an open file: the tree's record, or the handle's own once unlinked.
std::optional<NodeRecord> HandleNode(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto n = Self(req)->tree.Get(ino);
  FileHandle* h = HandleOf(fi);
  if (n.ok() && *n) {
    if (h) h->rec = **n;
    return *n;
  }
  if (h && h->id == ino) return h->rec;
  fuse_reply_err(req, n.ok() ? ENOENT : EIO);
  return std::nullopt;
}

int ReplyStatus(fuse_req_t req, const Status& st, const char* what, uint64_t id) {
  Fs* fs = Self(req);
  fs->n_errors++;
  int err = st.code() == Code::kTooLarge ? ENOSPC : ErrnoFor(st.code());
  if (err == 0 || err == EINVAL) err = EIO;
  spdlog::error("{} of node {} failed: {}", what, id, st.ToString());
  return fuse_reply_err(req, err);
}

void Opened(Fs* fs, fuse_file_info* fi, const NodeRecord& n) {
  auto* h = new FileHandle{n.id, n, false};
  fi->fh = reinterpret_cast<uint64_t>(h);
  std::lock_guard lock(fs->meta_mu);
  fs->open_count[n.id]++;
}

// "Send the content of `id` as the cache holds it."
LocalState::JournalEntry FlushEntry(uint64_t id) {
  LocalState::JournalEntry e;
  e.flush = true;
  e.op.type = OpType::kWrite;
  e.op.id = id;
  e.op.has_base = true;
  return e;
}

// Queues the content of an open file for the server (close, fsync).
Status RecordFlush(Fs* fs, FileHandle* h, bool fsync = false) {
  if (!h) return Status::Ok();
  if (!h->wrote) {
    // An fsync through a handle that did not write covers the file's other
    // writers too (as on a local disk): its content is queued, with the
    // bitmap and the blocks written here (a reboot's check keeps those).
    if (!fsync || !fs->cache->IsLocal(h->id)) return Status::Ok();
    std::lock_guard lock(fs->meta_mu);
    auto n = fs->tree.Get(h->id);
    if (!n.ok()) return n.status();
    if (!*n || (*n)->kind != NodeKind::kFile) return Status::Ok();
    return fs->wb->Record({**n}, {FlushEntry(h->id)}, {h->id});
  }
  std::lock_guard lock(fs->meta_mu);
  if (h->created) {
    // The content goes by the entry the writes queued; the row (size,
    // mtime of later writes) is brought up to date for the local state,
    // and at fsync the bitmap too, and the entry is let go at once.
    auto n = fs->tree.Get(h->id);
    if (!n.ok()) return n.status();
    if (!*n) return Status::Ok();  // unlinked: nothing to send
    if (fsync) {
      if (auto it = fs->unsent.find(h->id); it != fs->unsent.end()) it->second.last_write = 0;
    } else if ((*n)->size == h->logged_size && (*n)->mtime_ns == h->logged_mtime) {
      return Status::Ok();
    }
    RETURN_IF_ERROR(fs->wb->Record({**n}, {}, fsync ? std::vector<uint64_t>{h->id} : std::vector<uint64_t>{}));
    h->logged_size = (*n)->size;
    h->logged_mtime = (*n)->mtime_ns;
    return Status::Ok();
  }
  auto n = fs->tree.Get(h->id);
  if (!n.ok()) return n.status();
  if (!*n) {
    h->wrote = false;
    return Status::Ok();  // unlinked: nothing to send
  }
  // With the bitmap: a restart must know which blocks to send.
  RETURN_IF_ERROR(fs->wb->Record({**n}, {FlushEntry(h->id)}, {h->id}));
  h->wrote = false;
  return Status::Ok();
}

// Opens `n` for `fi`; `entry`: the answer to a create (the name's entry
// with the handle).
void OpenNode(fuse_req_t req, std::optional<NodeRecord> n, fuse_file_info* fi, bool entry) {
  Fs* fs = Self(req);
  const uint64_t ino = n->id;
  if (n->kind == NodeKind::kDir) return (void)fuse_reply_err(req, EISDIR);
  const bool writing = (fi->flags & O_ACCMODE) != O_RDONLY;
  // (O_TRUNC empties the file whatever the access mode, as the kernel does
  // for a local one: it checked write permission before asking.)
  if ((fi->flags & O_TRUNC) && n->kind == NodeKind::kFile && n->size > 0) {
    std::lock_guard lock(fs->meta_mu);
    if (Status st = fs->cache->Truncate(*n, 0); !st.ok()) return (void)ReplyStatus(req, st, "truncate at open", ino);
    NodeRecord rec = *n;
    rec.size = 0;
    rec.mtime_ns = NowNs();
    // (Its bitmap too, in queue order: a snapshot queued before, at an
    // fsync, must not be saved over the cut one.)
    if (Status st = fs->wb->Record({rec}, {FlushEntry(rec.id)}, {rec.id}); !st.ok())
      return (void)ReplyStatus(req, st, "truncate at open", ino);
    *n = rec;
  }
  fi->keep_cache = 1;  // the kernel's page cache stays valid until told otherwise
  // A read-only handle has nothing to flush (RecordFlush: nothing written),
  // and locks are the kernel's (no lock ops here): its close() needs no
  // FLUSH round trip.
  if (!writing) fi->noflush = 1;
  // Whether the cache held the file, asked before the reply: once the
  // kernel has it, its first READ may already be filling the cache on
  // another thread, and the open would count as warm.
  const bool cold = !writing && n->kind == NodeKind::kFile && !fs->cache->Holds(n->id);
  Opened(fs, fi, *n);
  if (entry) {
    fuse_entry_param ep;
    FillEntry(*fs, *n, &ep);
    fuse_reply_create(req, &ep, fi);
  } else {
    fuse_reply_open(req, fi);
  }
  if (!writing && n->kind == NodeKind::kFile) {
    for (const NodeRecord& next : fs->scan_ahead.Opened(*n, cold, [fs](uint64_t dir, const std::string& name, size_t k) {
           return fs->tree.ChildrenAfter(dir, name, k);
         }))
      fs->cache->Prefetch(next);
  }
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Self(req)->n_open++;
  auto n = NodeOrReply(req, ino);
  if (!n) return;
  OpenNode(req, n, fi, false);
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Fs* fs = Self(req);
  fs->n_read++;
  auto n = HandleNode(req, ino, fi);
  if (!n) return;
  auto p = fs->cache->Pin(*n, static_cast<uint64_t>(off), size);
  if (!p.ok()) {
    spdlog::error("read of node {} at {} failed: {}", ino, off, p.status().ToString());
    fs->n_errors++;
    return (void)fuse_reply_err(req, EIO);  // unreachable server or bad bytes: EIO, never wrong data
  }
  if (p->len == 0) return (void)fuse_reply_buf(req, nullptr, 0);
  fs->read_bytes += p->len;
  if (!p->mem.empty()) {
    // Fetched moments ago: from memory (the cache file's pages were never filled).
    std::vector<iovec> iov;
    for (const auto& [bytes, size] : p->mem) iov.push_back({const_cast<char*>(bytes), size});
    return (void)fuse_reply_iov(req, iov.data(), static_cast<int>(iov.size()));
  }
  // Hand the kernel the cache file's range; libfuse splices it when it can.
  fuse_bufvec buf = FUSE_BUFVEC_INIT(p->len);
  buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = p->fd;
  buf.buf[0].pos = static_cast<off_t>(p->off);
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
}

void OpWrite(fuse_req_t req, fuse_ino_t ino, const char* data, size_t size, off_t off, fuse_file_info* fi) {
  Fs* fs = Self(req);
  auto n = HandleNode(req, ino, fi);
  if (!n) return;
  FileHandle* h = HandleOf(fi);
  // A new file's first write, small and at 0 (cp of a small file): its
  // bytes go in the log record below, the cache file comes later (the
  // write-back's writer makes it), off this request's path.
  const bool staged = h && h->created && !h->wrote && off == 0 && fs->cache->Stage(*n, data, size);
  bool fresh = false;  // a block of the manifest the saved bitmap says is not here
  if (!staged) {
    if (Status st = fs->cache->Write(*n, static_cast<uint64_t>(off), data, size, &fresh); !st.ok())
      return (void)ReplyStatus(req, st, "write", ino);
  }
  {
    // Size and mtime in memory now; in the journal at close or fsync.
    std::lock_guard lock(fs->meta_mu);
    auto cur = fs->tree.Get(ino);
    // (A created handle's write is recorded here: no close will do it.)
    if (!cur.ok() && h && h->created) {
      if (staged) fs->cache->Unstage(ino);
      return (void)ReplyStatus(req, cur.status(), "write", ino);
    }
    auto orphan = cur.ok() && !*cur ? fs->orphans.find(ino) : fs->orphans.end();
    NodeRecord rec = cur.ok() && *cur ? **cur : orphan != fs->orphans.end() ? orphan->second : *n;
    rec.size = std::max<uint64_t>(rec.size, static_cast<uint64_t>(off) + size);
    rec.mtime_ns = NowNs();
    if (cur.ok() && *cur) fs->tree.Apply(rec);
    if (orphan != fs->orphans.end()) orphan->second = rec;
    if (h && h->created && cur.ok() && *cur) {
      Fs::Unsent& u = fs->unsent[ino];
      const int64_t now = SteadyNs();
      // After the bytes are in the cache file: a flush that begins once
      // this is queued sends them. A block new to the cache of a file
      // already committed once goes into the saved bitmap as well (a
      // restart sends the blocks it names).
      if (!u.queued || fresh || staged) {
        std::vector<LocalState::JournalEntry> entries;
        if (!u.queued) entries.push_back(FlushEntry(ino));
        std::vector<StagedBytes> bytes;
        if (staged) bytes.push_back({ino, std::string(data, size)});
        if (Status st = fs->wb->Record({rec}, entries, {ino}, std::move(bytes)); !st.ok()) {
          if (staged) fs->cache->Unstage(ino);
          if (u.writers == 0 && !u.queued) fs->unsent.erase(ino);
          return (void)ReplyStatus(req, st, "write", ino);
        }
        if (!u.queued) u.queued_at = now;
        u.queued = true;
        h->logged_size = rec.size;
        h->logged_mtime = rec.mtime_ns;
      }
      u.last_write = now;
      if (!h->wrote) ++u.writers;
    }
    if (h) {
      h->rec = rec;
      h->wrote = true;
    }
  }
  fuse_reply_write(req, size);
}

void OpFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  // close() returns once the change is in the intent log: a kill -9 of
  // the mount loses nothing.
  Status st = RecordFlush(Self(req), HandleOf(fi));
  if (!st.ok()) return (void)ReplyStatus(req, st, "flush", ino);
  fuse_reply_err(req, 0);
}

void OpFsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info* fi) {
  // Durable on this disk on return (cache file, journal, bitmaps); on the
  // server once the write-back reaches it.
  Fs* fs = Self(req);
  Status st = RecordFlush(fs, HandleOf(fi), /*fsync=*/true);
  if (st.ok()) st = fs->wb->WaitWritten();
  if (st.ok()) st = fs->cache->SyncFile(ino);
  if (st.ok()) st = fs->state->Sync();
  if (!st.ok()) return (void)ReplyStatus(req, st, "fsync", ino);
  fuse_reply_err(req, 0);
  if (FileHandle* h = HandleOf(fi); h && h->created) fs->wb->Kick();  // its entry is no longer held back
}

void OpRelease(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Fs* fs = Self(req);
  FileHandle* h = HandleOf(fi);
  Status st = RecordFlush(fs, h);
  if (!st.ok()) spdlog::error("queueing node {} for the server failed: {}", ino, st.ToString());
  bool kick = false;
  {
    std::lock_guard lock(fs->meta_mu);
    if (h && h->created && h->wrote) {
      // The last writer gone: its queued entry may go now.
      if (auto it = fs->unsent.find(ino); it != fs->unsent.end()) {
        kick = --it->second.writers <= 0;
        if (kick && !it->second.queued) fs->unsent.erase(it);
      }
    }
    if (--fs->open_count[ino] <= 0) {
      fs->open_count.erase(ino);
      // Unlinked while open (here or elsewhere): now gone. (Unless it came
      // back meanwhile: a delete refused, the file edited elsewhere.)
      if (fs->orphans.erase(ino))
        if (auto live = fs->tree.Get(ino); live.ok() && !*live) fs->cache->Forget(ino);
    }
  }
  delete h;
  fuse_reply_err(req, 0);
  if (kick) fs->wb->Kick();
}

// A name for a new node: the server's rules, checked at the syscall.
int CheckNewName(const char* name) {
  Status st = ValidateName(name);
  if (st.ok()) return 0;
  return std::strlen(name) > kMaxNameBytes ? ENAMETOOLONG : EINVAL;
}

// Requires meta_mu. 0, or the errno for making `name` in `parent`.
int CanCreate(Fs* fs, uint64_t parent, const char* name) {
  if (int err = CheckNewName(name)) return err;
  auto p = fs->tree.Get(parent);
  if (!p.ok()) return EIO;
  if (!*p) return ENOENT;
  if ((*p)->kind != NodeKind::kDir) return ENOTDIR;
  auto existing = fs->tree.Lookup(parent, name);
  if (!existing.ok()) return EIO;
  return *existing ? EEXIST : 0;
}

void MakeNode(fuse_req_t req, uint64_t parent, const char* name, NodeKind kind, mode_t mode, const char* target,
              fuse_file_info* fi) {
  Fs* fs = Self(req);
  std::lock_guard lock(fs->meta_mu);
  if (int err = CanCreate(fs, parent, name)) return (void)fuse_reply_err(req, err);
  NodeRecord rec;
  rec.id = NewNodeId();
  rec.parent = parent;
  rec.name = name;
  rec.kind = kind;
  rec.mode = kind == NodeKind::kSymlink ? 0777 : (mode & 07777);
  rec.mtime_ns = NowNs();
  LocalState::JournalEntry e;
  e.op.id = rec.id;
  e.op.parent = parent;
  e.op.name = name;
  e.op.has_mtime = true;
  e.op.mtime_ns = rec.mtime_ns;
  switch (kind) {
    case NodeKind::kFile: e.op.type = OpType::kCreate; e.op.has_mode = true; e.op.mode = rec.mode; break;
    case NodeKind::kDir: e.op.type = OpType::kMkdir; e.op.has_mode = true; e.op.mode = rec.mode; break;
    case NodeKind::kSymlink: e.op.type = OpType::kSymlink; e.op.target = rec.target = target; break;
  }
  if (kind == NodeKind::kFile) fs->cache->MarkLocal(rec.id, /*created=*/true);
  if (Status st = fs->wb->Record({rec}, {e}); !st.ok()) return (void)ReplyStatus(req, st, "create", parent);
  fuse_entry_param ep;
  FillEntry(*fs, rec, &ep);
  if (fi) {
    fi->keep_cache = 1;
    auto* h = new FileHandle{rec.id, rec, false};
    h->created = true;
    h->logged_size = rec.size;
    h->logged_mtime = rec.mtime_ns;
    fi->noflush = 1;  // see FileHandle
    // A new file opened write-only (cp's, tar's, a compiler's output): its
    // writes come straight to us, not through the kernel's page cache of
    // the file, which cost a second copy of every byte and a fresh page
    // for each (a 1 GiB copy in: 2.8-4.6 -> 1.7-1.9 CPU-s of the kernel's
    // time, 256-395 -> 508-550 MB/s). No handle reads through it; pages
    // other handles cached of a range written are invalidated by the
    // kernel after each such write (upstream commit b359af8275a9, 2025, in
    // this machine's 6.18; the e2e test
    // ADirectWriteOfANewFileIsSeenByAReaderAtOnce fails on a kernel
    // without it).
    if ((fi->flags & O_ACCMODE) == O_WRONLY) fi->direct_io = 1;
    fi->fh = reinterpret_cast<uint64_t>(h);
    fs->open_count[rec.id]++;
    fuse_reply_create(req, &ep, fi);
  } else {
    fuse_reply_entry(req, &ep);
  }
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  if (!S_ISREG(mode)) return (void)fuse_reply_err(req, EPERM);
  if (!(fi->flags & O_EXCL)) {
    // Made elsewhere a moment ago (the kernel had no entry for the name
    // yet): opened as it is, as open(O_CREAT) of an existing file does,
    // not EEXIST.
    Fs* fs = Self(req);
    std::optional<NodeRecord> there;
    {
      std::lock_guard lock(fs->meta_mu);
      if (auto e = fs->tree.Lookup(parent, name); e.ok() && *e) there = **e;
    }
    if (there && there->kind == NodeKind::kFile) {
      fs->n_open++;
      return OpenNode(req, there, fi, true);
    }
  }
  MakeNode(req, parent, name, NodeKind::kFile, mode, nullptr, fi);
}

void OpMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t) {
  // Regular files only: no devices, fifos or sockets in a project.
  if (!S_ISREG(mode)) return (void)fuse_reply_err(req, EPERM);
  MakeNode(req, parent, name, NodeKind::kFile, mode, nullptr, nullptr);
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  MakeNode(req, parent, name, NodeKind::kDir, mode, nullptr, nullptr);
}

void OpSymlink(fuse_req_t req, const char* target, fuse_ino_t parent, const char* name) {
  if (!*target || std::strlen(target) > kMaxSymlinkTarget) return (void)fuse_reply_err(req, ENAMETOOLONG);
  // Targets travel in JSON: UTF-8 only, refused here rather than by the server later.
  if (!IsValidUtf8(target)) return (void)fuse_reply_err(req, EINVAL);
  MakeNode(req, parent, name, NodeKind::kSymlink, 0777, target, nullptr);
}

// Requires meta_mu. Records the deletion of `n` (and forgets its cache,
// now or at its last close).
Status DeleteLocked(Fs* fs, const NodeRecord& n) {
  NodeRecord gone = n;
  gone.deleted = true;
  LocalState::JournalEntry e;
  e.op.type = OpType::kDelete;
  e.op.id = n.id;
  e.op.has_base = true;
  e.op.base = n.version;
  if (n.kind == NodeKind::kFile && fs->open_count.count(n.id)) fs->cache->KeepOpen(n);
  RETURN_IF_ERROR(fs->wb->Record({gone}, {e}));
  if (n.kind == NodeKind::kFile) {
    if (fs->open_count.count(n.id)) fs->orphans[n.id] = n;
    else fs->cache->Forget(n.id);
  }
  return Status::Ok();
}

void Remove(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
  Fs* fs = Self(req);
  std::lock_guard lock(fs->meta_mu);
  auto n = fs->tree.Lookup(parent, name);
  if (!n.ok()) return (void)fuse_reply_err(req, EIO);
  if (!*n) return (void)fuse_reply_err(req, ENOENT);
  if (dir != ((*n)->kind == NodeKind::kDir)) return (void)fuse_reply_err(req, dir ? ENOTDIR : EISDIR);
  if (dir) {
    auto kids = fs->tree.Children((*n)->id);
    if (!kids.ok()) return (void)fuse_reply_err(req, EIO);
    if (!kids->empty()) return (void)fuse_reply_err(req, ENOTEMPTY);
  }
  if (Status st = DeleteLocked(fs, **n); !st.ok()) return (void)ReplyStatus(req, st, "delete", (*n)->id);
  fuse_reply_err(req, 0);
}

void OpUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) { Remove(req, parent, name, false); }
void OpRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) { Remove(req, parent, name, true); }

// Requires meta_mu. Whether directory `dir` is `ancestor` or inside it.
bool Within(Fs* fs, uint64_t dir, uint64_t ancestor) {
  for (uint64_t a = dir; a && a != kRootId;) {
    if (a == ancestor) return true;
    auto up = fs->tree.Get(a);
    if (!up.ok() || !*up) break;
    a = (*up)->parent;
  }
  return false;
}

// rename(2) with RENAME_EXCHANGE: both names stay, their nodes swap places
// (one rename naming the other node: the server swaps them at once).
void Exchange(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname) {
  Fs* fs = Self(req);
  // (Offline since the start the level is not known: the swap is kept, and
  // the write-back holds it should the server turn out older.)
  if (const int level = fs->client->server_protocol(); level != 0 && level < kProtocolExchange) {
    static std::atomic<bool> said{false};
    if (!said.exchange(true))  // (once: a program may probe for swaps in a loop)
      spdlog::warn("a swap (rename with RENAME_EXCHANGE) is refused: the server at {} speaks protocol {}, and swaps "
                   "need {} or later; upgrade the server",
                   fs->client->options().server, level, kProtocolExchange);
    return (void)fuse_reply_err(req, EINVAL);
  }
  std::lock_guard lock(fs->meta_mu);
  auto a = fs->tree.Lookup(parent, name);
  auto b = fs->tree.Lookup(newparent, newname);
  if (!a.ok() || !b.ok()) return (void)fuse_reply_err(req, EIO);
  if (!*a || !*b) return (void)fuse_reply_err(req, ENOENT);
  if ((*a)->id == (*b)->id) return (void)fuse_reply_err(req, 0);
  // (The kernel refuses an exchange of a directory with something inside it.)
  if (((*a)->kind == NodeKind::kDir && Within(fs, newparent, (*a)->id)) ||
      ((*b)->kind == NodeKind::kDir && Within(fs, parent, (*b)->id)))
    return (void)fuse_reply_err(req, EINVAL);
  NodeRecord ma = **a, mb = **b;
  std::swap(ma.parent, mb.parent);
  std::swap(ma.name, mb.name);
  LocalState::JournalEntry e;
  e.op.type = OpType::kRename;
  e.op.id = ma.id;
  e.op.has_base = true;
  e.op.base = ma.version;  // (as a setattr's: the fallback)
  e.op.parent = ma.parent;
  e.op.name = ma.name;
  e.op.exchange = mb.id;
  if (Status st = fs->wb->Record({ma, mb}, {e}); !st.ok()) return (void)ReplyStatus(req, st, "rename", ma.id);
  fuse_reply_err(req, 0);
}

void OpRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent, const char* newname,
              unsigned int flags) {
  Fs* fs = Self(req);
  if (flags & RENAME_EXCHANGE) return Exchange(req, parent, name, newparent, newname);
  if (int err = CheckNewName(newname)) return (void)fuse_reply_err(req, err);
  std::lock_guard lock(fs->meta_mu);
  auto src = fs->tree.Lookup(parent, name);
  auto dst = fs->tree.Lookup(newparent, newname);
  auto np = fs->tree.Get(newparent);
  if (!src.ok() || !dst.ok() || !np.ok()) return (void)fuse_reply_err(req, EIO);
  if (!*src || !*np) return (void)fuse_reply_err(req, ENOENT);
  if ((*np)->kind != NodeKind::kDir) return (void)fuse_reply_err(req, ENOTDIR);
  const NodeRecord& s = **src;
  if (*dst) {
    const NodeRecord& d = **dst;
    if (flags & RENAME_NOREPLACE) return (void)fuse_reply_err(req, EEXIST);
    if (d.id == s.id) return (void)fuse_reply_err(req, 0);
    if (s.kind == NodeKind::kDir && d.kind != NodeKind::kDir) return (void)fuse_reply_err(req, ENOTDIR);
    if (s.kind != NodeKind::kDir && d.kind == NodeKind::kDir) return (void)fuse_reply_err(req, EISDIR);
    if (d.kind == NodeKind::kDir) {
      auto kids = fs->tree.Children(d.id);
      if (!kids.ok()) return (void)fuse_reply_err(req, EIO);
      if (!kids->empty()) return (void)fuse_reply_err(req, ENOTEMPTY);
    }
  }
  // A directory may not move into itself.
  if (s.kind == NodeKind::kDir && Within(fs, newparent, s.id)) return (void)fuse_reply_err(req, EINVAL);
  NodeRecord moved = s;
  moved.parent = newparent;
  moved.name = newname;
  std::vector<NodeRecord> rows{moved};
  std::vector<LocalState::JournalEntry> entries;
  if (*dst) {
    // The replaced file is deleted naming the version we saw, so a remote
    // edit of it is refused (and kept) rather than silently replaced; our
    // file then lands under a conflict name.
    NodeRecord gone = **dst;
    gone.deleted = true;
    rows.push_back(gone);
    LocalState::JournalEntry d;
    d.op.type = OpType::kDelete;
    d.op.id = gone.id;
    d.op.has_base = true;
    d.op.base = (*dst)->version;
    entries.push_back(d);
  }
  LocalState::JournalEntry e;
  e.op.type = OpType::kRename;
  e.op.id = s.id;
  e.op.has_base = true;
  e.op.base = s.version;  // (as a setattr's: the fallback)
  e.op.parent = newparent;
  e.op.name = newname;
  entries.push_back(e);
  if (*dst && (*dst)->kind == NodeKind::kFile && fs->open_count.count((*dst)->id)) fs->cache->KeepOpen(**dst);
  if (Status st = fs->wb->Record(rows, entries); !st.ok()) return (void)ReplyStatus(req, st, "rename", s.id);
  if (*dst && (*dst)->kind == NodeKind::kFile) {
    if (fs->open_count.count((*dst)->id)) fs->orphans[(*dst)->id] = **dst;
    else fs->cache->Forget((*dst)->id);
  }
  fuse_reply_err(req, 0);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  Fs* fs = Self(req);
  std::lock_guard lock(fs->meta_mu);
  auto n = HandleNode(req, ino, fi);
  if (!n) return;
  NodeRecord rec = *n;
  std::vector<LocalState::JournalEntry> entries;
  LocalState::JournalEntry attrs;
  attrs.op.type = OpType::kSetattr;
  attrs.op.id = rec.id;
  // The version seen now; the write-back names the newest it knows when it
  // sends the op, and this one when it knows none (the node deleted here
  // since, and the mount restarted: our commits' versions are gone).
  attrs.op.has_base = true;
  attrs.op.base = rec.version;
  if (to_set & FUSE_SET_ATTR_SIZE) {
    if (rec.kind != NodeKind::kFile) return (void)fuse_reply_err(req, EISDIR);
    if (Status st = fs->cache->Truncate(rec, static_cast<uint64_t>(attr->st_size)); !st.ok())
      return (void)ReplyStatus(req, st, "truncate", ino);
    rec.size = static_cast<uint64_t>(attr->st_size);
    rec.mtime_ns = NowNs();
    entries.push_back(FlushEntry(rec.id));
  }
  if (to_set & FUSE_SET_ATTR_MODE) {
    rec.mode = attr->st_mode & 07777;
    attrs.op.has_mode = true;
    attrs.op.mode = rec.mode;
  }
  if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
    rec.mtime_ns = (to_set & FUSE_SET_ATTR_MTIME_NOW)
                       ? NowNs()
                       : int64_t{attr->st_mtim.tv_sec} * 1'000'000'000 + attr->st_mtim.tv_nsec;
    attrs.op.has_mtime = true;
    attrs.op.mtime_ns = rec.mtime_ns;
  }
  if (rec.kind == NodeKind::kSymlink) attrs.op.has_mode = false;  // links have no mode of their own
  if (attrs.op.has_mode || attrs.op.has_mtime) entries.push_back(attrs);
  // An unlinked file's attributes live only in its handle.
  auto live = fs->tree.Get(ino);
  if (!entries.empty() && live.ok() && *live) {
    const std::vector<uint64_t> bitmap = (to_set & FUSE_SET_ATTR_SIZE) ? std::vector<uint64_t>{rec.id} : std::vector<uint64_t>{};
    if (Status st = fs->wb->Record({rec}, entries, bitmap); !st.ok()) return (void)ReplyStatus(req, st, "setattr", ino);
  }
  if (FileHandle* h = HandleOf(fi)) h->rec = rec;
  if (auto o = fs->orphans.find(ino); o != fs->orphans.end() && !(live.ok() && *live)) o->second = rec;
  struct stat st;
  FillStat(*fs, rec, &st);
  fuse_reply_attr(req, &st, kAttrTimeout);
}

// fallocate: growing a file (mode 0, posix_fallocate) is a truncate up,
// cheap in a sparse cache file. KEEP_SIZE changes nothing anyone can see
// and is accepted. Punching or zeroing ranges: EOPNOTSUPP (documented;
// programs fall back to writing zeros).
void OpFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, fuse_file_info* fi) {
  if (mode & ~FALLOC_FL_KEEP_SIZE) return (void)fuse_reply_err(req, EOPNOTSUPP);
  if (off < 0 || len <= 0) return (void)fuse_reply_err(req, EINVAL);
  if (off > std::numeric_limits<off_t>::max() - len) return (void)fuse_reply_err(req, EFBIG);
  Fs* fs = Self(req);
  std::lock_guard lock(fs->meta_mu);
  auto n = HandleNode(req, ino, fi);
  if (!n) return;
  if (n->kind != NodeKind::kFile) return (void)fuse_reply_err(req, EISDIR);
  const uint64_t end = static_cast<uint64_t>(off) + static_cast<uint64_t>(len);
  if ((mode & FALLOC_FL_KEEP_SIZE) || end <= n->size) return (void)fuse_reply_err(req, 0);
  NodeRecord rec = *n;
  if (Status st = fs->cache->Extend(rec, end); !st.ok()) return (void)ReplyStatus(req, st, "fallocate", ino);
  rec.size = end;
  rec.mtime_ns = NowNs();
  auto live = fs->tree.Get(ino);
  if (live.ok() && *live)
    if (Status st = fs->wb->Record({rec}, {FlushEntry(rec.id)}, {rec.id}); !st.ok())
      return (void)ReplyStatus(req, st, "fallocate", ino);
  if (FileHandle* h = HandleOf(fi)) h->rec = rec;
  fuse_reply_err(req, 0);
}

void OpLink(fuse_req_t req, fuse_ino_t, fuse_ino_t, const char*) {
  fuse_reply_err(req, EPERM);  // no hard links in a project (documented)
}

void OpSetxattr(fuse_req_t req, fuse_ino_t, const char*, const char*, size_t, int) {
  fuse_reply_err(req, ENOTSUP);  // no extended attributes (documented)
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st;
  std::memset(&st, 0, sizeof st);
  st.f_bsize = kBlockSize;
  st.f_frsize = kBlockSize;
  st.f_blocks = st.f_bfree = st.f_bavail = uint64_t{1} << 30;
  st.f_files = st.f_ffree = uint64_t{1} << 40;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

void OpGetxattr(fuse_req_t req, fuse_ino_t, const char*, size_t) {
  // No xattrs: ENOSYS makes the kernel stop asking on every ls -l.
  fuse_reply_err(req, ENOSYS);
}

// Loads the tree. Warm (an earlier mount left local state): ready at once,
// directories are read from the local state as they are used. Cold: from
// the snapshot, held whole in memory, and saved to the local state by
// `saver` in the background so the mount does not wait for the disk. Then
// the changes since, in both cases. With local state and no server, the
// mount starts offline.
Status LoadTree(Fs* fs, LocalState* state, std::thread* saver, std::shared_ptr<std::promise<void>> saved,
                std::vector<NodeRecord>* held) {
  ASSIGN_OR_RETURN(std::optional<uint64_t> cursor, state->Cursor());
  std::shared_ptr<const Snapshot> snap;
  if (cursor) {
    fs->tree.StartLazy(*cursor);
    spdlog::info("warm start at seq {} from the local state", *cursor);
  } else {
    auto t0 = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(Snapshot s, fs->client->GetSnapshot());
    snap = std::make_shared<Snapshot>(std::move(s));
    fs->tree.Load(snap);
    spdlog::info("cold start: {} nodes at seq {} from the snapshot in {} ms", snap->nodes.size(), snap->seq,
                 std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  }
  uint64_t since = fs->tree.seq();
  std::vector<NodeRecord> after_snapshot;
  // Nodes with changes of ours still in the journal keep our view: their
  // commits name the version we started from, so a remote change to them
  // comes back as a refusal and both are kept, never as a silent overwrite.
  // Their records are held (`held`, for the remote sync) until those
  // changes are sent, then applied if still newer (a delete elsewhere of a
  // file moved here); the saved cursor stays before the oldest of them.
  std::unordered_set<uint64_t> ours;
  if (cursor) {
    ASSIGN_OR_RETURN(auto pending, state->PendingJournal(std::numeric_limits<uint32_t>::max()));
    for (const auto& e : pending) {
      ours.insert(e.op.id);
      if (e.op.exchange) ours.insert(e.op.exchange);
    }
  }
  uint64_t oldest_held = UINT64_MAX;
  for (;;) {
    auto page = fs->client->Changes(since);
    if (!page.ok()) {
      // (A server failing, 500, is an outage too; a refused token is not.)
      const Code code = page.status().code();
      if (cursor && (code == Code::kUnavailable || code == Code::kInternal)) {
        spdlog::warn("server unreachable or failing ({}); serving the tree saved at seq {}", page.status().message(),
                     since);
        return Status::Ok();
      }
      return page.status();
    }
    uint64_t next = since;
    for (const auto& n : page->items) next = n.seq;
    if (!page->more) next = std::max(next, page->head);
    std::vector<NodeRecord> items;
    for (const auto& n : page->items) {
      if (!ours.count(n.id)) {
        items.push_back(n);
        continue;
      }
      held->push_back(n);
      oldest_held = std::min(oldest_held, n.seq);
    }
    // The local state first: a directory read from it meanwhile agrees.
    if (cursor) RETURN_IF_ERROR(state->ApplyChanges(items, std::min(next, oldest_held - 1)));
    else after_snapshot.insert(after_snapshot.end(), items.begin(), items.end());
    for (const auto& n : items) fs->tree.Apply(n);
    since = next;
    fs->tree.set_seq(since);
    if (!page->more) break;
  }
  if (snap) {
    *saver = std::thread([state, snap, changes = std::move(after_snapshot), since, saved] {
      Status st = state->SaveSnapshot(*snap);
      if (st.ok() && since != snap->seq) st = state->ApplyChanges(changes, since);
      if (st.ok()) spdlog::info("saved {} nodes to the local state", snap->nodes.size());
      else spdlog::error("saving the tree to the local state failed ({}); the next mount starts cold", st.ToString());
      saved->set_value();  // local changes may be recorded from now on
    });
  }
  return Status::Ok();
}

// Where a running mount leaves its pid, so `tidefs unmount` can wait for it:
// $XDG_RUNTIME_DIR/tidefs (else /tmp/tidefs-UID), one file per mountpoint.
// The mountpoint as the kernel names it: the parent resolved, and the last
// name too while it is a symlink (the kernel mounts on its target). The
// mount itself is never asked (it may not be serving yet, or any more):
// readlink() of a directory fails without calling the file system.
// (`follow_links` false: the last name as given, how pid files were named
// before, for mounts an older binary started.)
std::string CanonicalMountpoint(const std::string& mountpoint, bool follow_links = true) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(mountpoint, ec).lexically_normal();
  for (int links = 0;; ++links) {
    if (!p.has_filename()) p = p.parent_path();
    auto parent = std::filesystem::weakly_canonical(p.parent_path(), ec);
    if (!ec) p = parent / p.filename();
    char target[PATH_MAX];
    const ssize_t n = follow_links ? ::readlink(p.c_str(), target, sizeof target) : -1;
    if (n <= 0 || static_cast<size_t>(n) >= sizeof target || links == 40) return p.string();
    std::filesystem::path t(std::string(target, static_cast<size_t>(n)));
    p = (t.is_absolute() ? t : p.parent_path() / t).lexically_normal();
  }
}

std::string PidFile(const std::string& mountpoint, bool follow_links = true) {
  const std::string canon = CanonicalMountpoint(mountpoint, follow_links);
  std::error_code ec;
  const char* run = getenv("XDG_RUNTIME_DIR");
  std::string dir = run && *run ? std::string(run) + "/tidefs" : "/tmp/tidefs-" + std::to_string(getuid());
  std::filesystem::create_directories(dir, ec);
  return dir + "/" + HashBlock(canon.data(), canon.size()).Hex() + ".pid";
}

// The kernel reads ahead at most 128 KiB for a FUSE mount, whatever the
// mount's max_readahead, until its backing device's read_ahead_kb says
// more (only root may): a sequential read then arrived as 128 KiB requests,
// eight times as many round trips as 1 MiB ones (FUSE threads' CPU for a
// cold 1 GiB read: 1.2-1.6 s -> 0.7-0.8 s). The device is found in
// /proc/self/mountinfo: asking the mount itself would wait for a loop that
// has not started. `canon`: the mountpoint as the kernel names it
// (CanonicalMountpoint, which never asks the mount either).
void RaiseReadAhead(const std::string& canon) {
  constexpr const char* kReadAheadKb = "1024";  // one max_read request
  std::ifstream in("/proc/self/mountinfo");
  std::string line, dev;
  auto unescape = [](const std::string& f) {  // mountinfo writes space, tab, newline, \ as \ooo
    std::string out;
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] == '\\' && i + 3 < f.size() && std::isdigit(static_cast<unsigned char>(f[i + 1]))) {
        out += static_cast<char>(std::stoi(f.substr(i + 1, 3), nullptr, 8));
        i += 3;
      } else {
        out += f[i];
      }
    }
    return out;
  };
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string id, parent, majmin, root, point;
    fields >> id >> parent >> majmin >> root >> point;
    const size_t dash = line.find(" - ");
    if (dash == std::string::npos || line.compare(dash + 3, 12, "fuse.tidefs ") != 0) continue;
    if (unescape(point) == canon) dev = majmin;  // the last one: a mount over an older one
  }
  if (dev.empty())
    return spdlog::warn("{} is not in /proc/self/mountinfo: the kernel's read-ahead stays at 128 KiB (sequential "
                        "reads take 8 times as many requests)",
                        canon);
  const std::string path = "/sys/class/bdi/" + dev + "/read_ahead_kb";
  errno = 0;
  std::ofstream out(path);
  out << kReadAheadKb;
  out.flush();
  if (!out) {
    const std::string why = errno ? std::strerror(errno) : "write failed";
    // Only root may; for anyone else this is expected.
    if (geteuid() == 0)
      return spdlog::warn("cannot write {} ({}): the kernel's read-ahead for {} stays at 128 KiB", path, why, canon);
    return spdlog::debug("read-ahead stays at the kernel's 128 KiB: cannot write {} ({}; needs root)", path, why);
  }
  spdlog::debug("read-ahead of {}: {} KiB", canon, kReadAheadKb);
}

// What `tidefs status` prints, as JSON.
// The size the tree gives the file at `path` ("/dir/name"), or 0.
uint64_t LocalSizeOf(Tree& tree, const std::string& path) {
  uint64_t id = kRootId, size = 0;
  size_t at = 1;
  while (at <= path.size()) {
    const size_t slash = std::min(path.find('/', at), path.size());
    auto n = tree.Lookup(id, path.substr(at, slash - at));
    if (!n.ok() || !*n) return 0;
    id = (*n)->id;
    size = (*n)->size;
    at = slash + 1;
  }
  return size;
}

std::string StatusJson(Fs& fs) {
  ChunkCacheStats c = fs.cache->stats();
  nlohmann::json j = {
      {"project", fs.project},
      {"server", fs.server},
      {"server_protocol", fs.client ? fs.client->server_protocol() : 0},  // (0: no answer yet)
      {"cache_dir", fs.cache_dir},
      {"pid", static_cast<long>(getpid())},
      {"seq", fs.tree.seq()},
      {"nodes_in_memory", fs.tree.size()},
      {"journal_pending", fs.wb ? fs.wb->Pending() : 0},
      {"device", fs.device},
      {"ops",
       {{"lookup", fs.n_lookup.load()},
        {"getattr", fs.n_getattr.load()},
        {"readdir", fs.n_readdir.load()},
        {"open", fs.n_open.load()},
        {"read", fs.n_read.load()},
        {"read_bytes", fs.read_bytes.load()},
        {"errors", fs.n_errors.load()}}},
      {"cache",
       {{"bytes", c.cached_bytes},
        {"limit", fs.cache->max_bytes()},
        {"chunks_fetched", c.chunks_fetched},
        {"bytes_fetched", c.bytes_fetched},
        {"chunks_evicted", c.chunks_evicted},
        {"transfers_resumed", c.resumed},
        {"hash_mismatches", c.verify_failures},
        {"failed_fetches", c.fetch_failures},
        {"files_in_memory", c.files_in_memory},
        {"files_let_go", c.files_let_go},
        {"files_prefetched", c.files_prefetched}}},
  };
  if (fs.wb) {
    const WriteBack::UploadCounters u = fs.wb->uploads();
    j["uploads"] = {{"blocks_hashed", u.blocks_hashed},
                    {"blocks_sent", u.blocks_sent},
                    {"bytes_sent", u.bytes_sent},
                    {"blocks_sent_ahead", u.blocks_sent_ahead}};
  }
  if (fs.sync) {
    RemoteSync::Status_ r = fs.sync->Snapshot();
    auto transfers = [](const std::vector<Transfer>& list) {
      return nlohmann::json::parse(TransfersJson(list));
    };
    nlohmann::json others = nlohmann::json::object();
    for (const auto& [dev, list] : r.others) others[dev] = transfers(list);
    j["sync"] = {{"connected", r.connected},   {"cursor", r.cursor},   {"head", r.head},
                 {"checkpoint", r.checkpoint}, {"events", r.events},   {"changes_applied", r.commits_applied},
                 {"polls", r.polls},           {"deferred", r.deferred}};
    // A file sent while it is still written grows after its upload began:
    // the total is what it holds now.
    for (Transfer& t : r.ours)
      if (t.upload) t.total = std::max(t.total, LocalSizeOf(fs.tree, t.path));
    j["transfers"] = transfers(r.ours);
    j["other_devices"] = std::move(others);
  }
  return j.dump(2) + "\n";
}

// Answers `tidefs status` on a unix socket in the cache dir: each
// connection gets the status JSON and is closed.
class StatusServer {
 public:
  StatusServer(Fs* fs, std::string path) : fs_(fs), path_(std::move(path)) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path_.size() >= sizeof addr.sun_path) {
      spdlog::warn("cache dir path too long for the status socket {}; tidefs status will not answer", path_);
      return;
    }
    std::memcpy(addr.sun_path, path_.c_str(), path_.size() + 1);
    ::unlink(path_.c_str());
    fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(fd_, 8) != 0) {
      spdlog::warn("cannot listen on {}: {}; tidefs status will not answer", path_, std::strerror(errno));
      if (fd_ >= 0) ::close(fd_);
      fd_ = -1;
      return;
    }
    thread_ = std::thread([this] {
      NameThread("tidefs-status");
      for (;;) {
        int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (c < 0) {
          if (errno == EINTR) continue;
          return;  // shut down
        }
        std::string out = StatusJson(*fs_);
        (void)!::write(c, out.data(), out.size());
        ::close(c);
      }
    });
  }
  ~StatusServer() {
    if (fd_ < 0) return;
    ::shutdown(fd_, SHUT_RDWR);
    if (thread_.joinable()) thread_.join();
    ::close(fd_);
    ::unlink(path_.c_str());
  }

 private:
  Fs* fs_;
  std::string path_;
  int fd_ = -1;
  std::thread thread_;
};

// The pid file holds "PID\nCACHE_DIR\n".
bool ReadPidFile(const std::string& path, pid_t* pid, std::string* cache_dir) {
  std::ifstream f(path);
  long v = 0;
  if (!(f >> v)) return false;
  *pid = static_cast<pid_t>(v);
  f >> std::ws;
  std::getline(f, *cache_dir);
  return true;
}

// The running mount's pid file (or that of a mount an older binary started
// through a symlink, named after the link).
bool ReadMountPid(const std::string& mountpoint, pid_t* pid, std::string* cache_dir) {
  return ReadPidFile(PidFile(mountpoint), pid, cache_dir) ||
         ReadPidFile(PidFile(mountpoint, /*follow_links=*/false), pid, cache_dir);
}

}  // namespace

Result<std::string> MountStatus(const std::string& mountpoint) {
  pid_t pid = 0;
  std::string cache_dir;
  if (!ReadMountPid(mountpoint, &pid, &cache_dir) || kill(pid, 0) != 0)
    return Status::NotFound("no tidefs mount at " + mountpoint);
  std::string path = cache_dir + "/control.sock";
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) return Status::Invalid("status socket path too long: " + path);
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    std::string err = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return Status::Unavailable("the mount at " + mountpoint + " does not answer on " + path + ": " + err);
  }
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, n);
  }
  ::close(fd);
  return out;
}

Status WaitSynced(const std::string& mountpoint, double timeout_seconds, bool show) {
  const auto start = std::chrono::steady_clock::now();
  auto next_report = start + std::chrono::seconds(1);
  long long shown = -1;
  for (;;) {
    // Asked in this process every few ms: cheap for the mount, and no
    // program started per look (a poll loop of `tidefs status` costs the
    // machine more CPU than the upload it waits for).
    ASSIGN_OR_RETURN(std::string text, MountStatus(mountpoint));
    auto j = nlohmann::json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("journal_pending"))
      return Status::Internal("the mount at " + mountpoint + " answered its status with no journal_pending");
    const long long left = j.value("journal_pending", 0ll);
    if (left == 0) return Status::Ok();
    const auto now = std::chrono::steady_clock::now();
    if (timeout_seconds > 0 && now - start > std::chrono::duration<double>(timeout_seconds))
      return Status::Unavailable(fmt::format("{} changes in {} are still not on the server after {:g} s: the server "
                                             "may be unreachable, or a program may still be writing a file there "
                                             "(`tidefs status {}` shows the connection and what is being sent)",
                                             left, mountpoint, timeout_seconds, mountpoint));
    if (show && now >= next_report) {
      if (left != shown) fprintf(stderr, "sync: %lld changes still to send from %s...\n", left, mountpoint.c_str());
      shown = left;
      next_report = now + std::chrono::seconds(1);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Changes a mount that has exited left in its cache dir for the next one:
// journal entries, and intent-log records not saved in the databases.
uint64_t ChangesLeft(const std::string& cache_dir) {
  uint64_t left = 0, applied = 0;
  if (auto db = Db::Open(cache_dir + "/state.db"); db.ok()) {
    auto q = (*db)->Prepare(
        "SELECT (SELECT count(*) FROM journal), (SELECT value FROM meta WHERE key='applied_ticket')");
    if (q.ok() && q->Step()) {
      left = q->U64(0);
      applied = q->U64(1);
    }
  }
  std::ifstream in(cache_dir + "/intent.log", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& c : DecodeLocalLog(bytes).changes)
    if (c.ticket > applied) left += c.entries.size();
  return left;
}

Status Unmount(const std::string& mountpoint) {
  pid_t pid = 0;
  std::string cache_dir;
  if (!ReadMountPid(mountpoint, &pid, &cache_dir))
    spdlog::info("no tidefs mount process is known for {}: unmounting without waiting for one", mountpoint);
  // (No shell: a quote or a space in the path is just part of it.)
  const std::string target = CanonicalMountpoint(mountpoint);
  const char* argv[] = {"fusermount3", "-u", target.c_str(), nullptr};
  pid_t child = 0;
  if (int err = posix_spawnp(&child, "fusermount3", nullptr, nullptr, const_cast<char* const*>(argv), environ))
    return Status::IoError("cannot run fusermount3 to unmount " + mountpoint + ": " + std::strerror(err) +
                           " (is the fuse3 package installed?)");
  int rc = 0;
  while (waitpid(child, &rc, 0) < 0) {
    if (errno != EINTR) return Status::IoError(std::string("cannot wait for fusermount3: ") + std::strerror(errno));
  }
  if (!WIFEXITED(rc))
    return Status::IoError("fusermount3 died (signal " + std::to_string(WTERMSIG(rc)) + ") unmounting " + mountpoint);
  if (WEXITSTATUS(rc) != 0)
    return Status::IoError("cannot unmount " + mountpoint + " (is it mounted, and is no program using it?)");
  // Wait for the mount's process to send what is left and save its state.
  auto alive = [pid] {
    if (pid <= 0 || kill(pid, 0) != 0) return false;
    std::string stat;
    if (FILE* f = fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r")) {
      char buf[512];
      size_t n = fread(buf, 1, sizeof buf - 1, f);
      fclose(f);
      stat.assign(buf, n);
    }
    auto paren = stat.rfind(')');
    return !(paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] == 'Z');  // a zombie is done
  };
  const auto start = std::chrono::steady_clock::now();
  auto next_report = start + std::chrono::seconds(1);
  long long shown = -1;
  while (alive()) {
    const auto now = std::chrono::steady_clock::now();
    if (now >= next_report) {
      // What is left, from the mount itself (it answers until it exits).
      long long left = -1;
      if (auto st = MountStatus(mountpoint); st.ok()) {
        auto j = nlohmann::json::parse(*st, nullptr, false);
        if (!j.is_discarded()) left = j.value("journal_pending", 0ll);
      }
      if (left != shown) {
        if (left > 0) fprintf(stderr, "unmount: %lld changes still to send from %s...\n", left, mountpoint.c_str());
        else if (shown < 0) fprintf(stderr, "waiting for the mount at %s to finish saving...\n", mountpoint.c_str());
        shown = left;
      }
      next_report = now + std::chrono::seconds(1);
    }
    if (now - start > std::chrono::minutes(10))
      return Status::Unavailable("the mount's process " + std::to_string(pid) + " is still running after 10 minutes");
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (cache_dir.empty()) return Status::Ok();
  // What it left, unless a new mount of the cache dir has already taken
  // it over (its databases are then held, and its journal is what counts).
  // A shared lock keeps one from starting while this counts.
  const std::string lock_path = cache_dir + "/lock";
  int lock = ::open(lock_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (lock >= 0 && ::flock(lock, LOCK_SH | LOCK_NB) != 0) {
    ::close(lock);
    fprintf(stderr, "unmount: %s is in use by a newer mount already; what this one left goes out from there\n",
            cache_dir.c_str());
    return Status::Ok();
  }
  if (uint64_t left = ChangesLeft(cache_dir))
    fprintf(stderr,
            "unmount: %llu changes could not be sent (server unreachable?); they are kept in %s and go out on the "
            "next mount of that cache dir\n",
            static_cast<unsigned long long>(left), cache_dir.c_str());
  if (lock >= 0) ::close(lock);
  return Status::Ok();
}

namespace {

std::string HumanBytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  char buf[32];
  snprintf(buf, sizeof buf, u ? "%.1f %s" : "%.0f %s", b, units[u]);
  return buf;
}

void AppendTransfers(std::string* out, const nlohmann::json& list, const std::string& who) {
  for (const auto& t : list) {
    const double done = t.value("done", 0.0), total = t.value("total", 0.0);
    const int width = 20;
    const int fill = total > 0 ? static_cast<int>(width * done / total) : width;
    std::string bar = "[" + std::string(fill, '#') + std::string(width - fill, '.') + "]";
    char line[512];
    snprintf(line, sizeof line, "  %s%s %s %3.0f%%  %s of %s  %s/s  %s\n", who.c_str(),
             t.value("direction", "") == "up" ? "up  " : "down", bar.c_str(), total > 0 ? 100 * done / total : 100.0,
             HumanBytes(done).c_str(), HumanBytes(total).c_str(), HumanBytes(t.value("rate", 0.0)).c_str(),
             t.value("path", "").c_str());
    *out += line;
  }
}

}  // namespace

std::string FormatStatus(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return text;
  std::string out;
  char line[512];
  snprintf(line, sizeof line, "project %s on %s as device %s (pid %ld)\n", j.value("project", "").c_str(),
           j.value("server", "").c_str(), j.value("device", "").c_str(), j.value("pid", 0L));
  out += line;
  if (const int level = j.value("server_protocol", 0); level != 0 && level < kProtocolLevel) {
    snprintf(line, sizeof line, "server:  speaks protocol %d, older than this mount's %d (no swaps); upgrade it\n",
             level, kProtocolLevel);
    out += line;
  }
  if (j.contains("sync")) {
    const auto& s = j["sync"];
    snprintf(line, sizeof line, "server:  %s; cursor %llu of head %llu, checkpoint %llu\n",
             s.value("connected", false) ? "connected (live events)" : "not connected (polling /changes)",
             static_cast<unsigned long long>(s.value("cursor", 0ull)), static_cast<unsigned long long>(s.value("head", 0ull)),
             static_cast<unsigned long long>(s.value("checkpoint", 0ull)));
    out += line;
  }
  snprintf(line, sizeof line, "journal: %llu changes waiting to be sent\n",
           static_cast<unsigned long long>(j.value("journal_pending", 0ull)));
  out += line;
  if (j.contains("cache")) {
    const auto& c = j["cache"];
    snprintf(line, sizeof line, "cache:   %s of %s\n", HumanBytes(c.value("bytes", 0.0)).c_str(),
             HumanBytes(c.value("limit", 0.0)).c_str());
    out += line;
  }
  const bool ours = j.contains("transfers") && !j["transfers"].empty();
  const bool theirs = j.contains("other_devices") && !j["other_devices"].empty();
  if (ours || theirs) out += "transfers:\n";
  if (ours) AppendTransfers(&out, j["transfers"], "");
  if (theirs)
    for (const auto& [dev, list] : j["other_devices"].items()) AppendTransfers(&out, list, dev + " ");
  return out;
}

std::string DefaultCacheDir(const std::string& project) {
  const char* home = getenv("HOME");
  return std::string(home ? home : "/tmp") + "/.cache/tidefs/" + project;
}

Result<uint64_t> ParseSize(const std::string& text) {
  if (text.empty()) return Status::Invalid("size is empty");
  size_t i = 0;
  uint64_t v = 0;
  while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
    if (v > (uint64_t{1} << 50)) return Status::Invalid("size " + text + " is too large");
    v = v * 10 + (text[i++] - '0');
  }
  if (i == 0) return Status::Invalid("size \"" + text + "\" does not start with a number");
  std::string unit = text.substr(i);
  int shift = 0;
  if (unit == "" || unit == "B") shift = 0;
  else if (unit == "K" || unit == "KiB") shift = 10;
  else if (unit == "M" || unit == "MiB") shift = 20;
  else if (unit == "G" || unit == "GiB") shift = 30;
  else if (unit == "T" || unit == "TiB") shift = 40;
  else return Status::Invalid("size unit \"" + unit + "\" is not one of K, M, G, T");
  if (v > (uint64_t{1} << (62 - shift))) return Status::Invalid("size " + text + " is too large");
  v <<= shift;
  if (v < kChunkSize) return Status::Invalid("cache size " + text + " is below one 4 MiB chunk");
  return v;
}

// The first line of `path`, "" if none.
std::string FirstLine(const std::string& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  return line;
}

// Records `boot` (Linux's boot id) as the one the cache in `dir` was last
// used on: written aside, synced, renamed over, the directory synced (a
// power cut right after a mount must not lose it: the next mount would
// not know to check). Only when it changed: once per boot.
Status SaveBootId(const std::string& dir, const std::string& boot) {
  const std::string path = dir + "/boot_id", tmp = path + ".tmp";
  if (FirstLine(path) == boot) return Status::Ok();
  {
    Fd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
    const std::string line = boot + "\n";
    if (fd.get() < 0 || ::write(fd.get(), line.data(), line.size()) != static_cast<ssize_t>(line.size()) ||
        ::fdatasync(fd.get()) != 0)
      return Status::IoError("cannot write " + tmp + ": " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) return Status::IoError("cannot rename " + tmp + ": " + std::strerror(errno));
  Fd d(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (d.get() < 0 || ::fsync(d.get()) != 0) return Status::IoError("cannot sync " + dir + ": " + std::strerror(errno));
  return Status::Ok();
}

// One mount per cache dir (its databases are held exclusively): an flock
// on DIR/lock, held until the process exits. A mount that just unmounted
// may still be saving: wait for it a little, then say what is wrong.
Result<int> LockCacheDir(const std::string& dir) {
  const std::string path = dir + "/lock";
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::IoError("cannot open " + path + ": " + std::strerror(errno));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK || std::chrono::steady_clock::now() > deadline) {
      int err = errno;
      ::close(fd);
      if (err != EWOULDBLOCK) return Status::IoError("cannot lock " + path + ": " + std::strerror(err));
      return Status::Invalid("cache dir " + dir + " is in use by another tidefs mount; unmount that one first or pass another --cache-dir");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return fd;
}

Status RunMount(const MountOptions& opts) {
  TuneMallocForLargeBuffers();
  ApiClient client(opts.client);
  // The cache reads through its own connections and tries each exchange
  // once: it tries again itself until the retry period ends, and gives up
  // on a server that stops sending for that long (no read waits longer).
  ClientOptions read_opts = opts.client;
  read_opts.retries = 0;
  // (At least a second: the watch counts body bytes only, so a shorter
  // limit fails a healthy server's every first answer over a real network.)
  read_opts.stall_ms = std::max<long>(1000, std::lround(opts.retry_seconds * 1000));
  ApiClient reads(read_opts);
  std::string cache_dir = opts.cache_dir;
  if (cache_dir.empty()) cache_dir = DefaultCacheDir(opts.client.project);
  cache_dir = std::filesystem::absolute(cache_dir).lexically_normal().string();
  std::error_code ec;
  std::filesystem::create_directories(cache_dir, ec);
  if (ec) return Status::IoError("cannot create cache dir " + cache_dir + ": " + ec.message());
  ASSIGN_OR_RETURN(int lock_fd, LockCacheDir(cache_dir));
  const Fd close_lock(lock_fd);
  ASSIGN_OR_RETURN(auto state, LocalState::Open(cache_dir + "/state.db", opts.client.project));
  Fs fs(&client, state.get());
  fs.state = state.get();
  fs.project = opts.client.project;
  fs.server = opts.client.server;
  fs.cache_dir = cache_dir;
  std::thread saver;
  struct Joiner {
    std::thread* t;
    ~Joiner() {
      if (t->joinable()) t->join();
    }
  } join_saver{&saver};
  auto saved = std::make_shared<std::promise<void>>();
  std::shared_future<void> state_ready = saved->get_future().share();
  std::vector<NodeRecord> held;  // remote changes to nodes our journal names
  RETURN_IF_ERROR(LoadTree(&fs, state.get(), &saver, saved, &held));
  const bool warm = !saver.joinable();
  if (warm) saved->set_value();
  spdlog::info("loaded {} nodes of project {} at seq {}", fs.tree.size(), opts.client.project, fs.tree.seq());
  ChunkCacheOptions co;
  co.max_bytes = opts.cache_bytes;
  co.retry_for = std::chrono::milliseconds(static_cast<int64_t>(opts.retry_seconds * 1000));
  // Files an earlier mount changed and did not send yet keep their bytes.
  // (A journal implies saved state: a cold mount has none.)
  if (warm) {
    ASSIGN_OR_RETURN(auto pending, state->PendingJournal(std::numeric_limits<uint32_t>::max()));
    for (const auto& e : pending)
      if (e.flush || e.op.type == OpType::kCreate) co.local.insert(e.op.id);
    if (!pending.empty()) spdlog::info("{} changes from an earlier mount wait in the journal; sending them", pending.size());
    // Their size is their cache file's: a mount that died between a write
    // and the record of its size (a created file's later writes are
    // recorded at release) must not show, nor append at, the older one.
    for (uint64_t id : co.local) {
      auto n = fs.tree.Get(id);
      struct stat st;
      if (!n.ok() || !*n || (*n)->kind != NodeKind::kFile ||
          ::stat((cache_dir + "/data/" + std::to_string(id)).c_str(), &st) != 0 ||
          static_cast<uint64_t>(st.st_size) == (*n)->size)
        continue;
      NodeRecord rec = **n;
      spdlog::info("node {}: size {} from its cache file (the journal said {})", id, st.st_size, rec.size);
      rec.size = static_cast<uint64_t>(st.st_size);
      fs.tree.Apply(rec);
    }
  }
  // A power cut loses what was in the page cache only: on the same boot as
  // the last mount, cached bytes are as that mount left them.
  // (A file, not a row of state.db: a cold mount's save of the snapshot
  // holds that database for a while, and this is on the way to ready.)
  const std::string boot = FirstLine("/proc/sys/kernel/random/boot_id");
  if (warm && !co.local.empty() && !boot.empty()) {
    const std::string last = FirstLine(cache_dir + "/boot_id");
    if (!last.empty() && last != boot) {
      spdlog::info("the machine restarted since the last mount: checking the cached blocks of {} changed files",
                   co.local.size());
      if (Status st = ChunkCache::CheckLocalAfterReboot(cache_dir, state.get(), co.local); !st.ok())
        return Status(st.code(), "checking the cache in " + cache_dir + " after a restart: " + st.message() +
                                     " (nothing was sent; free space or fix the disk, then mount again)");
    }
  }
  co.on_fetched = [&fs](const NodeRecord& n, uint64_t bytes) {
    RemoteSync* sync = fs.live_sync;
    if (sync) sync->AddDownloaded(fs.tree.PathOf(n.id), bytes, n.size);
  };
  fs.cache = std::make_unique<ChunkCache>(cache_dir, &reads, state.get(), co);
  if (!boot.empty())
    if (Status st = SaveBootId(cache_dir, boot); !st.ok())
      spdlog::warn("{} (after a power cut, the next mount would not know to check the cache)", st.ToString());
  // A file fetched ahead is what the tree says when its turn comes.
  fs.cache->set_node_lookup([&fs](uint64_t id) -> std::optional<NodeRecord> {
    auto n = fs.tree.Get(id);
    if (!n.ok() || !*n || (*n)->deleted) return std::nullopt;
    return **n;
  });
  // The token names the device: the server files our commits, progress and
  // checkpoint under it. Offline, the flag or the host name stands in.
  auto caller = client.WhoAmI();
  fs.device = opts.device;
  if (caller.ok()) {
    if (!fs.device.empty() && fs.device != caller->device)
      spdlog::warn("--device {} is not the token's device; using {}", fs.device, caller->device);
    fs.device = caller->device;
  }
  if (fs.device.empty()) {
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    fs.device = host[0] ? host : "this device";
  }
  fs.wb = std::make_unique<WriteBack>(&client, state.get(), &fs.tree, fs.cache.get(), fs.device, state_ready);
  auto is_open = [&fs](uint64_t id) {
    std::lock_guard lock(fs.meta_mu);
    return fs.open_count.count(id) > 0;
  };
  fs.wb->set_is_open(is_open);
  fs.wb->set_send_ahead(opts.send_ahead);
  fs.wb->set_hold([&fs](uint64_t id, bool may_hold) {
    std::lock_guard lock(fs.meta_mu);
    auto it = fs.unsent.find(id);
    if (it == fs.unsent.end()) return false;
    Fs::Unsent& u = it->second;
    const int64_t now = SteadyNs();
    if (may_hold && u.writers > 0 && now - u.last_write < kWriteIdleNs && now - u.queued_at < kMaxHoldNs) return true;
    // This flush takes every write so far; a later one queues another.
    u.queued = false;
    if (u.writers <= 0) fs.unsent.erase(it);
    return false;
  });
  {
    RemoteSync::Deps d;
    d.client = &client;
    d.state = state.get();
    d.tree = &fs.tree;
    d.cache = fs.cache.get();
    d.meta_mu = &fs.meta_mu;
    d.keep_if_open = [&fs](const NodeRecord& n) {
      std::lock_guard lock(fs.meta_mu);
      if (!fs.open_count.count(n.id)) return false;
      if (n.kind == NodeKind::kFile) fs.orphans.try_emplace(n.id, n);  // (fstat answers from it)
      return true;
    };
    d.has_local_changes = [&fs](uint64_t id) { return fs.wb->HasPending(id) || fs.cache->IsLocal(id); };
    d.device = fs.device;
    d.ready = state_ready;
    // From the subscriber thread, never under a lock a FUSE request needs.
    d.kernel.inval_entry = [&fs](uint64_t parent, const std::string& name) { fs.drops.Entry(parent, name); };
    d.kernel.deleted = [&fs](uint64_t parent, uint64_t child, const std::string& name) {
      fs.drops.Deleted(parent, child, name);
    };
    d.kernel.inval_inode = [&fs](uint64_t ino, int64_t off, int64_t len) { fs.drops.Inode(ino, off, len); };
    d.kernel.inval_listing = [&fs](uint64_t dir) { fs.drops.Listing(dir); };
    fs.sync = std::make_unique<RemoteSync>(std::move(d));
    fs.sync->Hold(std::move(held));
    fs.live_sync = fs.sync.get();
  }
  fs.wb->set_invalidate([&fs](uint64_t id) { fs.drops.Inode(id, 0, 0); });
  fs.wb->set_invalidate_listing([&fs](uint64_t dir) { fs.drops.Listing(dir); });
  fs.wb->set_invalidate_entry([&fs](uint64_t parent, const std::string& name) { fs.drops.Entry(parent, name); });
  fs.wb->set_progress([&fs](const std::string& path, uint64_t done, uint64_t total, double rate, bool end) {
    if (end) fs.sync->EndTransfer(true, path);
    else fs.sync->SetTransfer(Transfer{path, true, done, total, rate});
  });

  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.getattr = OpGetattr;
  ops.readlink = OpReadlink;
  ops.opendir = OpOpendir;
  ops.readdir = OpReaddir;
  ops.readdirplus = OpReaddirplus;
  ops.releasedir = OpReleasedir;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.statfs = OpStatfs;
  ops.getxattr = OpGetxattr;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.fsync = OpFsync;
  ops.release = OpRelease;
  ops.create = OpCreate;
  ops.mknod = OpMknod;
  ops.mkdir = OpMkdir;
  ops.symlink = OpSymlink;
  ops.unlink = OpUnlink;
  ops.rmdir = OpRmdir;
  ops.rename = OpRename;
  ops.setattr = OpSetattr;
  ops.fallocate = OpFallocate;
  ops.link = OpLink;
  ops.setxattr = OpSetxattr;

  std::string fsname = "fsname=tidefs:" + opts.client.project;
  std::vector<const char*> argv = {"tidefs", "-o", fsname.c_str(), "-o", "subtype=tidefs", "-o", "default_permissions",
                                   "-o", kFuseMaxReadOption};
  // A read-only token gives a read-only mount: the kernel answers EROFS
  // rather than the journal keeping changes the server will refuse.
  if (caller.ok() && caller->read_only) {
    argv.push_back("-o");
    argv.push_back("ro");
  }
  if (getuid() == 0) {
    argv.push_back("-o");
    argv.push_back("allow_other");
  }
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), const_cast<char**>(argv.data()));
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &fs);
  if (!se) return Status::Internal("fuse_session_new failed");
  struct SessionGuard {
    fuse_session* se;
    bool mounted = false;
    ~SessionGuard() {
      fuse_remove_signal_handlers(se);
      if (mounted) fuse_session_unmount(se);
      fuse_session_destroy(se);
    }
  } guard{se};
  if (fuse_set_signal_handlers(se) != 0) return Status::Internal("cannot install signal handlers");
  // Named before mounting: resolving the path afterwards would ask this
  // very mount, which is not serving yet.
  std::string pid_file = PidFile(opts.mountpoint);
  const std::string kernel_name = CanonicalMountpoint(opts.mountpoint);
  if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0)
    return Status::IoError("cannot mount at " + opts.mountpoint + " (is it an empty directory, and is /dev/fuse there?)");
  guard.mounted = true;
  RaiseReadAhead(kernel_name);
  fs.se = se;
  fs.sync->Start();
  struct SyncStopper {
    RemoteSync* sync;
    ~SyncStopper() { sync->Stop(); }
  } stop_sync{fs.sync.get()};
  // (A background mount forked before it began: this is its final pid.)
  if (FILE* f = fopen(pid_file.c_str(), "w")) {
    fprintf(f, "%ld\n%s\n", static_cast<long>(getpid()), cache_dir.c_str());
    fclose(f);
  }
  struct PidFileGuard {
    std::string path;
    ~PidFileGuard() { ::unlink(path.c_str()); }
  } pid_guard{pid_file};
  StatusServer status_server(&fs, cache_dir + "/control.sock");
  // Only now: `tidefs status` right after `tidefs mount` returns must
  // find the pid file and the status socket (it found a previous mount's
  // socket, or none, and failed).
  if (opts.on_ready) opts.on_ready();
  fuse_loop_config cfg = FuseLoopConfig();
  int rc = fuse_session_loop_mt(se, &cfg);
  // No more kernel notifications: nobody answers requests now, and an
  // invalidation waiting on a lock one of them holds would never return.
  fs.se = nullptr;
  fs.drops.Stop();  // before the session goes (SessionGuard)
  // Unmounted (or told to stop): every change goes to the server first.
  if (uint64_t left = fs.wb->Pending()) spdlog::info("unmount: sending {} changes to the server", left);
  Status drained = fs.wb->Drain(std::chrono::seconds(static_cast<int64_t>(std::ceil(opts.send_patience_seconds))));
  if (!drained.ok()) spdlog::warn("unmount: {}", drained.message());
  else spdlog::info("unmount: every change is on the server");
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP) return Status::IoError("FUSE loop ended with error " + std::to_string(rc));
  return Status::Ok();
}

}  // namespace tidefs
