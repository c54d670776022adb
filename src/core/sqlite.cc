#include "core/sqlite.h"

#include <spdlog/spdlog.h>

namespace tidefs {
namespace {
constexpr size_t kMaxCachedStatements = 256;
}  // namespace

Stmt::~Stmt() {
  if (!s_) return;
  if (home_) home_->Return(s_);
  else sqlite3_finalize(s_);
}

void StmtCache::Return(sqlite3_stmt* s) {
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  std::lock_guard lock(mu);
  if (!alive || count >= kMaxCachedStatements) {
    sqlite3_finalize(s);  // (a connection closed meanwhile is a zombie until then)
    return;
  }
  idle[sqlite3_sql(s)].push_back(s);
  count++;
}

bool Stmt::Step() {
  int rc = sqlite3_step(s_);
  if (rc == SQLITE_ROW) return true;
  if (rc != SQLITE_DONE) status_ = Status::IoError(std::string("sqlite: ") + sqlite3_errmsg(db_));
  return false;
}

Status Stmt::Run() {
  while (Step()) {
  }
  Status st = status_;
  sqlite3_reset(s_);
  return st;
}

Result<std::unique_ptr<Db>> Db::Open(const std::string& path, bool exclusive) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return Status::IoError("cannot open database " + path + ": " + msg);
  }
  std::unique_ptr<Db> db(new Db(raw, path));
  sqlite3_busy_timeout(raw, 10000);
  // Before the first access: only then does WAL keep its index in memory.
  if (exclusive) RETURN_IF_ERROR(db->Exec("PRAGMA locking_mode=EXCLUSIVE"));
  RETURN_IF_ERROR(db->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                           " PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;"));
  return db;
}

Db::~Db() {
  {
    std::lock_guard lock(cache_->mu);
    cache_->alive = false;
    for (auto& [sql, list] : cache_->idle)
      for (sqlite3_stmt* s : list) sqlite3_finalize(s);
    cache_->idle.clear();
  }
  sqlite3_close_v2(db_);
}

Result<Stmt> Db::Prepare(std::string_view sql) {
  {
    std::lock_guard lock(cache_->mu);
    auto it = cache_->idle.find(std::string(sql));
    if (it != cache_->idle.end() && !it->second.empty()) {
      sqlite3_stmt* s = it->second.back();
      it->second.pop_back();
      cache_->count--;
      return Stmt(db_, s, cache_);
    }
  }
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &s, nullptr);
  if (rc != SQLITE_OK) return Status::Internal(std::string("sqlite prepare: ") + sqlite3_errmsg(db_));
  return Stmt(db_, s, cache_);
}

Status Db::Exec(const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    return Status::IoError("sqlite (" + path_ + "): " + msg);
  }
  return Status::Ok();
}

namespace {
// A one-word statement from the cache, with the path in its error.
Status Run(Db* db, const char* sql) {
  auto s = db->Prepare(sql);
  Status st = s.ok() ? s->Run() : s.status();
  if (!st.ok()) return Status::IoError("sqlite (" + db->path() + "): " + sql + ": " + st.message());
  return st;
}
}  // namespace

Transaction::Transaction(Db* db, bool immediate) : db_(db) {
  begin_ = Run(db_, immediate ? "BEGIN IMMEDIATE" : "BEGIN");
  if (!begin_.ok()) done_ = true;
}

namespace {
// A rolled-back transaction's statements are done with: one left mid-step
// (a lookup that returned early on a refusal) would keep a read snapshot
// open on the connection, and once another process wrote to the database
// (an admin command), every later BEGIN IMMEDIATE there failed with
// "database is locked".
void Rollback(Db* db) {
  for (sqlite3_stmt* s = sqlite3_next_stmt(db->raw(), nullptr); s; s = sqlite3_next_stmt(db->raw(), s))
    if (sqlite3_stmt_busy(s)) sqlite3_reset(s);
  (void)Run(db, "ROLLBACK");
}
}  // namespace

Transaction::~Transaction() {
  if (!done_) Rollback(db_);
}

Status Transaction::Commit() {
  RETURN_IF_ERROR(begin_);
  done_ = true;
  Status st = Run(db_, "COMMIT");
  if (!st.ok()) Rollback(db_);
  return st;
}

Result<std::unique_ptr<WalCheckpointer>> WalCheckpointer::Start(Db* writer) {
  ASSIGN_OR_RETURN(auto own, Db::Open(writer->path()));
  return std::unique_ptr<WalCheckpointer>(new WalCheckpointer(writer, std::move(own)));
}

WalCheckpointer::WalCheckpointer(Db* writer, std::unique_ptr<Db> own) : writer_(writer), own_(std::move(own)) {
  thread_ = std::thread([this] { Loop(); });
  sqlite3_wal_hook(writer_->raw(), &WalCheckpointer::OnCommit, this);
}

WalCheckpointer::~WalCheckpointer() {
  sqlite3_wal_autocheckpoint(writer_->raw(), kStartFrames);  // (replaces the hook)
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

uint64_t WalCheckpointer::checkpoints() const {
  std::lock_guard lock(mu_);
  return done_;
}

int WalCheckpointer::OnCommit(void* self, sqlite3* db, const char* name, int frames) {
  auto* c = static_cast<WalCheckpointer*>(self);
  if (frames >= kInlineFrames) {
    // The thread is behind (or a reader kept it from finishing): as SQLite would.
    (void)sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
  } else if (frames >= kStartFrames) {
    {
      std::lock_guard lock(c->mu_);
      c->wanted_ = true;
    }
    c->cv_.notify_one();
  }
  return SQLITE_OK;
}

void WalCheckpointer::Loop() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait(lock, [this] { return wanted_ || stop_; });
    if (stop_) return;
    wanted_ = false;
    lock.unlock();
    const int rc = sqlite3_wal_checkpoint_v2(own_->raw(), "main", SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
    // SQLITE_BUSY: another checkpoint is running; the next commit asks again.
    if (rc != SQLITE_OK && rc != SQLITE_BUSY)
      spdlog::warn("checkpointing {} failed: {} (the next commit tries again)", own_->path(), sqlite3_errmsg(own_->raw()));
    lock.lock();
    ++done_;
  }
}

}  // namespace tidefs
