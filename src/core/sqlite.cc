#include "core/sqlite.h"

namespace tidefs {

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

Result<std::unique_ptr<Db>> Db::Open(const std::string& path) {
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = raw ? sqlite3_errmsg(raw) : "out of memory";
    sqlite3_close(raw);
    return Status::IoError("cannot open database " + path + ": " + msg);
  }
  std::unique_ptr<Db> db(new Db(raw, path));
  sqlite3_busy_timeout(raw, 10000);
  RETURN_IF_ERROR(db->Exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;"
                           " PRAGMA cache_size=-65536; PRAGMA temp_store=MEMORY;"));
  return db;
}

Db::~Db() { sqlite3_close_v2(db_); }

Result<Stmt> Db::Prepare(std::string_view sql) {
  sqlite3_stmt* s = nullptr;
  int rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()), SQLITE_PREPARE_PERSISTENT, &s, nullptr);
  if (rc != SQLITE_OK) return Status::Internal(std::string("sqlite prepare: ") + sqlite3_errmsg(db_));
  return Stmt(db_, s);
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

Transaction::Transaction(Db* db, bool immediate) : db_(db) {
  begin_ = db_->Exec(immediate ? "BEGIN IMMEDIATE" : "BEGIN");
  if (!begin_.ok()) done_ = true;
}

Transaction::~Transaction() {
  if (!done_) (void)db_->Exec("ROLLBACK");
}

Status Transaction::Commit() {
  RETURN_IF_ERROR(begin_);
  done_ = true;
  Status st = db_->Exec("COMMIT");
  if (!st.ok()) (void)db_->Exec("ROLLBACK");
  return st;
}

}  // namespace tidefs
