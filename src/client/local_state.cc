#include "client/local_state.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <unordered_map>
#include <unordered_set>

#include <spdlog/spdlog.h>

namespace tidefs {
namespace {
constexpr uint64_t kLogRoom = 4 << 20;  // the intent log's preallocated room
}  // namespace

namespace {

constexpr char kNodeColumns[] = "id, parent, name, kind, mode, size, mtime_ns, version, seq, target";
// A directory's entries side by side with every column: listing one reads
// a few pages, not a page per entry scattered over the table (node ids are
// random; a cold listing of 1,000 entries read 1,000 pages from the disk).
constexpr char kCreateListingIndex[] =
    "CREATE INDEX IF NOT EXISTS nodes_listing ON nodes(parent, name, kind, mode, size, mtime_ns, version, seq, target)";
// (id, the rowid, is in every index entry already.)

NodeRecord ReadNode(const Stmt& s) {
  NodeRecord n;
  n.id = s.U64(0);
  n.parent = s.U64(1);
  n.name = s.Text(2);
  n.kind = static_cast<NodeKind>(s.Int(3));
  n.mode = static_cast<uint32_t>(s.Int(4));
  n.size = s.U64(5);
  n.mtime_ns = s.Int(6);
  n.version = s.U64(7);
  n.seq = s.U64(8);
  if (!s.IsNull(9)) n.target = s.Text(9);
  return n;
}

void BindNode(Stmt& s, const NodeRecord& n) {
  s.Bind(1, n.id).Bind(2, n.parent).Bind(3, n.name).Bind(4, static_cast<int>(n.kind)).Bind(5, n.mode)
      .Bind(6, n.size).Bind(7, n.mtime_ns).Bind(8, n.version).Bind(9, n.seq);
  if (n.kind == NodeKind::kSymlink) s.Bind(10, n.target); else s.BindNull(10);
}

// A row saved late (the writer thread) must not take a version back.
constexpr char kUpsertNode[] =
    "INSERT INTO nodes(id, parent, name, kind, mode, size, mtime_ns, version, seq, target) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) ON CONFLICT(id) DO UPDATE SET parent=excluded.parent, "
    "name=excluded.name, kind=excluded.kind, mode=excluded.mode, size=excluded.size, mtime_ns=excluded.mtime_ns, "
    "version=max(version, excluded.version), seq=max(seq, excluded.seq), target=excluded.target";

}  // namespace

Result<std::unique_ptr<LocalState>> LocalState::Open(const std::string& path, const std::string& project) {
  ASSIGN_OR_RETURN(auto db, Db::Open(path, /*exclusive=*/true));
  RETURN_IF_ERROR(db->Exec(
      "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name TEXT NOT NULL,"
      " kind INTEGER NOT NULL, mode INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
      " version INTEGER NOT NULL, seq INTEGER NOT NULL, target TEXT);"
      "CREATE TABLE IF NOT EXISTS journal (seq INTEGER PRIMARY KEY AUTOINCREMENT, flush INTEGER NOT NULL,"
      " op TEXT NOT NULL);"
      "CREATE TABLE IF NOT EXISTS known_versions (id INTEGER PRIMARY KEY, version INTEGER NOT NULL);"));
  {
    // (Statements done before the replay writes.)
    ASSIGN_OR_RETURN(Stmt q, db->Prepare("SELECT value FROM meta WHERE key='project'"));
    if (q.Step()) {
      std::string owner = q.Text(0);
      if (owner != project)
        return Status::Invalid("cache dir " + path + " holds project " + owner + ", not " + project +
                               "; use another --cache-dir");
    } else {
      RETURN_IF_ERROR(q.status());
      ASSIGN_OR_RETURN(Stmt ins, db->Prepare("INSERT INTO meta(key, value) VALUES('project', ?1)"));
      ins.Bind(1, project);
      RETURN_IF_ERROR(ins.Run());
    }
  }
  // The listing index replaces nodes_parent (parent, name): an older cache
  // builds it once here. If it cannot (a full disk), the old one serves,
  // for the mount must start, if only so that files can be deleted.
  {
    ASSIGN_OR_RETURN(Stmt q, db->Prepare("SELECT 1 FROM sqlite_schema WHERE type='index' AND name='nodes_listing'"));
    const bool have = q.Step();
    RETURN_IF_ERROR(q.status());
    if (!have) {
      spdlog::debug("building the listing index of {}", path);
      Status st = db->Exec(kCreateListingIndex);
      if (st.ok()) st = db->Exec("DROP INDEX IF EXISTS nodes_parent");
      if (!st.ok()) {
        spdlog::warn("{}: cannot build the listing index ({}); listings use the older one until it can be built",
                     path, st.ToString());
        RETURN_IF_ERROR(db->Exec("CREATE INDEX IF NOT EXISTS nodes_parent ON nodes(parent, name)"));
      }
    }
  }
  std::string files_path = path;
  auto slash = files_path.rfind('/');
  files_path = (slash == std::string::npos ? std::string() : files_path.substr(0, slash + 1)) + "files.db";
  ASSIGN_OR_RETURN(auto files, Db::Open(files_path, /*exclusive=*/true));
  RETURN_IF_ERROR(files->Exec(
      "CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, version INTEGER NOT NULL,"
      " manifest BLOB NOT NULL, present BLOB NOT NULL, dirty BLOB)"));
  // (A cache dir made before the dirty bits were saved gets their column,
  // NULL: not known.)
  if (!files->Prepare("SELECT dirty FROM files LIMIT 0").ok())
    RETURN_IF_ERROR(files->Exec("ALTER TABLE files ADD COLUMN dirty BLOB"));
  std::unique_ptr<LocalState> state(new LocalState(std::move(db), std::move(files)));
  std::string dir = slash == std::string::npos ? std::string() : path.substr(0, slash + 1);
  RETURN_IF_ERROR(state->OpenLog(dir + "intent.log"));
  return state;
}

LocalState::~LocalState() {
  if (log_fd_ >= 0) ::close(log_fd_);
}

Status LocalState::OpenLog(const std::string& path) {
  uint64_t applied = 0;
  {
    std::lock_guard lock(mu_);
    ASSIGN_OR_RETURN(Stmt q, db_->Prepare("SELECT value FROM meta WHERE key='applied_ticket'"));
    if (q.Step()) applied = std::strtoull(q.Text(0).c_str(), nullptr, 10);
    RETURN_IF_ERROR(q.status());
  }
  last_ticket_ = applied;
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return Status::IoError("cannot open " + path + ": " + std::strerror(errno));
  std::lock_guard lock(log_mu_);
  log_fd_ = fd;
  std::string bytes;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::pread(fd, buf, sizeof buf, static_cast<off_t>(bytes.size()));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError("cannot read " + path + ": " + std::strerror(errno));
    if (n == 0) break;
    bytes.append(buf, static_cast<size_t>(n));
  }
  // What a mount that died had made and not saved yet.
  DecodedLog log = DecodeLocalLog(bytes);
  std::vector<const Change*> todo;
  for (const auto& c : log.changes) {
    if (c.ticket > applied) todo.push_back(&c);
    last_ticket_ = std::max(last_ticket_, c.ticket);  // tickets never go back
  }
  // Staged bytes of saved changes may wait for their cache files too (the
  // writer makes them once a burst pauses, and keeps the log until then):
  // placed where the node is still there.
  std::vector<const Change*> logged;  // (all of them: deletes count)
  std::unordered_set<uint64_t> absent;
  for (const auto& c : log.changes) {
    logged.push_back(&c);
    if (c.ticket > applied) continue;
    for (const auto& st : c.staged) {
      auto n = GetNode(st.id);
      if (n.ok() && (!*n || (*n)->deleted)) absent.insert(st.id);
    }
  }
  const std::string data_dir = path.substr(0, path.rfind('/') + 1) + "data";
  RETURN_IF_ERROR(RestoreStaged(data_dir, logged, &absent));
  if (!todo.empty()) {
    spdlog::info("replaying {} changes from {} (the last mount ended before saving them)", todo.size(), path);
    RETURN_IF_ERROR(SaveChanges(todo));
    // On disk before the log that held them on disk is emptied below.
    RETURN_IF_ERROR(Sync());
  }
  if (!log.stopped.empty()) {
    // Keep both copies: whatever could not be read goes aside, not away.
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    const std::string aside = path + ".damaged-" + std::to_string(now.tv_sec) + "." + std::to_string(now.tv_nsec);
    spdlog::warn("{}: the bytes after {} could not be read ({}); kept in {}", path, log.used,
                 log.stopped, aside);
    // (Not the zeros of the preallocated room after it.)
    size_t end = bytes.size();
    while (end > log.used && bytes[end - 1] == '\0') --end;
    int out = ::open(aside.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (out < 0 || ::write(out, bytes.data() + log.used, end - log.used) != static_cast<ssize_t>(end - log.used)) {
      if (out >= 0) ::close(out);
      return Status::IoError("cannot keep the unreadable end of " + path + " in " + aside);
    }
    ::close(out);
  }
  // Zeros from the start (the end mark), allocated now: a full disk must
  // not keep a user from deleting files to make room.
  if (::ftruncate(fd, 0) != 0) return Status::IoError("cannot empty " + path + ": " + std::strerror(errno));
  log_size_ = 0;
  if (::fallocate(fd, 0, 0, kLogRoom) == 0) {
    log_room_ = kLogRoom;
  } else {
    // A filesystem without fallocate: the log grows as it is written (no
    // room kept for a full disk).
    if (errno == EOPNOTSUPP || errno == ENOSYS) log_prealloc_ = false;
    spdlog::warn("cannot reserve {} bytes for {}: {}", kLogRoom, path, std::strerror(errno));
  }
  return Status::Ok();
}

Status LocalState::RestoreStaged(const std::string& data_dir, const std::vector<const Change*>& todo,
                                 const std::unordered_set<uint64_t>* absent) {
  std::unordered_set<uint64_t> gone;
  if (absent) gone = *absent;
  for (const Change* c : todo)
    for (const auto& r : c->rows)
      if (r.deleted) gone.insert(r.id);
  for (const Change* c : todo) {
    for (const auto& s : c->staged) {
      // A file that is there got these bytes whole (renamed into place),
      // and maybe later changes since: left alone.
      const std::string file = data_dir + "/" + std::to_string(s.id);
      if (gone.count(s.id) || ::access(file.c_str(), F_OK) == 0) continue;
      ::mkdir(data_dir.c_str(), 0700);
      RETURN_IF_ERROR(PlaceStaged(file, s.bytes));
    }
  }
  return Status::Ok();
}

Status LocalState::PlaceStaged(const std::string& file, std::string_view bytes) {
  const std::string tmp = file + ".staged";
  auto fail = [&](const char* what, int err) {
    ::unlink(tmp.c_str());
    return Status(err == ENOSPC ? Code::kTooLarge : Code::kIoError,
                  std::string("cannot ") + what + " " + file + ": " + std::strerror(err));
  };
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("create", errno);
  for (size_t done = 0; done < bytes.size();) {
    ssize_t n = ::pwrite(fd, bytes.data() + done, bytes.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n < 0 ? errno : EIO;
      ::close(fd);
      return fail("write", err);
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), file.c_str()) != 0) return fail("place", errno);
  return Status::Ok();
}

