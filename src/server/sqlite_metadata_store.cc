// SQLite implementation of MetadataStore. One writer connection (behind
// write_mu_) and a pool of reader connections; WAL lets readers run while
// a commit is in progress. Each connection caches its prepared statements.
#include <chrono>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/sqlite.h"
#include "server/metadata_store.h"
#include "server/migrations.h"

namespace tidefs {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// While held, the connection's transactions sync the WAL at commit (they
// survive a power cut, not only a crash); NORMAL again after.
class FullSync {
 public:
  explicit FullSync(Db* db) : db_(db), status_(db->Exec("PRAGMA synchronous=FULL")) {}
  ~FullSync() { (void)db_->Exec("PRAGMA synchronous=NORMAL"); }
  FullSync(const FullSync&) = delete;
  const Status& status() const { return status_; }

 private:
  Db* db_;
  Status status_;
};

constexpr const char* kNodeCols =
    "id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target";

void ReadNodeInto(const Stmt& s, NodeRecord* n, int c = 0) {
  n->id = s.U64(c);
  n->parent = s.U64(c + 1);
  n->name = s.TextView(c + 2);
  n->kind = static_cast<NodeKind>(s.Int(c + 3));
  n->mode = static_cast<uint32_t>(s.Int(c + 4));
  n->size = s.U64(c + 5);
  n->mtime_ns = s.Int(c + 6);
  n->version = s.U64(c + 7);
  n->seq = s.U64(c + 8);
  n->deleted = s.Int(c + 9) != 0;
  if (s.IsNull(c + 10)) n->target.clear();
  else n->target = s.TextView(c + 10);
}

NodeRecord ReadNode(const Stmt& s, int c = 0) {
  NodeRecord n;
  ReadNodeInto(s, &n, c);
  return n;
}

// A connection and its prepared statements, keyed by the SQL literal.
struct Conn {
  std::unique_ptr<Db> db;
  std::unordered_map<const char*, Stmt> stmts;

  Result<Stmt*> Get(const char* sql) {
    auto it = stmts.find(sql);
    if (it == stmts.end()) {
      ASSIGN_OR_RETURN(Stmt s, db->Prepare(sql));
      it = stmts.emplace(sql, std::move(s)).first;
    }
    it->second.Reset();
    return &it->second;
  }
  // Ends every statement's read so the connection holds no snapshot.
  void ResetAll() {
    for (auto& [sql, s] : stmts) s.Reset();
  }
};

// SQL, named so that each literal has one address (the statement cache key).
const char* const kGetNode =
    "SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target FROM nodes "
    "WHERE project=?1 AND id=?2";
const char* const kFindName =
    "SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target FROM nodes "
    "WHERE project=?1 AND parent=?2 AND name=?3 AND deleted=0";
const char* const kHasChild = "SELECT 1 FROM nodes WHERE project=?1 AND parent=?2 AND deleted=0 LIMIT 1";
// Served from the covering index alone (migration 0002).
const char* const kListChildren =
    "SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, 0, target FROM nodes "
    "INDEXED BY nodes_listing WHERE project=?1 AND parent=?2 AND deleted=0 AND name>?3 ORDER BY name LIMIT ?4";
const char* const kChanges =
    "SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target FROM nodes "
    "WHERE project=?1 AND seq>?2 ORDER BY seq LIMIT ?3";
const char* const kAllLive =
    "SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target FROM nodes "
    "WHERE project=?1 AND deleted=0 ORDER BY parent, name";
const char* const kInsertNode =
    "INSERT INTO nodes(project, id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
const char* const kUpdateNode =
    "UPDATE nodes SET parent=?3, name=?4, mode=?5, size=?6, mtime_ns=?7, version=?8, seq=?9, deleted=?10 "
    "WHERE project=?1 AND id=?2";
const char* const kIdUsed = "SELECT 1 FROM nodes WHERE project=?1 AND id=?2";
const char* const kLastVersion = "SELECT max(version) FROM versions WHERE project=?1 AND node=?2";
const char* const kInsertVersion =
    "INSERT OR REPLACE INTO versions(project, node, version, size, manifest, seq) VALUES(?1, ?2, ?3, ?4, ?5, ?6)";
const char* const kGetVersion = "SELECT manifest FROM versions WHERE project=?1 AND node=?2 AND version=?3";
const char* const kBlockLen = "SELECT raw_length, refs, created_ns FROM blocks WHERE project=?1 AND hash=?2";
const char* const kBlockRef = "UPDATE blocks SET refs=refs+1 WHERE project=?1 AND hash=?2";
const char* const kLocate =
    "SELECT pack, offset, stored_length, raw_length, codec FROM blocks WHERE project=?1 AND hash=?2";
const char* const kInsertBlock =
    "INSERT INTO blocks(project, hash, pack, offset, stored_length, raw_length, codec, refs, created_ns) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8) "
    "ON CONFLICT(project, hash) DO UPDATE SET created_ns=excluded.created_ns WHERE blocks.refs=0";
const char* const kRefreshBlock = "UPDATE blocks SET created_ns=?3 WHERE project=?1 AND hash=?2 AND refs=0";
const char* const kProjectSeq = "SELECT seq FROM projects WHERE id=?1";
const char* const kSetProjectSeq = "UPDATE projects SET seq=?2 WHERE id=?1";
const char* const kProjectByName = "SELECT id, name, seq FROM projects WHERE name=?1";
const char* const kLookupToken =
    "SELECT t.project, p.name, t.device, t.read_only FROM tokens t JOIN projects p ON p.id=t.project "
    "WHERE t.hash=?1 AND t.revoked=0";

class SqliteMetadataStore final : public MetadataStore {
 public:
  explicit SqliteMetadataStore(std::string path) : path_(std::move(path)) {}

  Status Init() {
    ASSIGN_OR_RETURN(auto db, Db::Open(path_));
    writer_.db = std::move(db);
    RETURN_IF_ERROR(Migrate(writer_.db.get()));
    ASSIGN_OR_RETURN(checkpointer_, WalCheckpointer::Start(writer_.db.get()));
    return Status::Ok();
  }

