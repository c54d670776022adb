// RAII wrappers for SQLite connections and statements. A Db is not
// thread-safe; each thread uses its own or holds the owner's mutex.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <vector>

#include <sqlite3.h>

#include "core/status.h"

namespace tidefs {

// A connection's idle prepared statements, by SQL text. Shared with the
// statements handed out, so one that outlives its Db is finalized, not
// returned.
struct StmtCache {
  std::mutex mu;
  bool alive = true;  // guarded by mu; false once the Db is gone
  std::unordered_map<std::string, std::vector<sqlite3_stmt*>> idle;  // guarded by mu
  size_t count = 0;                                                  // guarded by mu
  void Return(sqlite3_stmt* s);
};

// A prepared statement; one from Db::Prepare goes back to its Db's cache
// (reset, bindings cleared) when it dies, so it is compiled once.
class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, sqlite3_stmt* s, std::shared_ptr<StmtCache> home = nullptr)
      : db_(db), s_(s), home_(std::move(home)) {}
  Stmt(Stmt&& o) noexcept : db_(o.db_), s_(o.s_), home_(std::move(o.home_)), status_(o.status_) { o.s_ = nullptr; }
  Stmt& operator=(Stmt&& o) noexcept {
    std::swap(db_, o.db_);
    std::swap(s_, o.s_);
    std::swap(home_, o.home_);
    std::swap(status_, o.status_);
    return *this;
  }
  Stmt(const Stmt&) = delete;
  ~Stmt();

  // Binds are 1-based, like SQLite's.
  Stmt& Bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); return *this; }
  Stmt& Bind(int i, uint64_t v) { sqlite3_bind_int64(s_, i, static_cast<int64_t>(v)); return *this; }
  Stmt& Bind(int i, int v) { sqlite3_bind_int64(s_, i, v); return *this; }
  Stmt& Bind(int i, uint32_t v) { sqlite3_bind_int64(s_, i, v); return *this; }
  Stmt& Bind(int i, std::string_view v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const void* p, size_t n) {
    sqlite3_bind_blob(s_, i, p, static_cast<int>(n), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindNull(int i) { sqlite3_bind_null(s_, i); return *this; }

  // Returns true while a row is available; errors end up in status().
  bool Step();
  // Runs to completion; for statements without rows.
  Status Run();
  void Reset() { sqlite3_reset(s_); sqlite3_clear_bindings(s_); status_ = Status::Ok(); }
  const Status& status() const { return status_; }

  int64_t Int(int col) const { return sqlite3_column_int64(s_, col); }
  uint64_t U64(int col) const { return static_cast<uint64_t>(sqlite3_column_int64(s_, col)); }
  bool IsNull(int col) const { return sqlite3_column_type(s_, col) == SQLITE_NULL; }
  std::string Text(int col) const {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string(p, sqlite3_column_bytes(s_, col)) : std::string();
  }
  // Valid until the next Step, Reset or column call on this statement.
  std::string_view TextView(int col) const {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, col));
    return p ? std::string_view(p, sqlite3_column_bytes(s_, col)) : std::string_view();
  }
  std::string_view Blob(int col) const {
    auto* p = static_cast<const char*>(sqlite3_column_blob(s_, col));
    return p ? std::string_view(p, sqlite3_column_bytes(s_, col)) : std::string_view();
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* s_ = nullptr;
  std::shared_ptr<StmtCache> home_;
  Status status_;
};

class Db {
 public:
  // Opens (creating if needed) with WAL, NORMAL sync and a busy timeout.
  // `exclusive`: this connection is the file's only user (the mount's
  // local state; the caller makes sure): its locks are taken once and
  // kept, the WAL index lives in memory (no fcntl per transaction).
  static Result<std::unique_ptr<Db>> Open(const std::string& path, bool exclusive = false);
  ~Db();
  Db(const Db&) = delete;

  // One statement; compiled on first use, then taken from a cache (a
  // statement still in use is never handed out twice).
  Result<Stmt> Prepare(std::string_view sql);
  // Any number of statements, compiled every time (schema, pragmas).
  Status Exec(const std::string& sql);
  int64_t LastInsertId() const { return sqlite3_last_insert_rowid(db_); }
  int Changes() const { return sqlite3_changes(db_); }
  sqlite3* raw() { return db_; }
  const std::string& path() const { return path_; }

 private:
  Db(sqlite3* db, std::string path) : db_(db), path_(std::move(path)), cache_(std::make_shared<StmtCache>()) {}
  sqlite3* db_;
  std::string path_;
  std::shared_ptr<StmtCache> cache_;
};

// BEGIN IMMEDIATE on construction; ROLLBACK on destruction unless Commit().
class Transaction {
 public:
  explicit Transaction(Db* db, bool immediate = true);
  ~Transaction();
  Status Commit();
  const Status& status() const { return begin_; }

 private:
  Db* db_;
  Status begin_;
  bool done_ = false;
};

// Checkpoints a shared (not exclusive) WAL database on a thread of its
// own. SQLite's automatic checkpoint runs inside the commit that crosses
// 1,000 WAL pages, two fsyncs included, while the writer holds its lock:
// on the server, a 1 GiB upload's block index (random keys, a page per
// row) checkpointed a dozen times, and every upload waited behind each.
// Here the commit only wakes the thread; past kInlineFrames (the thread
// falling behind) the commit checkpoints as before, so the WAL stays bounded.
class WalCheckpointer {
 public:
  static constexpr int kStartFrames = 1000;     // SQLite's own threshold
  static constexpr int kInlineFrames = 16000;   // about 64 MiB of WAL

  // Takes over `writer`'s WAL hook; checkpoints through a connection of
  // its own to the same file.
  static Result<std::unique_ptr<WalCheckpointer>> Start(Db* writer);
  // Stops the thread and gives `writer` SQLite's automatic checkpoint
  // back. Call with the writer idle (its owner's lock held, or at shutdown).
  ~WalCheckpointer();
  WalCheckpointer(const WalCheckpointer&) = delete;

  uint64_t checkpoints() const;

 private:
  WalCheckpointer(Db* writer, std::unique_ptr<Db> own);
  static int OnCommit(void* self, sqlite3* db, const char* name, int frames);
  void Loop();

  Db* writer_;
  std::unique_ptr<Db> own_;  // used by the thread only
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool wanted_ = false;   // guarded by mu_
  bool stop_ = false;     // guarded by mu_
  uint64_t done_ = 0;     // guarded by mu_
  std::thread thread_;
};

}  // namespace tidefs