Status LocalState::LogChange(const Change& c) {
  std::string frame = EncodeLocalChange(c);
  const size_t len = frame.size();
  if (len > kMaxLocalChangeFrame)
    return Status(Code::kTooLarge, "a change of " + std::to_string(len) + " bytes does not fit the intent log");
  frame.append(kLocalLogEndMark, '\0');
  std::lock_guard lock(log_mu_);
  if (log_prealloc_ && log_size_ + frame.size() > log_room_) {
    // More room, allocated before it is written (a burst the databases lag behind).
    const uint64_t want = std::max<uint64_t>(2 * log_room_, (log_size_ + frame.size() + kLogRoom) / kLogRoom * kLogRoom);
    if (::fallocate(log_fd_, 0, 0, static_cast<off_t>(want)) != 0) {
      int err = errno;
      return Status(err == ENOSPC ? Code::kTooLarge : Code::kIoError,
                    std::string("cannot grow the intent log in the cache dir: ") + std::strerror(err));
    }
    log_room_ = want;
  }
  size_t done = 0;
  while (done < frame.size()) {
    ssize_t n = ::pwrite(log_fd_, frame.data() + done, frame.size() - done, static_cast<off_t>(log_size_ + done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      // A torn frame would read as damage: put the end mark back.
      const std::string mark(kLocalLogEndMark, '\0');
      (void)!::pwrite(log_fd_, mark.data(), mark.size(), static_cast<off_t>(log_size_));
      return Status(err == ENOSPC ? Code::kTooLarge : Code::kIoError,
                    std::string("cannot append to the intent log in the cache dir: ") + std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  log_size_ += len;
  if (c.ticket > last_ticket_) last_ticket_ = c.ticket;
  return Status::Ok();
}

uint64_t LocalState::log_bytes() {
  std::lock_guard lock(log_mu_);
  return log_size_;
}

Status LocalState::ResetLog() {
  std::lock_guard lock(log_mu_);
  if (log_size_ == 0) return Status::Ok();
  const std::string mark(kLocalLogEndMark, '\0');
  if (::pwrite(log_fd_, mark.data(), mark.size(), 0) != static_cast<ssize_t>(mark.size()))
    return Status::IoError(std::string("cannot empty the intent log in the cache dir: ") + std::strerror(errno));
  log_size_ = 0;
  return Status::Ok();
}

Status LocalState::SaveChanges(const std::vector<const Change*>& changes) {
  if (changes.empty()) return Status::Ok();
  std::vector<CachedFile> files;
  std::vector<NodeRecord> rows;
  std::vector<JournalEntry> entries;
  std::unordered_map<uint64_t, size_t> row_of, file_of;
  for (const Change* c : changes) {
    // A node (or bitmap) changed again later in the same batch: the last one.
    for (const auto& r : c->rows) {
      if (auto it = row_of.find(r.id); it != row_of.end()) rows[it->second].id = 0;
      row_of[r.id] = rows.size();
      rows.push_back(r);
    }
    for (const auto& f : c->files) {
      if (auto it = file_of.find(f.id); it != file_of.end()) files[it->second].id = 0;
      file_of[f.id] = files.size();
      files.push_back(f);
    }
    entries.insert(entries.end(), c->entries.begin(), c->entries.end());
  }
  std::erase_if(rows, [](const NodeRecord& r) { return r.id == 0; });
  std::erase_if(files, [](const CachedFile& f) { return f.id == 0; });
  // A node deleted in (or after) these: no bitmap row stays behind, also
  // not one an earlier save or the cache wrote.
  std::unordered_set<uint64_t> gone;
  for (const auto& r : rows)
    if (r.deleted) gone.insert(r.id);
  std::erase_if(files, [&](const CachedFile& f) { return gone.count(f.id) > 0; });
  // The bitmaps first: a flush entry must find its blocks marked.
  if (!files.empty()) RETURN_IF_ERROR(SaveFiles(files));
  if (!gone.empty()) RETURN_IF_ERROR(DropFiles({gone.begin(), gone.end()}));
  std::lock_guard lock(mu_);
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.status());
  RETURN_IF_ERROR(WriteRows(rows));
  RETURN_IF_ERROR(InsertJournal(entries));
  ASSIGN_OR_RETURN(Stmt t, db_->Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES('applied_ticket', ?1)"));
  t.Bind(1, std::to_string(changes.back()->ticket));
  RETURN_IF_ERROR(t.Run());
  return tx.Commit();
}

Status LocalState::InsertJournal(const std::vector<JournalEntry>& entries) {
  ASSIGN_OR_RETURN(Stmt ins, db_->Prepare("INSERT INTO journal(flush, op) VALUES(?1, ?2)"));
  for (const auto& e : entries) {
    ins.Bind(1, e.flush ? 1 : 0).Bind(2, EncodeCommit({e.op}));
    RETURN_IF_ERROR(ins.Run());
    ins.Reset();
  }
  return Status::Ok();
}

Result<std::optional<uint64_t>> LocalState::Cursor() {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt c, db_->Prepare("SELECT value FROM meta WHERE key='cursor'"));
  if (!c.Step()) {
    RETURN_IF_ERROR(c.status());
    return std::optional<uint64_t>();
  }
  std::string v = c.Text(0);
  char* end = nullptr;
  uint64_t seq = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end) return Status::Corruption("local state: cursor \"" + v + "\" is not a number");
  return std::optional<uint64_t>(seq);
}

Result<std::optional<Snapshot>> LocalState::Load() {
  ASSIGN_OR_RETURN(std::optional<uint64_t> seq, Cursor());
  if (!seq) return std::optional<Snapshot>();
  std::lock_guard lock(mu_);
  Snapshot snap;
  snap.seq = *seq;
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare(std::string("SELECT ") + kNodeColumns + " FROM nodes"));
  while (s.Step()) snap.nodes.push_back(ReadNode(s));
  RETURN_IF_ERROR(s.status());
  return std::optional<Snapshot>(std::move(snap));
}

Result<std::optional<NodeRecord>> LocalState::GetNode(uint64_t id) {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare(std::string("SELECT ") + kNodeColumns + " FROM nodes WHERE id=?1"));
  s.Bind(1, id);
  if (!s.Step()) {
    RETURN_IF_ERROR(s.status());
    return std::optional<NodeRecord>();
  }
  return std::optional<NodeRecord>(ReadNode(s));
}