  // --- projects ---
  Result<ProjectInfo> CreateProject(std::string_view name) override {
    RETURN_IF_ERROR(ValidateProjectName(name));
    std::lock_guard lock(write_mu_);
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    ASSIGN_OR_RETURN(Stmt * find, writer_.Get(kProjectByName));
    find->Bind(1, name);
    if (find->Step()) return Status::Exists("project " + std::string(name) + " already exists");
    ASSIGN_OR_RETURN(Stmt ins, writer_.db->Prepare("INSERT INTO projects(name, seq, created_ns) VALUES(?1, 1, ?2)"));
    ins.Bind(1, name).Bind(2, NowNs());
    RETURN_IF_ERROR(ins.Run());
    writer_.ResetAll();
    ProjectInfo p{writer_.db->LastInsertId(), std::string(name), 1};
    NodeRecord root;
    root.id = kRootId;
    root.kind = NodeKind::kDir;
    root.mode = 0755;
    root.mtime_ns = NowNs();
    root.version = 1;
    root.seq = 1;
    RETURN_IF_ERROR(InsertNode(p.id, root));
    RETURN_IF_ERROR(tx.Commit());
    return p;
  }

  Result<std::vector<ProjectInfo>> ListProjects() override {
    auto lease = Lease(/*mapped=*/false);
    if (!lease.ok()) return lease.status();
    std::vector<ProjectInfo> out;
    {
      // The statement goes back before the connection does.
      ASSIGN_OR_RETURN(Stmt s, (*lease)->db->Prepare("SELECT id, name, seq FROM projects ORDER BY name"));
      while (s.Step()) out.push_back({s.Int(0), s.Text(1), s.U64(2)});
      RETURN_IF_ERROR(s.status());
    }
    Release(std::move(*lease), /*mapped=*/false);
    return out;
  }

