// fuse_floor: the fastest a FUSE file system can be on this machine, as a
// baseline for the mount benchmarks. It keeps the tree in memory, throws
// written bytes away (sizes are kept), and answers reads of one preset file
// from a reused buffer: no network, no disk, no hashing. It uses the same
// libfuse session settings as `tidefs mount` (low-level API, multi-threaded
// loop, default_permissions, 1 MiB max_read/max_write, 4 MiB read-ahead,
// keep_cache, splice), so what it measures is what the kernel's round trips
// and page cache cost, which any FUSE design pays.
//
// Usage: tidefs_fuse_floor MOUNTPOINT [BIG_FILE_BYTES]
//   The root holds "big" of BIG_FILE_BYTES (default 1 GiB) of fixed
//   pseudo-random bytes; anything may be created beside it. Runs in the
//   foreground until unmounted (fusermount3 -u MOUNTPOINT).
//
// FLOOR_PASSTHROUGH=DIR (root, kernel 6.9+): files created are backed by a
//   file in DIR each and opened with FUSE passthrough, so their reads and
//   writes go to that file without a round trip. libfuse 3.14 cannot ask
//   for passthrough, so the two protocol fields it lacks are set in its
//   replies on their way to the kernel (a custom writev, below): the INIT
//   reply's FUSE_PASSTHROUGH flag and max_stack_depth, and the open reply's
//   FOPEN_PASSTHROUGH flag and backing id. This answers "what would
//   passthrough buy", nothing more (docs/benchmarks.md).
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#include "mount/fuse_settings.h"
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr double kTimeout = 3600.0;
size_t kPattern = 1u << 20;  // FLOOR_PATTERN_MB: bytes served cycle through this much memory