Result<std::vector<NodeRecord>> LocalState::Children(uint64_t parent) {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare(std::string("SELECT ") + kNodeColumns +
                                        " FROM nodes WHERE parent=?1 ORDER BY name"));
  s.Bind(1, parent);
  std::vector<NodeRecord> out;
  while (s.Step()) {
    out.push_back(ReadNode(s));
  }
  RETURN_IF_ERROR(s.status());
  return out;
}

Status LocalState::SetCursor(uint64_t seq) {
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES('cursor', ?1)"));
  s.Bind(1, std::to_string(seq));
  return s.Run();
}

Status LocalState::SaveSnapshot(const Snapshot& snap) {
  std::lock_guard lock(mu_);
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.status());
  // Rows first, index after: one sorted build instead of a million inserts into it.
  RETURN_IF_ERROR(db_->Exec("DELETE FROM meta WHERE key='cursor'; DELETE FROM nodes;"
                            " DROP INDEX IF EXISTS nodes_listing; DROP INDEX IF EXISTS nodes_parent"));
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare(kUpsertNode));
  for (const auto& n : snap.nodes) {
    BindNode(s, n);
    RETURN_IF_ERROR(s.Run());
    s.Reset();
  }
  RETURN_IF_ERROR(db_->Exec(kCreateListingIndex));
  RETURN_IF_ERROR(SetCursor(snap.seq));
  return tx.Commit();
}