  Result<ProjectInfo> GetProject(std::string_view name) override {
    return WithReader<ProjectInfo>([&](Conn& c) -> Result<ProjectInfo> {
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kProjectByName));
      s->Bind(1, name);
      if (!s->Step()) {
        RETURN_IF_ERROR(s->status());
        return Status::NotFound("project " + std::string(name) + " does not exist");
      }
      return ProjectInfo{s->Int(0), s->Text(1), s->U64(2)};
    });
  }

  // --- tokens ---
  Status AddToken(const TokenHash& hash, int64_t project, std::string_view device, bool read_only) override {
    RETURN_IF_ERROR(ValidateDeviceName(device));
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare(
        "INSERT INTO tokens(hash, project, device, read_only, created_ns) VALUES(?1, ?2, ?3, ?4, ?5)"));
    s.BindBlob(1, hash.data(), hash.size()).Bind(2, project).Bind(3, device).Bind(4, read_only ? 1 : 0).Bind(5, NowNs());
    RETURN_IF_ERROR(s.Run());
    ASSIGN_OR_RETURN(Stmt d, writer_.db->Prepare(
        "INSERT OR IGNORE INTO devices(project, name, checkpoint, last_seen_ns) VALUES(?1, ?2, 0, 0)"));
    d.Bind(1, project).Bind(2, device);
    return d.Run();
  }

  Result<TokenInfo> LookupToken(const TokenHash& hash) override {
    return WithReader<TokenInfo>([&](Conn& c) -> Result<TokenInfo> {
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kLookupToken));
      s->BindBlob(1, hash.data(), hash.size());
      if (!s->Step()) {
        RETURN_IF_ERROR(s->status());
        return Status::Unauthenticated("unknown or revoked token");
      }
      return TokenInfo{s->Int(0), s->Text(1), s->Text(2), s->Int(3) != 0};
    });
  }

  Result<int> RevokeDeviceTokens(int64_t project, std::string_view device) override {
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare("UPDATE tokens SET revoked=1 WHERE project=?1 AND device=?2 AND revoked=0"));
    s.Bind(1, project).Bind(2, device);
    RETURN_IF_ERROR(s.Run());
    return writer_.db->Changes();
  }

  Result<int> RevokeToken(const TokenHash& hash) override {
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare("UPDATE tokens SET revoked=1 WHERE hash=?1 AND revoked=0"));
    s.BindBlob(1, hash.data(), hash.size());
    RETURN_IF_ERROR(s.Run());
    return writer_.db->Changes();
  }

  // --- nodes ---
  Result<NodePage> ListChildren(int64_t project, uint64_t parent, std::string_view after, int limit) override {
    return WithReader<NodePage>([&](Conn& c) -> Result<NodePage> {
      ASSIGN_OR_RETURN(NodeRecord dir, GetNodeOn(c, project, parent));
      if (dir.deleted) return Status::NotFound("directory " + std::to_string(parent) + " was deleted");
      if (dir.kind != NodeKind::kDir) return Status::Invalid("node " + std::to_string(parent) + " is not a directory");
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kListChildren));
      s->Bind(1, project).Bind(2, parent).Bind(3, after).Bind(4, limit + 1);
      NodePage page;
      page.items.reserve(limit);
      while (s->Step()) page.items.push_back(ReadNode(*s));
      RETURN_IF_ERROR(s->status());
      if (static_cast<int>(page.items.size()) > limit) {
        page.items.pop_back();
        page.next = page.items.back().name;
      }
      return page;
    });
  }

  Result<ChangesPage> Changes(int64_t project, uint64_t since, int limit) override {
    return WithReader<ChangesPage>([&](Conn& c) -> Result<ChangesPage> {
      ChangesPage page;
      ASSIGN_OR_RETURN(page.head, SeqOn(c, project));
      ASSIGN_OR_RETURN(uint64_t purged, PurgedSeqOn(c, project));
      if (since < purged)
        return Status(Code::kGone, "changes before seq " + std::to_string(purged) +
                                       " were purged (every device had applied them); load /snapshot instead");
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kChanges));
      s->Bind(1, project).Bind(2, since).Bind(3, limit + 1);
      while (s->Step()) page.items.push_back(ReadNode(*s));
      RETURN_IF_ERROR(s->status());
      if (static_cast<int>(page.items.size()) > limit) {
        page.items.pop_back();
        page.more = true;
      }
      return page;
    });
  }

  Result<uint64_t> ForEachLiveNode(int64_t project, const std::function<void(const NodeRecord&)>& each) override {
    // The whole table, on a connection that maps the file (Lease).
    return WithReader<uint64_t>([&](Conn& c) -> Result<uint64_t> {
      ASSIGN_OR_RETURN(uint64_t seq, SeqOn(c, project));
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kAllLive));
      s->Bind(1, project);
      NodeRecord n;  // one record, its strings' room reused row after row
      while (s->Step()) {
        ReadNodeInto(*s, &n);
        each(n);
      }
      RETURN_IF_ERROR(s->status());
      return seq;
    }, /*mapped=*/true);
  }

  Result<NodeRecord> GetNode(int64_t project, uint64_t id) override {
    return WithReader<NodeRecord>([&](Conn& c) { return GetNodeOn(c, project, id); });
  }

  Result<Manifest> GetManifest(int64_t project, uint64_t id, uint64_t version, uint64_t* version_out) override {
    return WithReader<Manifest>([&](Conn& c) -> Result<Manifest> {
      ASSIGN_OR_RETURN(NodeRecord n, GetNodeOn(c, project, id));
      if (n.kind != NodeKind::kFile) return Status::Invalid("node " + std::to_string(id) + " is not a file");
      if (version == 0) {
        if (n.deleted) return Status::NotFound("file " + std::to_string(id) + " was deleted");
        version = n.version;
      }
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kGetVersion));
      s->Bind(1, project).Bind(2, id).Bind(3, version);
      if (!s->Step()) {
        RETURN_IF_ERROR(s->status());
        return Status::NotFound("file " + std::to_string(id) + " has no version " + std::to_string(version));
      }
      if (version_out) *version_out = version;
      auto m = DecodeManifest(s->Blob(0));
      if (!m.ok()) return Status::Corruption("stored manifest of " + std::to_string(id) + ": " + m.status().message());
      return m;
    });
  }

  // --- blocks ---
  Result<std::vector<Hash128>> MissingBlocks(int64_t project, const std::vector<Hash128>& hashes,
                                             std::vector<Hash128>* stale, int64_t stale_age_ns) override {
    const int64_t stale_before_ns = NowNs() - stale_age_ns;
    return WithReader<std::vector<Hash128>>([&](Conn& c) -> Result<std::vector<Hash128>> {
      std::vector<Hash128> missing;
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kBlockLen));
      for (const auto& h : hashes) {
        s->Reset();
        s->Bind(1, project).BindBlob(2, h.bytes.data(), 16);
        if (!s->Step()) {
          RETURN_IF_ERROR(s->status());
          missing.push_back(h);
        } else if (stale && s->Int(1) == 0 && s->Int(2) < stale_before_ns) {
          stale->push_back(h);
        }
      }
      return missing;
    });
  }

  Status RefreshBlocks(int64_t project, const std::vector<Hash128>& hashes) override {
    std::lock_guard lock(write_mu_);
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    const int64_t now = NowNs();
    for (const auto& h : hashes) {
      ASSIGN_OR_RETURN(Stmt * s, writer_.Get(kRefreshBlock));
      s->Bind(1, project).BindBlob(2, h.bytes.data(), 16).Bind(3, now);
      RETURN_IF_ERROR(s->Run());
    }
    return tx.Commit();
  }

  Result<std::vector<BlockLocation>> TakeUnreferencedBlocks(int64_t age_ns, size_t limit) override {
    const int64_t before_ns = NowNs() - age_ns;
    std::lock_guard lock(write_mu_);
    // Durable before the caller frees the bytes: a delete lost to a power
    // cut would bring back rows naming holes (counted present, then
    // committed, unreadable for good).
    FullSync full(writer_.db.get());
    RETURN_IF_ERROR(full.status());
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    std::vector<BlockLocation> out;
    {
      // (Through the partial index of unreferenced blocks: a few rows, not the table.)
      ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare(
                                   "DELETE FROM blocks WHERE (project, hash) IN "
                                   "(SELECT project, hash FROM blocks WHERE refs=0 AND created_ns<?1 LIMIT ?2) "
                                   "RETURNING pack, offset, stored_length, raw_length, codec"));
      s.Bind(1, before_ns).Bind(2, static_cast<int64_t>(limit));
      while (s.Step()) {
        BlockLocation l;
        l.pack = s.U64(0);
        l.offset = s.U64(1);
        l.stored_length = static_cast<uint32_t>(s.U64(2));
        l.raw_length = static_cast<uint32_t>(s.U64(3));
        l.codec = static_cast<uint8_t>(s.U64(4));
        out.push_back(l);
      }
      RETURN_IF_ERROR(s.status());
    }
    RETURN_IF_ERROR(tx.Commit());
    return out;
  }

  Result<std::vector<BlockLocation>> LocateBlocks(int64_t project, const std::vector<Hash128>& hashes) override {
    return WithReader<std::vector<BlockLocation>>([&](Conn& c) -> Result<std::vector<BlockLocation>> {
      std::vector<BlockLocation> out;
      out.reserve(hashes.size());
      ASSIGN_OR_RETURN(Stmt * s, c.Get(kLocate));
      for (const auto& h : hashes) {
        s->Reset();
        s->Bind(1, project).BindBlob(2, h.bytes.data(), 16);
        if (!s->Step()) {
          RETURN_IF_ERROR(s->status());
          return Status::Corruption("block " + h.Hex() + " is referenced but not stored");
        }
        out.push_back({s->U64(0), s->U64(1), static_cast<uint32_t>(s->Int(2)), static_cast<uint32_t>(s->Int(3)),
                       static_cast<uint8_t>(s->Int(4))});
      }
      return out;
    });
  }

  Status AddBlocks(int64_t project, const std::vector<std::pair<Hash128, BlockLocation>>& blocks) override {
    std::lock_guard lock(write_mu_);
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    int64_t now = NowNs();
    for (const auto& [h, loc] : blocks) {
      ASSIGN_OR_RETURN(Stmt * s, writer_.Get(kInsertBlock));
      s->Bind(1, project).BindBlob(2, h.bytes.data(), 16).Bind(3, loc.pack).Bind(4, loc.offset)
          .Bind(5, loc.stored_length).Bind(6, loc.raw_length).Bind(7, int{loc.codec}).Bind(8, now);
      RETURN_IF_ERROR(s->Run());
    }
    return tx.Commit();
  }

  // --- commit ---
  Result<CommitResult> Commit(int64_t project, const std::vector<CommitOp>& ops,
                              const std::function<Status()>& barrier,
                              const std::function<void(const CommitResult&)>& committed,
                              const std::string& key, std::string_view device) override {
    std::lock_guard lock(write_mu_);
    if (barrier) RETURN_IF_ERROR(barrier());
    // Commits are acknowledged to clients that then drop their journal:
    // they must survive a power cut, not only a crash of the process, so
    // this transaction syncs the WAL. Other writes (block index, device
    // last-seen) are made durable by the next commit's sync.
    FullSync full(writer_.db.get());
    RETURN_IF_ERROR(full.status());
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    if (!key.empty()) {
      ASSIGN_OR_RETURN(Stmt k, writer_.db->Prepare("SELECT result FROM commit_keys WHERE project=?1 AND key=?2"));
      k.Bind(1, project).Bind(2, key);
      if (k.Step()) {
        nlohmann::json j = nlohmann::json::parse(k.Text(0), nullptr, false);
        CommitResult r;
        r.replayed = true;
        if (j.is_discarded() || !j.contains("records")) return Status::Corruption("stored commit result for key " + key);
        r.head = j.value("head", uint64_t{0});
        r.prev_head = j.value("prev_head", uint64_t{0});
        for (const auto& n : j["records"]) {
          ASSIGN_OR_RETURN(NodeRecord rec, NodeFromJson(n));
          r.records.push_back(std::move(rec));
        }
        return r;
      }
      RETURN_IF_ERROR(k.status());
    }
    CommitResult result;
    if (ops.empty()) {
      // Only asking for an earlier answer, and there is none under the key
      // (none was applied under it, or it was purged): this empty one is
      // stored under it, so a commit first sent with it and still on its
      // way (a proxy, the barrier) is answered that, not applied.
      ASSIGN_OR_RETURN(result.head, SeqOn(writer_, project));
      result.prev_head = result.head;
    } else {
      CommitApplier a(this, project);
      ASSIGN_OR_RETURN(a.seq, SeqOn(writer_, project));
      result.prev_head = a.seq;
      for (size_t i = 0; i < ops.size(); ++i) {
        ASSIGN_OR_RETURN(std::optional<CommitRefusal> refusal, a.Apply(ops[i]));
        if (refusal) {
          refusal->op_index = i;
          CommitResult r;
          r.refused = std::move(refusal);
          r.head = a.seq;
          return r;  // the transaction rolls back
        }
      }
      ASSIGN_OR_RETURN(Stmt * up, writer_.Get(kSetProjectSeq));
      up->Bind(1, project).Bind(2, a.seq);
      RETURN_IF_ERROR(up->Run());
      result.head = a.seq;
      for (uint64_t id : a.touched_order) {
        ASSIGN_OR_RETURN(NodeRecord n, GetNodeOn(writer_, project, id));
        result.records.push_back(std::move(n));
      }
    }
    if (!key.empty()) {
      nlohmann::json j{{"head", result.head}, {"prev_head", result.prev_head}, {"records", result.records}};
      ASSIGN_OR_RETURN(Stmt k, writer_.db->Prepare(
          "INSERT INTO commit_keys(project, key, result, created_ns, device) VALUES(?1, ?2, ?3, ?4, ?5)"));
      k.Bind(1, project).Bind(2, key).Bind(3, j.dump()).Bind(4, NowNs()).Bind(5, device);
      RETURN_IF_ERROR(k.Run());
      // Older than a day and not among its device's newest.
      ASSIGN_OR_RETURN(Stmt old, writer_.db->Prepare(
          "DELETE FROM commit_keys WHERE created_ns < ?1 AND rowid NOT IN (SELECT n.rowid FROM commit_keys n "
          "WHERE n.project = commit_keys.project AND n.device = commit_keys.device "
          "ORDER BY n.created_ns DESC LIMIT ?2)"));
      old.Bind(1, NowNs() - int64_t{86400} * 1'000'000'000).Bind(2, int64_t{kKeysKeptPerDevice});
      RETURN_IF_ERROR(old.Run());
    }
    writer_.ResetAll();
    RETURN_IF_ERROR(tx.Commit());
    if (committed && !ops.empty()) committed(result);
    return result;
  }

  // --- devices ---
  Status SetCheckpoint(int64_t project, std::string_view device, uint64_t seq) override {
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(uint64_t head, SeqOn(writer_, project));
    if (seq > head)
      return Status::Invalid("checkpoint " + std::to_string(seq) + " is beyond the project's head " + std::to_string(head));
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare(
        "INSERT INTO devices(project, name, checkpoint, last_seen_ns) VALUES(?1, ?2, ?3, ?4) "
        "ON CONFLICT(project, name) DO UPDATE SET checkpoint=excluded.checkpoint, last_seen_ns=excluded.last_seen_ns"));
    s.Bind(1, project).Bind(2, device).Bind(3, seq).Bind(4, NowNs());
    RETURN_IF_ERROR(s.Run());
    return PurgeLocked(project);
  }

  Result<bool> RetireDevice(int64_t project, std::string_view device) override {
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare("UPDATE devices SET retired=1 WHERE project=?1 AND name=?2"));
    s.Bind(1, project).Bind(2, device);
    RETURN_IF_ERROR(s.Run());
    if (writer_.db->Changes() == 0) return false;
    ASSIGN_OR_RETURN(Stmt k, writer_.db->Prepare("DELETE FROM commit_keys WHERE project=?1 AND device=?2"));
    k.Bind(1, project).Bind(2, device);
    RETURN_IF_ERROR(k.Run());
    RETURN_IF_ERROR(PurgeLocked(project));
    return true;
  }

  Result<uint64_t> PurgedSeq(int64_t project) override {
    return WithReader<uint64_t>([&](Conn& c) -> Result<uint64_t> { return PurgedSeqOn(c, project); });
  }

  // Requires write_mu_. Deletes the tombstones at or below every active
  // device's checkpoint and remembers how far that went.
  Status PurgeLocked(int64_t project) {
    ASSIGN_OR_RETURN(Stmt m, writer_.db->Prepare(
        "SELECT min(checkpoint), count(*) FROM devices WHERE project=?1 AND retired=0"));
    m.Bind(1, project);
    if (!m.Step()) return m.status();
    if (m.Int(1) == 0) return Status::Ok();  // no active device: keep history (a new one starts from the snapshot anyway)
    const uint64_t horizon = m.U64(0);
    m.Reset();  // no read left open into the BEGIN IMMEDIATE below: it would fail at once when busy
    ASSIGN_OR_RETURN(uint64_t purged, PurgedSeqOn(writer_, project));
    if (horizon <= purged) return Status::Ok();
    Transaction tx(writer_.db.get());
    RETURN_IF_ERROR(tx.status());
    ASSIGN_OR_RETURN(Stmt d, writer_.db->Prepare("DELETE FROM nodes WHERE project=?1 AND deleted=1 AND seq<=?2"));
    d.Bind(1, project).Bind(2, horizon);
    RETURN_IF_ERROR(d.Run());
    const int gone = writer_.db->Changes();
    ASSIGN_OR_RETURN(Stmt u, writer_.db->Prepare("UPDATE projects SET purged_seq=?2 WHERE id=?1"));
    u.Bind(1, project).Bind(2, horizon);
    RETURN_IF_ERROR(u.Run());
    RETURN_IF_ERROR(tx.Commit());
    if (gone > 0) spdlog::info("project {}: purged {} tombstones at or below seq {}", project, gone, horizon);
    return Status::Ok();
  }

  Result<uint64_t> PurgedSeqOn(Conn& c, int64_t project) {
    ASSIGN_OR_RETURN(Stmt s, c.db->Prepare("SELECT purged_seq FROM projects WHERE id=?1"));
    s.Bind(1, project);
    if (!s.Step()) return s.status().ok() ? Status::NotFound("no such project") : s.status();
    return s.U64(0);
  }

  Status TouchDevice(int64_t project, std::string_view device) override {
    std::lock_guard lock(write_mu_);
    ASSIGN_OR_RETURN(Stmt s, writer_.db->Prepare(
        "INSERT INTO devices(project, name, checkpoint, last_seen_ns) VALUES(?1, ?2, 0, ?3) "
        "ON CONFLICT(project, name) DO UPDATE SET last_seen_ns=excluded.last_seen_ns"));
    s.Bind(1, project).Bind(2, device).Bind(3, NowNs());
    return s.Run();
  }

  Result<std::vector<DeviceInfo>> ListDevices(int64_t project) override {
    return WithReader<std::vector<DeviceInfo>>([&](Conn& c) -> Result<std::vector<DeviceInfo>> {
      ASSIGN_OR_RETURN(Stmt s, c.db->Prepare(
          "SELECT name, checkpoint, last_seen_ns, retired FROM devices WHERE project=?1 ORDER BY name"));
      s.Bind(1, project);
      std::vector<DeviceInfo> out;
      while (s.Step()) out.push_back({s.Text(0), s.U64(1), s.Int(2), s.Int(3) != 0});
      RETURN_IF_ERROR(s.status());
      return out;
    });
  }

  Result<StoreStats> Stats() override {
    return WithReader<StoreStats>([&](Conn& c) -> Result<StoreStats> {
      ASSIGN_OR_RETURN(Stmt s, c.db->Prepare("SELECT count(*), coalesce(sum(raw_length), 0) FROM blocks"));
      StoreStats st;
      if (s.Step()) {
        st.blocks = s.U64(0);
        st.block_bytes = s.U64(1);
      }
      RETURN_IF_ERROR(s.status());
      return st;
    });
  }

 private:
  // Applies ops one by one inside the writer's transaction.
  struct CommitApplier {
    SqliteMetadataStore* store;
    int64_t project;
    uint64_t seq = 0;
    std::vector<uint64_t> touched_order;
    std::unordered_set<uint64_t> touched;

    CommitApplier(SqliteMetadataStore* s, int64_t p) : store(s), project(p) {}

    void Touch(uint64_t id) {
      if (touched.insert(id).second) touched_order.push_back(id);
    }

    static CommitRefusal Refuse(Code code, std::string reason, std::string message, uint64_t node = 0,
                                uint64_t version = 0) {
      CommitRefusal r;
      r.code = code;
      r.reason = std::move(reason);
      r.message = std::move(message);
      r.node = node;
      r.current_version = version;
      return r;
    }

    // The live node `id`, or a refusal.
    Result<std::optional<NodeRecord>> Live(uint64_t id, std::optional<CommitRefusal>* refusal) {
      auto n = store->GetNodeOn(store->writer_, project, id);
      if (!n.ok()) {
        if (n.status().code() != Code::kNotFound) return n.status();
        *refusal = Refuse(Code::kNotFound, "no_such_node", "node " + std::to_string(id) + " does not exist", id);
        return std::optional<NodeRecord>();
      }
      if (n->deleted) {
        *refusal = Refuse(Code::kConflict, "deleted", "node " + std::to_string(id) + " was deleted", id, n->version);
        return std::optional<NodeRecord>();
      }
      return std::optional<NodeRecord>(std::move(*n));
    }

    Result<std::optional<NodeRecord>> LiveDir(uint64_t id, std::optional<CommitRefusal>* refusal) {
      ASSIGN_OR_RETURN(auto d, Live(id, refusal));
      if (d && d->kind != NodeKind::kDir) {
        *refusal = Refuse(Code::kInvalidArgument, "not_a_directory", "parent " + std::to_string(id) + " is not a directory", id);
        return std::optional<NodeRecord>();
      }
      return d;
    }

    // Checks every block exists with the length its position needs.
    Result<std::optional<CommitRefusal>> CheckBlocks(const CommitOp& op) {
      std::vector<Hash128> missing;
      for (size_t i = 0; i < op.blocks.size(); ++i) {
        ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kBlockLen));
        s->Bind(1, project).BindBlob(2, op.blocks[i].bytes.data(), 16);
        if (!s->Step()) {
          RETURN_IF_ERROR(s->status());
          missing.push_back(op.blocks[i]);
          continue;
        }
        uint64_t want = i + 1 < op.blocks.size() ? kBlockSize : op.size - i * kBlockSize;
        if (s->U64(0) != want) {
          return std::optional<CommitRefusal>(Refuse(
              Code::kInvalidArgument, "block_length",
              "block " + std::to_string(i) + " (" + op.blocks[i].Hex() + ") holds " + std::to_string(s->U64(0)) +
                  " bytes; at that position the file needs " + std::to_string(want)));
        }
      }
      if (!missing.empty()) {
        CommitRefusal r = Refuse(Code::kInvalidArgument, "missing_blocks",
                                 std::to_string(missing.size()) + " referenced blocks are not on the server; upload them first");
        r.missing = std::move(missing);
        return std::optional<CommitRefusal>(std::move(r));
      }
      return std::optional<CommitRefusal>();
    }

    Status StoreVersion(uint64_t id, uint64_t version, const CommitOp& op) {
      Manifest m{op.size, op.blocks};
      std::string bytes = EncodeManifest(m);
      ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kInsertVersion));
      s->Bind(1, project).Bind(2, id).Bind(3, version).Bind(4, op.size).BindBlob(5, bytes.data(), bytes.size()).Bind(6, seq);
      RETURN_IF_ERROR(s->Run());
      for (const auto& h : op.blocks) {
        ASSIGN_OR_RETURN(Stmt * r, store->writer_.Get(kBlockRef));
        r->Bind(1, project).BindBlob(2, h.bytes.data(), 16);
        RETURN_IF_ERROR(r->Run());
      }
      return Status::Ok();
    }

    Status Save(const NodeRecord& n) {
      ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kUpdateNode));
      s->Bind(1, project).Bind(2, n.id).Bind(3, n.parent).Bind(4, n.name).Bind(5, n.mode).Bind(6, n.size)
          .Bind(7, n.mtime_ns).Bind(8, n.version).Bind(9, n.seq).Bind(10, n.deleted ? 1 : 0);
      RETURN_IF_ERROR(s->Run());
      Touch(n.id);
      return Status::Ok();
    }

    Result<std::optional<NodeRecord>> FindName(uint64_t parent, const std::string& name) {
      ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kFindName));
      s->Bind(1, project).Bind(2, parent).Bind(3, name);
      if (s->Step()) return std::optional<NodeRecord>(ReadNode(*s));
      RETURN_IF_ERROR(s->status());
      return std::optional<NodeRecord>();
    }

    Result<bool> HasChildren(uint64_t dir) {
      ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kHasChild));
      s->Bind(1, project).Bind(2, dir);
      bool any = s->Step();
      RETURN_IF_ERROR(s->status());
      return any;
    }

    std::optional<CommitRefusal> StaleBase(const CommitOp& op, const NodeRecord& n) {
      if (op.has_base && op.base != n.version)
        return Refuse(Code::kConflict, "stale_base",
                      "node " + std::to_string(n.id) + " is at version " + std::to_string(n.version) +
                          ", not the base " + std::to_string(op.base),
                      n.id, n.version);
      return std::nullopt;
    }

    // Whether `n` may move into directory `to`: not the root, and not a
    // directory into its own subtree.
    Result<std::optional<CommitRefusal>> CheckMove(const NodeRecord& n, uint64_t to) {
      if (n.id == kRootId) return std::optional(Refuse(Code::kInvalidArgument, "root", "the root cannot be renamed", n.id));
      if (n.kind != NodeKind::kDir) return std::optional<CommitRefusal>();
      uint64_t cur = to;
      for (int depth = 0; cur != 0 && depth < 100000; ++depth) {
        if (cur == n.id)
          return std::optional(Refuse(Code::kInvalidArgument, "into_own_subtree", "directory " + std::to_string(n.id) + " cannot move into its own subtree", n.id));
        if (cur == kRootId) break;
        ASSIGN_OR_RETURN(NodeRecord up, store->GetNodeOn(store->writer_, project, cur));
        cur = up.parent;
      }
      return std::optional<CommitRefusal>();
    }

    // A rename naming `exchange`: that node takes n's place and n goes to
    // op's parent and name (RENAME_EXCHANGE). n's checks are done. The
    // name n goes to must be free or the other's, wherever the other is
    // now (moved elsewhere meanwhile: the swap still puts both where this
    // device has them).
    Result<std::optional<CommitRefusal>> Exchange(const CommitOp& op, NodeRecord n) {
      std::optional<CommitRefusal> refusal;
      if (n.parent == op.parent && n.name == op.name) return refusal;  // done already (a journal replayed)
      ASSIGN_OR_RETURN(auto other, Live(op.exchange, &refusal));
      if (!other) return refusal;
      ASSIGN_OR_RETURN(refusal, CheckMove(*other, n.parent));
      if (refusal) return refusal;
      ASSIGN_OR_RETURN(auto target, FindName(op.parent, op.name));
      if (target && target->id != n.id && target->id != other->id)
        return std::optional(Refuse(Code::kAlreadyExists, "name_taken", "\"" + op.name + "\" already exists in directory " + std::to_string(op.parent), target->id, target->version));
      // Live names are unique: n steps out of the way (under no directory)
      // while the other takes its place.
      const uint64_t from_parent = n.parent;
      const std::string from_name = n.name;
      n.parent = 0;
      n.name = "\x01exchange";
      RETURN_IF_ERROR(Save(n));
      other->parent = from_parent;
      other->name = from_name;
      other->seq = ++seq;
      RETURN_IF_ERROR(Save(*other));
      n.parent = op.parent;
      n.name = op.name;
      n.seq = ++seq;
      RETURN_IF_ERROR(Save(n));
      return refusal;
    }

    Result<std::optional<CommitRefusal>> Apply(const CommitOp& op) {
      std::optional<CommitRefusal> refusal;
      const int64_t now = NowNs();
      switch (op.type) {
        case OpType::kCreate:
        case OpType::kMkdir:
        case OpType::kSymlink: {
          ASSIGN_OR_RETURN(Stmt * used, store->writer_.Get(kIdUsed));
          used->Bind(1, project).Bind(2, op.id);
          const bool taken = used->Step();
          RETURN_IF_ERROR(used->status());
          // A create naming a deleted file brings that file back (an edit
          // made elsewhere against its delete keeps its node), at a version
          // above its tombstone's; any other used id is refused.
          std::optional<NodeRecord> back;
          if (taken && op.type == OpType::kCreate) {
            auto old = store->GetNodeOn(store->writer_, project, op.id);
            if (!old.ok() && old.status().code() != Code::kNotFound) return old.status();
            if (old.ok() && old->deleted && old->kind == NodeKind::kFile) back = std::move(*old);
          }
          if ((taken && !back) || op.id == kRootId)
            return std::optional(Refuse(Code::kAlreadyExists, "id_taken", "node id " + std::to_string(op.id) + " is already used; pick another", op.id));
          ASSIGN_OR_RETURN(auto parent, LiveDir(op.parent, &refusal));
          if (!parent) return refusal;
          ASSIGN_OR_RETURN(auto existing, FindName(op.parent, op.name));
          if (existing)
            return std::optional(Refuse(Code::kAlreadyExists, "name_taken", "\"" + op.name + "\" already exists in directory " + std::to_string(op.parent), existing->id, existing->version));
          if (op.type == OpType::kCreate) {
            ASSIGN_OR_RETURN(refusal, CheckBlocks(op));
            if (refusal) return refusal;
          }
          NodeRecord n;
          n.id = op.id;
          n.parent = op.parent;
          n.name = op.name;
          n.kind = op.type == OpType::kCreate ? NodeKind::kFile : op.type == OpType::kMkdir ? NodeKind::kDir : NodeKind::kSymlink;
          n.mode = op.has_mode ? op.mode : (n.kind == NodeKind::kDir ? 0755 : n.kind == NodeKind::kSymlink ? 0777 : 0644);
          n.size = op.type == OpType::kCreate ? op.size : op.type == OpType::kSymlink ? op.target.size() : 0;
          n.mtime_ns = op.has_mtime ? op.mtime_ns : now;
          n.version = back ? back->version + 1 : 1;
          if (op.type == OpType::kCreate && !back) {
            // A file whose tombstone was purged keeps its old versions:
            // the new one comes after them.
            ASSIGN_OR_RETURN(Stmt * last, store->writer_.Get(kLastVersion));
            last->Bind(1, project).Bind(2, op.id);
            if (last->Step() && !last->IsNull(0)) n.version = last->U64(0) + 1;
            RETURN_IF_ERROR(last->status());
          }
          n.seq = ++seq;
          n.target = op.target;
          if (back) RETURN_IF_ERROR(Save(n));
          else RETURN_IF_ERROR(store->InsertNode(project, n));
          if (op.type == OpType::kCreate) RETURN_IF_ERROR(StoreVersion(n.id, n.version, op));
          Touch(n.id);
          return refusal;
        }
        case OpType::kWrite: {
          ASSIGN_OR_RETURN(auto n, Live(op.id, &refusal));
          if (!n) return refusal;
          if (n->kind != NodeKind::kFile)
            return std::optional(Refuse(Code::kInvalidArgument, "not_a_file", "node " + std::to_string(op.id) + " is not a file", op.id, n->version));
          if ((refusal = StaleBase(op, *n))) return refusal;
          ASSIGN_OR_RETURN(refusal, CheckBlocks(op));
          if (refusal) return refusal;
          n->version++;
          n->seq = ++seq;
          n->size = op.size;
          n->mtime_ns = op.has_mtime ? op.mtime_ns : now;
          RETURN_IF_ERROR(StoreVersion(n->id, n->version, op));
          RETURN_IF_ERROR(Save(*n));
          return refusal;
        }
        case OpType::kSetattr: {
          ASSIGN_OR_RETURN(auto n, Live(op.id, &refusal));
          if (!n) return refusal;
          if ((refusal = StaleBase(op, *n))) return refusal;
          if (op.has_mode) n->mode = op.mode;
          if (op.has_mtime) n->mtime_ns = op.mtime_ns;
          n->version++;
          n->seq = ++seq;
          if (n->kind == NodeKind::kFile) {
            // The new version keeps the old content.
            ASSIGN_OR_RETURN(Stmt * g, store->writer_.Get(kGetVersion));
            g->Bind(1, project).Bind(2, n->id).Bind(3, n->version - 1);
            if (!g->Step()) return Status::Corruption("file " + std::to_string(n->id) + " lacks its manifest");
            std::string manifest(g->Blob(0));
            ASSIGN_OR_RETURN(Stmt * s, store->writer_.Get(kInsertVersion));
            s->Bind(1, project).Bind(2, n->id).Bind(3, n->version).Bind(4, n->size).BindBlob(5, manifest.data(), manifest.size()).Bind(6, seq);
            RETURN_IF_ERROR(s->Run());
          }
          RETURN_IF_ERROR(Save(*n));
          return refusal;
        }
        case OpType::kDelete: {
          ASSIGN_OR_RETURN(auto n, Live(op.id, &refusal));
          if (!n) return refusal;
          if (n->id == kRootId) return std::optional(Refuse(Code::kInvalidArgument, "root", "the root cannot be deleted", n->id));
          if ((refusal = StaleBase(op, *n))) return refusal;
          if (n->kind == NodeKind::kDir) {
            ASSIGN_OR_RETURN(bool busy, HasChildren(n->id));
            if (busy) return std::optional(Refuse(Code::kNotEmpty, "not_empty", "directory " + std::to_string(n->id) + " is not empty", n->id, n->version));
          }
          n->deleted = true;
          n->version++;
          n->seq = ++seq;
          RETURN_IF_ERROR(Save(*n));
          return refusal;
        }
        case OpType::kRename: {
          ASSIGN_OR_RETURN(auto n, Live(op.id, &refusal));
          if (!n) return refusal;
          if (n->id == kRootId) return std::optional(Refuse(Code::kInvalidArgument, "root", "the root cannot be renamed", n->id));
          if ((refusal = StaleBase(op, *n))) return refusal;
          ASSIGN_OR_RETURN(auto parent, LiveDir(op.parent, &refusal));
          if (!parent) return refusal;
          ASSIGN_OR_RETURN(refusal, CheckMove(*n, op.parent));
          if (refusal) return refusal;
          if (op.exchange) return Exchange(op, std::move(*n));
          ASSIGN_OR_RETURN(auto target, FindName(op.parent, op.name));
          if (target && target->id != n->id) {
            if (!op.replace)
              return std::optional(Refuse(Code::kAlreadyExists, "name_taken", "\"" + op.name + "\" already exists in directory " + std::to_string(op.parent), target->id, target->version));
            if ((target->kind == NodeKind::kDir) != (n->kind == NodeKind::kDir))
              return std::optional(Refuse(Code::kConflict, target->kind == NodeKind::kDir ? "is_a_directory" : "not_a_directory",
                                          "cannot replace \"" + op.name + "\": one is a directory, the other is not", target->id, target->version));
            if (target->kind == NodeKind::kDir) {
              ASSIGN_OR_RETURN(bool busy, HasChildren(target->id));
              if (busy) return std::optional(Refuse(Code::kNotEmpty, "not_empty", "directory \"" + op.name + "\" is not empty", target->id, target->version));
            }
            target->deleted = true;
            target->version++;
            target->seq = ++seq;
            RETURN_IF_ERROR(Save(*target));
          }
          n->parent = op.parent;
          n->name = op.name;
          n->seq = ++seq;
          RETURN_IF_ERROR(Save(*n));
          return refusal;
        }
      }
      return refusal;
    }
  };

  Status Migrate(Db* db) {
    RETURN_IF_ERROR(db->Exec("CREATE TABLE IF NOT EXISTS schema_migrations (number INTEGER PRIMARY KEY, name TEXT, applied_ns INTEGER)"));
    for (const auto& m : Migrations()) {
      // Checked inside the write transaction: a server and an admin command
      // starting together must not both apply a migration.
      Transaction tx(db);
      RETURN_IF_ERROR(tx.status());
      ASSIGN_OR_RETURN(Stmt q, db->Prepare("SELECT 1 FROM schema_migrations WHERE number=?1"));
      q.Bind(1, m.number);
      bool applied = q.Step();
      RETURN_IF_ERROR(q.status());
      q = Stmt();
      if (applied) continue;
      Status st = db->Exec(m.sql);
      if (!st.ok()) return Status::IoError("migration " + std::string(m.name) + " failed: " + st.message());
      ASSIGN_OR_RETURN(Stmt ins, db->Prepare("INSERT INTO schema_migrations(number, name, applied_ns) VALUES(?1, ?2, ?3)"));
      ins.Bind(1, m.number).Bind(2, std::string_view(m.name)).Bind(3, NowNs());
      RETURN_IF_ERROR(ins.Run());
      RETURN_IF_ERROR(tx.Commit());
      spdlog::info("applied migration {}", m.name);
    }
    return Status::Ok();
  }

  Status InsertNode(int64_t project, const NodeRecord& n) {
    ASSIGN_OR_RETURN(Stmt * s, writer_.Get(kInsertNode));
    s->Bind(1, project).Bind(2, n.id).Bind(3, n.parent).Bind(4, n.name).Bind(5, static_cast<int>(n.kind))
        .Bind(6, n.mode).Bind(7, n.size).Bind(8, n.mtime_ns).Bind(9, n.version).Bind(10, n.seq).Bind(11, n.deleted ? 1 : 0);
    if (n.kind == NodeKind::kSymlink) s->Bind(12, n.target); else s->BindNull(12);
    return s->Run();
  }

  Result<NodeRecord> GetNodeOn(Conn& c, int64_t project, uint64_t id) {
    ASSIGN_OR_RETURN(Stmt * s, c.Get(kGetNode));
    s->Bind(1, project).Bind(2, id);
    if (!s->Step()) {
      RETURN_IF_ERROR(s->status());
      return Status::NotFound("node " + std::to_string(id) + " does not exist");
    }
    return ReadNode(*s);
  }

  Result<uint64_t> SeqOn(Conn& c, int64_t project) {
    ASSIGN_OR_RETURN(Stmt * s, c.Get(kProjectSeq));
    s->Bind(1, project);
    if (!s->Step()) {
      RETURN_IF_ERROR(s->status());
      return Status::NotFound("project does not exist");
    }
    const uint64_t seq = s->U64(0);
    // Reset at once: a statement left stepped holds its read transaction
    // open, and on the writer a snapshot gone stale (another process wrote,
    // e.g. `tidefs admin`) makes every later write "database is locked".
    s->Reset();
    return seq;
  }

  // A reader. A `mapped` one sees the database file through a mapping:
  // a scan of the whole table (the snapshot's) reads the kernel's page
  // cache in place instead of copying every page into SQLite's own cache
  // of fresh memory (a snapshot of a million nodes: 1,077-1,085 -> 877-956
  // ms, page caches dropped 2,944-2,961 -> 1,345-1,458, docs/benchmarks.md). Only such scans use one: a read error on a mapped
  // page is a SIGBUS, not an error code, and each mapping keeps its page
  // tables (4 MiB for 2 GiB), so a few are kept. SQLite maps at most 2 GiB
  // by default (SQLITE_MAX_MMAP_SIZE); the rest of a larger file is read
  // as before.
  Result<std::unique_ptr<Conn>> Lease(bool mapped) {
    {
      std::lock_guard lock(pool_mu_);
      auto& pool = mapped ? mapped_pool_ : pool_;
      if (!pool.empty()) {
        auto c = std::move(pool.back());
        pool.pop_back();
        return c;
      }
    }
    ASSIGN_OR_RETURN(auto db, Db::Open(path_));
    if (mapped) RETURN_IF_ERROR(db->Exec("PRAGMA mmap_size=2147418112"));
    auto c = std::make_unique<Conn>();
    c->db = std::move(db);
    return c;
  }

  void Release(std::unique_ptr<Conn> c, bool mapped) {
    std::lock_guard lock(pool_mu_);
    auto& pool = mapped ? mapped_pool_ : pool_;
    if (pool.size() < (mapped ? 4u : 64u)) pool.push_back(std::move(c));
  }

  template <typename T, typename F>
  Result<T> WithReader(F&& f, bool mapped = false) {
    auto lease = Lease(mapped);
    if (!lease.ok()) return lease.status();
    std::unique_ptr<Conn> c = std::move(*lease);
    // One read transaction for all the statements: each statement on its
    // own began and ended one (WAL read locks, a page cache checked
    // against the WAL anew), and a lookup of 16,000 block hashes spent
    // more in that than in the lookups. The reads also see one snapshot.
    Result<T> r = [&]() -> Result<T> {
      Transaction tx(c->db.get(), /*immediate=*/false);
      RETURN_IF_ERROR(tx.status());
      Result<T> out = f(*c);
      c->ResetAll();
      if (out.ok()) RETURN_IF_ERROR(tx.Commit());
      return out;
    }();
    // A connection still in a transaction (a ROLLBACK that failed) would
    // refuse every later BEGIN: it is not kept.
    if (!sqlite3_get_autocommit(c->db->raw())) return r;
    Release(std::move(c), mapped);
    return r;
  }

  const std::string path_;
  std::mutex write_mu_;
  Conn writer_;  // guarded by write_mu_
  std::unique_ptr<WalCheckpointer> checkpointer_;  // of writer_'s commits; goes first
  std::mutex pool_mu_;
  std::vector<std::unique_ptr<Conn>> pool_;         // guarded by pool_mu_
  std::vector<std::unique_ptr<Conn>> mapped_pool_;  // guarded by pool_mu_ (Lease)
};

}  // namespace

Result<std::unique_ptr<MetadataStore>> OpenSqliteMetadataStore(const std::string& path) {
  auto store = std::make_unique<SqliteMetadataStore>(path);
  RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<MetadataStore>(std::move(store));
}

}  // namespace tidefs