// Passthrough (FUSE 7.40), from the kernel's uapi header: Debian 12's
// libfuse 3.14 ships 7.38.
struct BackingMap {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
constexpr unsigned long kBackingOpen = _IOW(229, 1, BackingMap);  // FUSE_DEV_IOC_BACKING_OPEN
constexpr uint32_t kInitPassthroughFlags2 = 1u << 5;              // FUSE_PASSTHROUGH (1ULL << 37) in flags2
constexpr size_t kInitFlags2At = 32, kInitStackDepthAt = 36;       // in fuse_init_out
constexpr uint32_t kOpenPassthrough = 1u << 7;                     // FOPEN_PASSTHROUGH
const char* g_backing_dir = nullptr;
int g_dev_fd = -1;
// What the reply this thread sends next must carry (set right before it).
thread_local bool tls_init_reply = false;
thread_local int32_t tls_backing_id = 0;

// libfuse hands every reply here; the INIT and open replies are patched.
ssize_t PassthroughWritev(int fd, iovec* iov, int count, void*) {
  thread_local char patched[256];
  if ((tls_init_reply || tls_backing_id) && count >= 2 && iov[count - 1].iov_len <= sizeof patched) {
    const size_t len = iov[count - 1].iov_len;
    std::memcpy(patched, iov[count - 1].iov_base, len);
    if (tls_init_reply && len >= kInitStackDepthAt + 4) {
      uint32_t flags2, depth = 1;
      std::memcpy(&flags2, patched + kInitFlags2At, 4);
      flags2 |= kInitPassthroughFlags2;
      std::memcpy(patched + kInitFlags2At, &flags2, 4);
      std::memcpy(patched + kInitStackDepthAt, &depth, 4);
      tls_init_reply = false;
    } else if (tls_backing_id && len >= 16) {  // fuse_open_out ends the reply: fh, open_flags, backing_id
      uint32_t open_flags;
      std::memcpy(&open_flags, patched + len - 8, 4);
      open_flags |= kOpenPassthrough;
      std::memcpy(patched + len - 8, &open_flags, 4);
      std::memcpy(patched + len - 4, &tls_backing_id, 4);
    }
    iov[count - 1].iov_base = patched;
  }
  return ::writev(fd, iov, count);
}
ssize_t PlainRead(int fd, void* buf, size_t len, void*) { return ::read(fd, buf, len); }
ssize_t PlainSplice(int in, off_t* in_off, int out, off_t* out_off, size_t len, unsigned flags, void*) {
  return ::splice(in, in_off, out, out_off, len, flags);
}

struct Node {
  mode_t mode = 0;
  uint64_t size = 0;
  uint64_t nlookup = 0;
  std::map<std::string, fuse_ino_t> children;
  timespec mtime{};
  int32_t backing_id = 0;  // FLOOR_PASSTHROUGH: the file behind it
};

struct Floor {
  std::mutex mu;
  std::vector<Node> nodes;  // index = inode; 0 unused
  std::vector<char> pattern;
};

Floor* Self(fuse_req_t req) { return static_cast<Floor*>(fuse_req_userdata(req)); }

void FillStat(fuse_ino_t ino, const Node& n, struct stat* st) {
  std::memset(st, 0, sizeof *st);
  st->st_ino = ino;
  st->st_mode = n.mode;
  st->st_nlink = S_ISDIR(n.mode) ? 2 : 1;
  st->st_uid = getuid();
  st->st_gid = getgid();
  st->st_size = static_cast<off_t>(n.size);
  struct stat backing;  // (written past us: the backing file has the size)
  if (n.backing_id && ::stat((std::string(g_backing_dir) + "/" + std::to_string(ino)).c_str(), &backing) == 0)
    st->st_size = backing.st_size;
  st->st_blksize = 1 << 20;
  st->st_blocks = static_cast<blkcnt_t>((n.size + 511) / 512);
  st->st_mtim = st->st_ctim = st->st_atim = n.mtime;
}

fuse_entry_param Entry(Floor* f, fuse_ino_t ino) {
  fuse_entry_param e;
  std::memset(&e, 0, sizeof e);
  e.ino = ino;
  e.generation = 1;
  e.attr_timeout = e.entry_timeout = kTimeout;
  f->nodes[ino].nlookup++;
  FillStat(ino, f->nodes[ino], &e.attr);
  return e;
}

void ReplyEntry(fuse_req_t req, Floor* f, fuse_ino_t ino) {
  fuse_entry_param e = Entry(f, ino);
  fuse_reply_entry(req, &e);
}

void OpInit(void*, fuse_conn_info* conn) {
  tidefs::TuneFuseConnection(conn);
  tls_init_reply = g_backing_dir != nullptr;
  if (getenv("FLOOR_WBC")) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
}

void OpLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  auto& kids = f->nodes[parent].children;
  auto it = kids.find(name);
  if (it == kids.end()) {
    fuse_entry_param e;
    std::memset(&e, 0, sizeof e);
    e.entry_timeout = kTimeout;  // a negative entry, as the mount answers
    fuse_reply_entry(req, &e);
    return;
  }
  ReplyEntry(req, f, it->second);
}

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  struct stat st;
  FillStat(ino, f->nodes[ino], &st);
  fuse_reply_attr(req, &st, kTimeout);
}

void OpSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  Node& n = f->nodes[ino];
  if (to_set & FUSE_SET_ATTR_MODE) n.mode = (n.mode & S_IFMT) | (attr->st_mode & 07777);
  if (to_set & FUSE_SET_ATTR_SIZE) n.size = static_cast<uint64_t>(attr->st_size);
  if (to_set & FUSE_SET_ATTR_MTIME) n.mtime = attr->st_mtim;
  struct stat st;
  FillStat(ino, n, &st);
  fuse_reply_attr(req, &st, kTimeout);
}

fuse_ino_t AddNode(Floor* f, fuse_ino_t parent, const char* name, mode_t mode) {
  Node n;
  n.mode = mode;
  clock_gettime(CLOCK_REALTIME, &n.mtime);
  f->nodes.push_back(std::move(n));
  fuse_ino_t ino = f->nodes.size() - 1;
  f->nodes[parent].children[name] = ino;
  return ino;
}

void OpMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  if (f->nodes[parent].children.count(name)) return (void)fuse_reply_err(req, EEXIST);
  ReplyEntry(req, f, AddNode(f, parent, name, S_IFDIR | (mode & 07777)));
}

void OpCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  auto& kids = f->nodes[parent].children;
  fuse_ino_t ino;
  if (auto it = kids.find(name); it != kids.end()) {
    if (fi->flags & O_EXCL) return (void)fuse_reply_err(req, EEXIST);
    ino = it->second;
  } else {
    ino = AddNode(f, parent, name, S_IFREG | (mode & 07777));
  }
  fi->keep_cache = 1;
  fi->noflush = 1;
  fuse_entry_param e = Entry(f, ino);
  if (g_backing_dir && !f->nodes[ino].backing_id) {
    const std::string path = std::string(g_backing_dir) + "/" + std::to_string(ino);
    int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    BackingMap map{fd, 0, 0};
    const int id = fd < 0 ? -1 : ::ioctl(g_dev_fd, kBackingOpen, &map);
    if (fd >= 0) ::close(fd);  // (the kernel holds the file)
    if (id <= 0) {
      std::fprintf(stderr, "fuse_floor: no passthrough for %s: %s\n", path.c_str(), std::strerror(errno));
      return (void)fuse_reply_err(req, EIO);
    }
    f->nodes[ino].backing_id = id;
  }
  tls_backing_id = f->nodes[ino].backing_id;
  if (tls_backing_id) fi->keep_cache = 0;  // (the kernel refuses passthrough with it: EIO)
  fuse_reply_create(req, &e, fi);
  tls_backing_id = 0;
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  if (fi->flags & O_TRUNC) f->nodes[ino].size = 0;
  fi->keep_cache = 1;
  tls_backing_id = f->nodes[ino].backing_id;
  if (tls_backing_id) fi->keep_cache = 0;
  fuse_reply_open(req, fi);
  tls_backing_id = 0;
}

void OpRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Floor* f = Self(req);
  uint64_t file_size;
  {
    std::lock_guard lock(f->mu);
    file_size = f->nodes[ino].size;
  }
  uint64_t o = static_cast<uint64_t>(off);
  if (o >= file_size) return (void)fuse_reply_buf(req, nullptr, 0);
  size_t n = static_cast<size_t>(std::min<uint64_t>(size, file_size - o));
  n = std::min(n, kPattern);  // max_read is 1 MiB, at most the pattern's size
  size_t start = static_cast<size_t>(o % kPattern);
  if (start + n <= kPattern) return (void)fuse_reply_buf(req, f->pattern.data() + start, n);
  iovec iov[2] = {{f->pattern.data() + start, kPattern - start},
                  {f->pattern.data(), n - (kPattern - start)}};
  fuse_reply_iov(req, iov, 2);
}

void OpWrite(fuse_req_t req, fuse_ino_t ino, const char*, size_t size, off_t off, fuse_file_info*) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  Node& n = f->nodes[ino];
  n.size = std::max<uint64_t>(n.size, static_cast<uint64_t>(off) + size);
  fuse_reply_write(req, size);
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }
void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpForget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Floor* f = Self(req);
  {
    std::lock_guard lock(f->mu);
    f->nodes[ino].nlookup -= std::min(nlookup, f->nodes[ino].nlookup);
  }
  fuse_reply_none(req);
}

void OpReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info*) {
  Floor* f = Self(req);
  std::lock_guard lock(f->mu);
  std::vector<char> buf(size);
  size_t used = 0;
  off_t i = 0;
  for (const auto& [name, child] : f->nodes[ino].children) {
    if (i++ < off) continue;
    struct stat st;
    FillStat(child, f->nodes[child], &st);
    size_t need = fuse_add_direntry(req, buf.data() + used, size - used, name.c_str(), &st, i);
    if (need > size - used) break;
    used += need;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs sv;
  std::memset(&sv, 0, sizeof sv);
  sv.f_bsize = sv.f_frsize = 4096;
  sv.f_blocks = sv.f_bfree = sv.f_bavail = 1ull << 30;
  sv.f_files = sv.f_ffree = 1ull << 30;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || argc > 3) {
    std::fprintf(stderr, "usage: %s MOUNTPOINT [BIG_FILE_BYTES]\n", argv[0]);
    return 2;
  }
  uint64_t big = 1ull << 30;
  if (argc == 3) {
    char* end = nullptr;
    big = std::strtoull(argv[2], &end, 10);
    if (!end || *end) {
      std::fprintf(stderr, "fuse_floor: BIG_FILE_BYTES must be a number of bytes, got '%s'\n",
                   argv[2]);
      return 2;
    }
  }
  Floor floor;
  uint64_t x = 0x9e3779b97f4a7c15ull;
  if (const char* mb = getenv("FLOOR_PATTERN_MB")) kPattern = std::max<size_t>(1, std::strtoull(mb, nullptr, 10)) << 20;
  floor.pattern.resize(kPattern);
  for (size_t i = 0; i < kPattern; i += 8) {  // xorshift: incompressible, fixed
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    std::memcpy(floor.pattern.data() + i, &x, 8);
  }
  floor.nodes.resize(2);
  floor.nodes[FUSE_ROOT_ID].mode = S_IFDIR | 0755;
  clock_gettime(CLOCK_REALTIME, &floor.nodes[FUSE_ROOT_ID].mtime);
  fuse_ino_t big_ino = AddNode(&floor, FUSE_ROOT_ID, "big", S_IFREG | 0644);
  floor.nodes[big_ino].size = big;

  fuse_lowlevel_ops ops{};
  ops.init = OpInit;
  ops.lookup = OpLookup;
  ops.forget = OpForget;
  ops.getattr = OpGetattr;
  ops.setattr = OpSetattr;
  ops.mkdir = OpMkdir;
  ops.create = OpCreate;
  ops.open = OpOpen;
  ops.read = OpRead;
  ops.write = OpWrite;
  ops.flush = OpFlush;
  ops.release = OpRelease;
  ops.readdir = OpReaddir;
  ops.statfs = OpStatfs;

  std::vector<const char*> args_v = {"tidefs_fuse_floor", "-o", "fsname=floor", "-o",
                                     tidefs::kFuseMaxReadOption};
  if (!getenv("FLOOR_NO_DP")) {
    args_v.push_back("-o");
    args_v.push_back("default_permissions");
  }
  if (getuid() == 0) {
    args_v.push_back("-o");
    args_v.push_back("allow_other");
  }
  fuse_args args =
      FUSE_ARGS_INIT(static_cast<int>(args_v.size()), const_cast<char**>(args_v.data()));
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &floor);
  if (!se) return 1;
  if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, argv[1]) != 0) {
    std::fprintf(stderr, "fuse_floor: cannot mount at %s\n", argv[1]);
    fuse_session_destroy(se);
    return 1;
  }
  g_backing_dir = getenv("FLOOR_PASSTHROUGH");
  g_dev_fd = fuse_session_fd(se);
  static fuse_custom_io io{};
  io.writev = PassthroughWritev;
  io.read = PlainRead;
  io.splice_receive = PlainSplice;
  io.splice_send = PlainSplice;
  if (g_backing_dir && fuse_session_custom_io(se, &io, g_dev_fd) != 0) {
    std::fprintf(stderr, "fuse_floor: cannot hook the replies for passthrough\n");
    return 1;
  }
  fuse_loop_config cfg = tidefs::FuseLoopConfig();
  int rc = getenv("FLOOR_ST") ? fuse_session_loop(se) : fuse_session_loop_mt(se, &cfg);
  fuse_remove_signal_handlers(se);
  fuse_session_unmount(se);
  fuse_session_destroy(se);
  return rc == 0 ? 0 : 1;
}