Status LocalState::ApplyChanges(const std::vector<NodeRecord>& changes, uint64_t seq) {
  std::lock_guard lock(mu_);
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.status());
  RETURN_IF_ERROR(WriteRows(changes));
  RETURN_IF_ERROR(SetCursor(seq));
  return tx.Commit();
}

Status LocalState::WriteRows(const std::vector<NodeRecord>& rows) {
  ASSIGN_OR_RETURN(Stmt up, db_->Prepare(kUpsertNode));
  ASSIGN_OR_RETURN(Stmt del, db_->Prepare("DELETE FROM nodes WHERE id=?1"));
  for (const auto& n : rows) {
    Stmt& s = n.deleted ? del : up;
    if (n.deleted) s.Bind(1, n.id); else BindNode(s, n);
    RETURN_IF_ERROR(s.Run());
    s.Reset();
  }
  return Status::Ok();
}

Result<std::vector<LocalState::JournalEntry>> LocalState::PendingJournal(size_t limit) {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT seq, flush, op FROM journal ORDER BY seq LIMIT ?1"));
  s.Bind(1, static_cast<uint64_t>(limit));
  std::vector<JournalEntry> out;
  while (s.Step()) {
    JournalEntry e;
    e.seq = s.U64(0);
    e.flush = s.Int(1) != 0;
    auto ops = DecodeCommit(s.Text(2));
    if (!ops.ok() || ops->size() != 1)
      return Status::Corruption("local state: journal entry " + std::to_string(e.seq) + " does not decode");
    e.op = std::move((*ops)[0]);
    out.push_back(std::move(e));
  }
  RETURN_IF_ERROR(s.status());
  return out;
}

