// The FUSE adapter: one small function per operation, translating kernel
// requests into calls on the Tree and the ChunkCache. It holds no policy.
#define FUSE_USE_VERSION 35
#include "mount/fuse_mount.h"

#include <fuse_lowlevel.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include <spdlog/spdlog.h>

#include "cache/chunk_cache.h"
#include "client/local_state.h"
#include "core/memory.h"
#include "mount/tree.h"

namespace tidefs {
namespace {

// The kernel keeps entries and attributes this long; changes made elsewhere
// are pushed by invalidation (the real-time issue), not found by expiry.
constexpr double kAttrTimeout = 3600;

struct Fs {
  ApiClient* client;
  Tree tree;
  std::unique_ptr<ChunkCache> cache;
  uid_t uid = getuid();
  gid_t gid = getgid();
};

Fs* Self(fuse_req_t req) { return static_cast<Fs*>(fuse_req_userdata(req)); }

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
  st->st_blksize = kBlockSize;
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

void OpInit(void*, fuse_conn_info* conn) {
  // Large requests and kernel read-ahead: sequential reads arrive as 1 MiB
  // requests and keep several in flight while chunks stream in.
  conn->max_read = 1u << 20;  // matches -o max_read
  conn->max_readahead = 4u << 20;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Fs* fs = Self(req);
  auto n = fs->tree.Lookup(parent, name);
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
  auto n = fs->tree.Get(ino);
  if (!n) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  FillStat(*fs, *n, &st);
  fuse_reply_attr(req, &st, kAttrTimeout);
}

void OpReadlink(fuse_req_t req, fuse_ino_t ino) {
  auto n = Self(req)->tree.Get(ino);
  if (!n) return (void)fuse_reply_err(req, ENOENT);
  if (n->kind != NodeKind::kSymlink) return (void)fuse_reply_err(req, EINVAL);
  fuse_reply_readlink(req, n->target.c_str());
}

// A directory handle holds the listing taken at opendir, so offsets stay
// stable while it is read.
struct DirHandle {
  std::vector<NodeRecord> entries;
};

void OpOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Fs* fs = Self(req);
  auto n = fs->tree.Get(ino);
  if (!n) return (void)fuse_reply_err(req, ENOENT);
  if (n->kind != NodeKind::kDir) return (void)fuse_reply_err(req, ENOTDIR);
  auto* h = new DirHandle{fs->tree.Children(ino)};
  fi->fh = reinterpret_cast<uint64_t>(h);
  fi->cache_readdir = 1;
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi, bool plus) {
  Fs* fs = Self(req);
  auto* h = reinterpret_cast<DirHandle*>(fi->fh);
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
      auto self = fs->tree.Get(ino);
      st.st_ino = self && self->parent ? self->parent : ino;
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

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto n = Self(req)->tree.Get(ino);
  if (!n) return (void)fuse_reply_err(req, ENOENT);
  if (n->kind == NodeKind::kDir) return (void)fuse_reply_err(req, EISDIR);
  // Read-only for now: writes come with the journal.
  if ((fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC)) return (void)fuse_reply_err(req, EROFS);
  fi->keep_cache = 1;  // the kernel's page cache stays valid until told otherwise
  fuse_reply_open(req, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Fs* fs = Self(req);
  auto n = fs->tree.Get(ino);
  if (!n) return (void)fuse_reply_err(req, ENOENT);
  auto p = fs->cache->Pin(*n, static_cast<uint64_t>(off), size);
  if (!p.ok()) {
    spdlog::error("read of node {} at {} failed: {}", ino, off, p.status().ToString());
    return (void)fuse_reply_err(req, EIO);  // unreachable server or bad bytes: EIO, never wrong data
  }
  if (p->len == 0) return (void)fuse_reply_buf(req, nullptr, 0);
  // Hand the kernel the cache file's range; libfuse splices it when it can.
  fuse_bufvec buf = FUSE_BUFVEC_INIT(p->len);
  buf.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
  buf.buf[0].fd = p->fd;
  buf.buf[0].pos = static_cast<off_t>(p->off);
  fuse_reply_data(req, &buf, FUSE_BUF_SPLICE_MOVE);
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

// Loads the tree: from the local state when an earlier mount left one
// (warm), else from the snapshot (cold); then the changes since its seq.
// With local state and no server, the mount starts offline.
Status LoadTree(Fs* fs, LocalState* state) {
  ASSIGN_OR_RETURN(std::optional<Snapshot> saved, state->Load());
  if (saved) {
    fs->tree.Load(*saved);
    spdlog::info("warm start: {} nodes at seq {} from local state", saved->nodes.size(), saved->seq);
  } else {
    ASSIGN_OR_RETURN(Snapshot snap, fs->client->GetSnapshot());
    RETURN_IF_ERROR(state->SaveSnapshot(snap));
    fs->tree.Load(snap);
  }
  uint64_t since = fs->tree.seq();
  for (;;) {
    auto page = fs->client->Changes(since);
    if (!page.ok()) {
      if (saved && page.status().code() == Code::kUnavailable) {
        spdlog::warn("server unreachable ({}); serving the tree saved at seq {}", page.status().message(), since);
        return Status::Ok();
      }
      return page.status();
    }
    for (const auto& n : page->items) {
      fs->tree.Apply(n);
      since = n.seq;
    }
    if (!page->more) since = std::max(since, page->head);
    RETURN_IF_ERROR(state->ApplyChanges(page->items, since));
    fs->tree.set_seq(since);
    if (!page->more) return Status::Ok();
  }
}

}  // namespace

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

Status RunMount(const MountOptions& opts) {
  TuneMallocForLargeBuffers();
  ApiClient client(opts.client);
  Fs fs;
  fs.client = &client;
  std::string cache_dir = opts.cache_dir;
  if (cache_dir.empty()) cache_dir = DefaultCacheDir(opts.client.project);
  std::error_code ec;
  std::filesystem::create_directories(cache_dir, ec);
  if (ec) return Status::IoError("cannot create cache dir " + cache_dir + ": " + ec.message());
  ASSIGN_OR_RETURN(auto state, LocalState::Open(cache_dir + "/state.db", opts.client.project));
  RETURN_IF_ERROR(LoadTree(&fs, state.get()));
  spdlog::info("loaded {} nodes of project {} at seq {}", fs.tree.size(), opts.client.project, fs.tree.seq());
  fs.cache = std::make_unique<ChunkCache>(cache_dir, &client, state.get(), opts.cache_bytes, /*readahead_chunks=*/8,
                                          /*threads=*/8);

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

  std::string fsname = "fsname=tidefs:" + opts.client.project;
  // Read-only until the write-back journal lands: the kernel answers EROFS.
  std::vector<const char*> argv = {"tidefs", "-o", fsname.c_str(), "-o", "subtype=tidefs", "-o", "default_permissions",
                                   "-o", "ro", "-o", "max_read=1048576"};
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
  if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0)
    return Status::IoError("cannot mount at " + opts.mountpoint + " (is it an empty directory, and is /dev/fuse there?)");
  guard.mounted = true;
  if (opts.on_ready) opts.on_ready();
  fuse_loop_config cfg{};
  cfg.clone_fd = 0;
  cfg.max_idle_threads = 16;
  int rc = fuse_session_loop_mt(se, &cfg);
  if (rc != 0 && rc != SIGTERM && rc != SIGINT && rc != SIGHUP) return Status::IoError("FUSE loop ended with error " + std::to_string(rc));
  return Status::Ok();
}

}  // namespace tidefs