Status LocalState::CompleteJournal(uint64_t last, const std::vector<NodeRecord>& rows,
                                   const std::vector<std::pair<uint64_t, uint64_t>>& known, bool forget_known) {
  std::lock_guard lock(mu_);
  Transaction tx(db_.get());
  RETURN_IF_ERROR(tx.status());
  // Only versions move: the mirror already holds the local changes, and
  // later ones still in the journal must not be overwritten.
  ASSIGN_OR_RETURN(Stmt up, db_->Prepare("UPDATE nodes SET version=?2, seq=?3 WHERE id=?1 AND version<=?2"));
  ASSIGN_OR_RETURN(Stmt gone, db_->Prepare("DELETE FROM known_versions WHERE id=?1"));
  for (const auto& n : rows) {
    if (n.deleted && forget_known) continue;  // (all go below)
    Stmt& s = n.deleted ? gone : up;
    s.Bind(1, n.id);
    if (!n.deleted) s.Bind(2, n.version).Bind(3, n.seq);
    RETURN_IF_ERROR(s.Run());
    s.Reset();
  }
  // A version kept before, of a node this commit moved on, moves too (a
  // change waiting still would name the older one after a restart).
  ASSIGN_OR_RETURN(Stmt newer, db_->Prepare("UPDATE known_versions SET version=?2 WHERE id=?1 AND version<?2"));
  for (const auto& n : rows) {
    if (n.deleted || forget_known) continue;
    newer.Bind(1, n.id).Bind(2, n.version);
    RETURN_IF_ERROR(newer.Run());
    newer.Reset();
  }
  ASSIGN_OR_RETURN(Stmt keep, db_->Prepare("INSERT INTO known_versions(id, version) VALUES(?1, ?2) ON CONFLICT(id) "
                                           "DO UPDATE SET version=max(version, excluded.version)"));
  for (const auto& [id, version] : known) {
    keep.Bind(1, id).Bind(2, version);
    RETURN_IF_ERROR(keep.Run());
    keep.Reset();
  }
  ASSIGN_OR_RETURN(Stmt d, db_->Prepare("DELETE FROM journal WHERE seq <= ?1"));
  d.Bind(1, last);
  RETURN_IF_ERROR(d.Run());
  if (forget_known) RETURN_IF_ERROR(db_->Exec("DELETE FROM known_versions"));
  return tx.Commit();
}

Result<std::unordered_map<uint64_t, uint64_t>> LocalState::KnownVersions() {
  std::lock_guard lock(mu_);
  // Of every node, those still here too: one may be deleted here after
  // this is read (its row goes a moment later), and a change made before
  // that delete still names the version kept.
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT id, version FROM known_versions"));
  std::unordered_map<uint64_t, uint64_t> out;
  while (s.Step()) out[s.U64(0)] = s.U64(1);
  RETURN_IF_ERROR(s.status());
  return out;
}

Status LocalState::Sync() {
  {
    std::lock_guard lock(mu_);
    RETURN_IF_ERROR(db_->Exec("PRAGMA wal_checkpoint(FULL)"));
  }
  std::lock_guard lock(files_mu_);
  return files_db_->Exec("PRAGMA wal_checkpoint(FULL)");
}

Result<uint64_t> LocalState::InflightBatch() {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT value FROM meta WHERE key='inflight'"));
  if (!s.Step()) {
    RETURN_IF_ERROR(s.status());
    return uint64_t{0};
  }
  return std::strtoull(s.Text(0).c_str(), nullptr, 10);
}

Result<std::string> LocalState::InflightKey() {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT value FROM meta WHERE key='inflight'"));
  if (!s.Step()) {
    RETURN_IF_ERROR(s.status());
    return std::string();
  }
  const std::string v = s.Text(0);  // "LAST" or "LAST:KEY"
  const size_t colon = v.find(':');
  return colon == std::string::npos ? std::string() : v.substr(colon + 1);
}

Status LocalState::SetInflightBatch(uint64_t last, const std::string& key) {
  std::lock_guard lock(mu_);
  if (last) {
    // On disk before the batch is sent: a mark lost with the machine (the
    // server having applied the batch) would send it again under a new
    // key, applied twice. Clearing it needs no sync: a mark that comes
    // back sends the batch under its old key, and the answer is replayed.
    RETURN_IF_ERROR(db_->Exec("PRAGMA synchronous=FULL"));
    ASSIGN_OR_RETURN(Stmt s, db_->Prepare("INSERT OR REPLACE INTO meta(key, value) VALUES('inflight', ?1)"));
    s.Bind(1, std::to_string(last) + (key.empty() ? "" : ":" + key));
    Status st = s.Run();
    Status back = db_->Exec("PRAGMA synchronous=NORMAL");
    return st.ok() ? back : st;
  }
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("DELETE FROM meta WHERE key='inflight'"));
  return s.Run();
}

Result<std::string> LocalState::Meta(const std::string& key) {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT value FROM meta WHERE key=?1"));
  s.Bind(1, key);
  if (!s.Step()) {
    RETURN_IF_ERROR(s.status());
    return std::string();
  }
  return s.Text(0);
}

Status LocalState::SetMeta(const std::string& key, const std::string& value) {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare(value.empty() ? "DELETE FROM meta WHERE key=?1"
                                                      : "INSERT OR REPLACE INTO meta(key, value) VALUES(?1, ?2)"));
  s.Bind(1, key);
  if (!value.empty()) s.Bind(2, value);
  return s.Run();
}

Result<uint64_t> LocalState::JournalSize() {
  std::lock_guard lock(mu_);
  ASSIGN_OR_RETURN(Stmt s, db_->Prepare("SELECT count(*) FROM journal"));
  if (!s.Step()) return s.status().ok() ? Status::Internal("count returned nothing") : s.status();
  return s.U64(0);
}

static Result<LocalState::CachedFile> ReadFileRow(const Stmt& s) {
  LocalState::CachedFile f;
  f.id = s.U64(0);
  f.version = s.U64(1);
  // Our own bytes, but a damaged cache dir must not crash the mount.
  auto m = DecodeManifest(s.Blob(2));
  if (!m.ok()) return Status::Corruption("local state: manifest of " + std::to_string(f.id) + ": " + m.status().message());
  f.manifest = std::move(*m);
  f.present = UnpackBits(s.Blob(3), f.manifest.blocks.size());
  if (!s.IsNull(4)) f.dirty = UnpackBits(s.Blob(4), f.manifest.blocks.size());
  return f;
}

Result<std::optional<LocalState::CachedFile>> LocalState::LoadFile(uint64_t id) {
  std::lock_guard lock(files_mu_);
  ASSIGN_OR_RETURN(Stmt s, files_db_->Prepare("SELECT id, version, manifest, present, dirty FROM files WHERE id=?1"));
  s.Bind(1, id);
  if (!s.Step()) {
    RETURN_IF_ERROR(s.status());
    return std::optional<CachedFile>();
  }
  ASSIGN_OR_RETURN(CachedFile f, ReadFileRow(s));
  return std::optional<CachedFile>(std::move(f));
}

Result<std::vector<LocalState::CachedFile>> LocalState::LoadAllFiles() {
  std::lock_guard lock(files_mu_);
  ASSIGN_OR_RETURN(Stmt s, files_db_->Prepare("SELECT id, version, manifest, present, dirty FROM files"));
  std::vector<CachedFile> out;
  while (s.Step()) {
    auto f = ReadFileRow(s);
    if (f.ok()) out.push_back(std::move(*f));
  }
  RETURN_IF_ERROR(s.status());
  return out;
}

Status LocalState::SaveFile(const CachedFile& f) { return SaveFiles({f}); }

Status LocalState::SaveFiles(const std::vector<CachedFile>& files) {
  std::lock_guard lock(files_mu_);
  std::optional<Transaction> tx;
  if (files.size() > 1) {
    tx.emplace(files_db_.get());
    RETURN_IF_ERROR(tx->status());
  }
  // A bitmap saved late (the writer thread) never replaces one of a newer version.
  ASSIGN_OR_RETURN(Stmt s, files_db_->Prepare(
                               "INSERT INTO files(id, version, manifest, present, dirty) VALUES(?1, ?2, ?3, ?4, ?5) "
                               "ON CONFLICT(id) DO UPDATE SET version=excluded.version, manifest=excluded.manifest, "
                               "present=excluded.present, dirty=excluded.dirty WHERE excluded.version >= files.version"));
  for (const auto& f : files) {
    if (spdlog::should_log(spdlog::level::trace))
      spdlog::trace("local state: record of node {} at version {}: manifest {} bytes, {} blocks present", f.id,
                    f.version, f.manifest.size, std::count(f.present.begin(), f.present.end(), true));
    std::string m = EncodeManifest(f.manifest), bits = PackBits(f.present);
    s.Bind(1, f.id).Bind(2, f.version).BindBlob(3, m.data(), m.size()).BindBlob(4, bits.data(), bits.size());
    std::string dirty;
    if (f.dirty) {
      std::vector<bool> d = *f.dirty;
      d.resize(f.manifest.blocks.size(), false);  // (the check covers the manifest's blocks)
      dirty = PackBits(d);
      s.BindBlob(5, dirty.data(), dirty.size());
    } else {
      s.BindNull(5);
    }
    RETURN_IF_ERROR(s.Run());
    s.Reset();
  }
  return tx ? tx->Commit() : Status::Ok();
}

Status LocalState::SavePresent(uint64_t id, uint64_t version, const std::vector<bool>& present) {
  std::lock_guard lock(files_mu_);
  ASSIGN_OR_RETURN(Stmt s, files_db_->Prepare("UPDATE files SET present=?2 WHERE id=?1 AND version=?3"));
  std::string bits = PackBits(present);
  s.Bind(1, id).BindBlob(2, bits.data(), bits.size()).Bind(3, version);
  return s.Run();
}

Status LocalState::DropFile(uint64_t id) { return DropFiles({id}); }

Status LocalState::DropFiles(const std::vector<uint64_t>& ids) {
  std::lock_guard lock(files_mu_);
  std::optional<Transaction> tx;
  if (ids.size() > 1) {
    tx.emplace(files_db_.get());
    RETURN_IF_ERROR(tx->status());
  }
  ASSIGN_OR_RETURN(Stmt s, files_db_->Prepare("DELETE FROM files WHERE id=?1"));
  for (uint64_t id : ids) {
    spdlog::trace("local state: record of node {} dropped", id);
    s.Bind(1, id);
    RETURN_IF_ERROR(s.Run());
    s.Reset();
  }
  return tx ? tx->Commit() : Status::Ok();
}

}  // namespace tidefs
