#include "mount/writeback.h"

#include <time.h>

#include <unordered_set>

#include <spdlog/spdlog.h>

#include "client/importer.h"
#include "client/uploader.h"
#include "core/names.h"

namespace tidefs {
namespace {

constexpr size_t kBatchEntries = 1000;
// Group commit: a change goes out at once when nothing is being sent (after
// a breath, for the rest of a burst: a close and the rename that follows);
// changes made while a batch is in flight go together in the next one.
constexpr auto kIdle = std::chrono::milliseconds(2);
constexpr uint64_t kShowUploadsFrom = 1 << 20;  // smaller files come and go too fast to show

// Ops that name the node's version (a rename too: a rename must not make a
// remote change to the file look like ours).
bool NeedsBase(OpType t) {
  return t == OpType::kWrite || t == OpType::kDelete || t == OpType::kSetattr || t == OpType::kRename;
}
bool Creates(OpType t) { return t == OpType::kCreate || t == OpType::kMkdir || t == OpType::kSymlink; }

}  // namespace

WriteBack::WriteBack(ApiClient* client, LocalState* state, Tree* tree, ChunkCache* cache, std::string device,
                     std::shared_future<void> ready)
    : client_(client), state_(state), tree_(tree), cache_(cache), device_(std::move(device)), ready_(std::move(ready)) {
  // What an earlier mount left in the journal (a cold mount, whose state is
  // not ready yet, has none).
  if (ready_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    auto pending = state_->PendingJournal(std::numeric_limits<uint32_t>::max());
    if (pending.ok())
      for (const auto& e : *pending) ++pending_ids_[e.op.id];
    else
      spdlog::error("reading the journal failed: {}", pending.status().ToString());
  }
  thread_ = std::thread([this] { Loop(); });
}

WriteBack::~WriteBack() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

Status WriteBack::Record(const std::vector<NodeRecord>& rows, const std::vector<LocalState::JournalEntry>& entries) {
  ready_.wait();
  // Versions are the server's to move (SetVersion): a record read before
  // a commit landed must not carry the older one back.
  std::vector<NodeRecord> fixed = rows;
  for (auto& r : fixed) {
    if (r.deleted) continue;
    auto cur = tree_->Get(r.id);
    if (cur.ok() && *cur) r.version = std::max(r.version, (*cur)->version);
  }
  RETURN_IF_ERROR(state_->RecordLocal(fixed, entries));
  for (const auto& r : fixed) tree_->Apply(r);
  {
    std::lock_guard lock(ids_mu_);
    for (const auto& e : entries) ++pending_ids_[e.op.id];
  }
  if (!entries.empty()) {
    std::lock_guard lock(mu_);
    kicked_ = true;
  }
  cv_.notify_all();
  return Status::Ok();
}

void WriteBack::Completed(const std::vector<LocalState::JournalEntry>& entries, uint64_t last) {
  std::lock_guard lock(ids_mu_);
  for (const auto& e : entries) {
    if (e.seq > last) break;
    auto it = pending_ids_.find(e.op.id);
    if (it != pending_ids_.end() && --it->second <= 0) pending_ids_.erase(it);
  }
}

bool WriteBack::HasPending(uint64_t id) {
  std::lock_guard lock(ids_mu_);
  return pending_ids_.count(id) > 0;
}

uint64_t WriteBack::Pending() {
  auto n = state_->JournalSize();
  return n.ok() ? *n : 0;
}

void WriteBack::Loop() {
  ready_.wait();
  auto backoff = std::chrono::milliseconds(0);
  std::unique_lock lock(mu_);
  for (;;) {
    if (backoff.count() > 0) cv_.wait_for(lock, backoff, [this] { return stopping_; });
    else cv_.wait_for(lock, std::chrono::seconds(2), [this] { return stopping_ || kicked_; });
    if (stopping_) return;
    bool was_kicked = kicked_;
    kicked_ = false;
    lock.unlock();
    if (was_kicked) std::this_thread::sleep_for(kIdle);  // let a burst of changes gather
    Status st;
    for (int i = 0; i < 1000 && st.ok() && Pending() > 0; ++i) st = FlushBatch();
    if (!st.ok()) {
      backoff = std::min<std::chrono::milliseconds>(std::max(backoff * 2, std::chrono::milliseconds(250)),
                                                     std::chrono::milliseconds(10000));
      spdlog::warn("write-back: {} ({} changes kept in the journal; trying again in {} ms)", st.ToString(), Pending(),
                   backoff.count());
    } else {
      backoff = std::chrono::milliseconds(0);
    }
    lock.lock();
  }
}

Status WriteBack::Drain(std::chrono::seconds patience) {
  ready_.wait();
  auto last_progress = std::chrono::steady_clock::now();
  uint64_t left = Pending();
  while (left > 0) {
    if (left) spdlog::info("unmount: {} changes to send", left);
    Status st = FlushBatch();
    const uint64_t now_left = Pending();
    const bool progress = now_left < left;
    if (progress) last_progress = std::chrono::steady_clock::now();
    left = now_left;
    if (left == 0) break;
    if (!st.ok() || !progress) {
      if (std::chrono::steady_clock::now() - last_progress > patience)
        return Status::Unavailable(std::to_string(left) + " changes could not be sent (" +
                                   (st.ok() ? std::string("no progress") : st.message()) +
                                   "); they stay in the journal and go out on the next mount");
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
    }
  }
  return Status::Ok();
}

std::string WriteBack::ConflictName(const std::string& name) const {
  time_t t = time(nullptr);
  struct tm tm;
  localtime_r(&t, &tm);
  char stamp[32];
  strftime(stamp, sizeof stamp, "%Y-%m-%d %H%M", &tm);
  std::string stem = name, ext;
  auto dot = name.rfind('.');
  if (dot != std::string::npos && dot > 0) {
    stem = name.substr(0, dot);
    ext = name.substr(dot);
  }
  std::string tag = " (conflict from " + device_ + " " + stamp + ")" + ext;
  if (stem.size() + tag.size() > kMaxNameBytes) {
    stem.resize(kMaxNameBytes > tag.size() ? kMaxNameBytes - tag.size() : 0);
    while (!stem.empty() && (static_cast<unsigned char>(stem.back()) & 0xC0) == 0x80) stem.pop_back();  // whole characters
    if (!stem.empty() && (static_cast<unsigned char>(stem.back()) & 0xC0) == 0xC0) stem.pop_back();
  }
  return stem + tag;
}

Status WriteBack::FlushBatch() {
  std::lock_guard flush_lock(flush_mu_);
  ASSIGN_OR_RETURN(auto entries, state_->PendingJournal(kBatchEntries));
  if (entries.empty()) return Status::Ok();
  // A commit whose answer was lost goes again as the same entries (and so,
  // unless a file was written since, the same body and idempotency key):
  // the server answers a retry of what it applied with its first answer.
  ASSIGN_OR_RETURN(uint64_t inflight, state_->InflightBatch());
  if (inflight) {
    while (!entries.empty() && entries.back().seq > inflight) entries.pop_back();
    if (entries.empty()) RETURN_IF_ERROR(state_->SetInflightBatch(0));
    if (entries.empty()) return Status::Ok();
  }
  std::vector<CommitOp> ops;
  std::unordered_map<uint64_t, size_t> created;  // node -> its create op in `ops`
  struct Sent {
    uint64_t id;
    ChunkCache::FlushView view;
    Manifest m;
  };
  std::vector<Sent> sent;
  std::unordered_set<uint64_t> flushed;
  std::unordered_map<uint64_t, uint64_t> based;  // node -> the version our op in this batch names
  uint64_t last = 0;
  for (const auto& e : entries) {
    CommitOp op = e.op;
    if (!e.flush) {
      // An op that names a version of a node created in this batch waits
      // for the next one (the version comes from this commit).
      // So does a second op on one node (the first moves its version).
      if (NeedsBase(op.type) && (created.count(op.id) || based.count(op.id))) break;
      if (NeedsBase(op.type)) {
        // The version we last knew: the tree's, or (a node deleted here)
        // the one our own commits gave it.
        auto n = tree_->Get(op.id);
        if (n.ok() && *n) op.base = (*n)->version;
        else if (auto v = versions_.find(op.id); v != versions_.end()) op.base = v->second;
        op.has_base = true;
        based[op.id] = op.base;
      }
      if (Creates(op.type)) created[op.id] = ops.size();
      ops.push_back(std::move(op));
    } else if (!flushed.count(op.id)) {
      if (based.count(op.id)) break;  // after another op on this node: next batch
      ASSIGN_OR_RETURN(std::optional<NodeRecord> n, tree_->Get(op.id));
      if (n && n->kind == NodeKind::kFile) {
        ASSIGN_OR_RETURN(auto view, cache_->BeginFlush(*n));
        UploadStats up;
        std::string path;
        // Big uploads are shown while they run (`tidefs status`, other devices).
        ProgressFn progress;
        {
          std::lock_guard plock(progress_mu_);
          progress = progress_;
        }
        const bool show = progress && view.size >= kShowUploadsFrom;
        if (show) {
          path = tree_->PathOf(n->id);
          const auto t0 = std::chrono::steady_clock::now();
          const uint64_t total = view.size;
          up.on_progress = [progress, path, t0, total](uint64_t done) {
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            progress(path, done, total, secs > 0 ? done / secs : 0, false);
          };
          progress(path, 0, total, 0, false);
        }
        auto uploaded = UploadFileBlocks(client_, view.fd, view.size, view.base, view.dirty, 8, &up);
        if (show) progress(path, view.size, view.size, 0, true);
        if (!uploaded.ok()) return uploaded.status();
        auto blocks = std::move(*uploaded);
        Manifest m;
        m.size = view.size;
        m.blocks = blocks;
        auto c = created.find(n->id);
        if (c != created.end()) {
          ops[c->second].size = view.size;
          ops[c->second].blocks = blocks;
          ops[c->second].has_mtime = true;
          ops[c->second].mtime_ns = n->mtime_ns;
        } else {
          // Based on the version the local bytes started from (not the
          // tree's, which may show a newer remote one): a stale base then
          // becomes a conflict copy, never an overwrite.
          uint64_t base = view.version;
          if (base == 0) base = versions_.count(n->id) ? versions_[n->id] : n->version;
          if (base == 0) {
            if (last == 0)
              return Status::Internal("write-back: no known server version for node " + std::to_string(n->id) +
                                      "; its content waits in the journal");
            break;
          }
          CommitOp w;
          w.type = OpType::kWrite;
          w.id = n->id;
          w.has_base = true;
          w.base = base;
          based[n->id] = base;
          w.size = view.size;
          w.blocks = std::move(blocks);
          w.has_mtime = true;
          w.mtime_ns = n->mtime_ns;
          ops.push_back(std::move(w));
        }
        sent.push_back({n->id, std::move(view), std::move(m)});
        flushed.insert(n->id);
        spdlog::debug("write-back: node {} ({} bytes): {} blocks hashed, {} sent", n->id, n->size, up.blocks_hashed,
                      up.blocks_sent);
      }
    }
    last = e.seq;
  }
  if (last == 0) return Status::Ok();
  if (ops.empty()) {
    RETURN_IF_ERROR(state_->CompleteJournal(last, {}));
    Completed(entries, last);
    return Status::Ok();
  }

  // Local fix-ups once the commit holds, given the versions it made.
  std::vector<std::function<void(const std::unordered_map<uint64_t, const NodeRecord*>&)>> after;
  if (inflight != last) RETURN_IF_ERROR(state_->SetInflightBatch(last));
  for (int attempt = 0; attempt < 16; ++attempt) {
    // The key: this body, and the journal entries it carries (journal seqs
    // are never reused), so an identical body sent for other entries (a
    // rename back and forth) is never taken for a retry.
    ASSIGN_OR_RETURN(CommitReply reply,
                     client_->Commit(ops, "-" + std::to_string(entries.front().seq) + "-" + std::to_string(last)));
    if (!reply.refused) {
      RETURN_IF_ERROR(state_->CompleteJournal(last, reply.items));
      Completed(entries, last);
      RETURN_IF_ERROR(state_->SetInflightBatch(0));
      std::unordered_map<uint64_t, const NodeRecord*> by_id;
      for (const auto& r : reply.items) {
        by_id[r.id] = &r;
        if (r.deleted) {
          versions_.erase(r.id);
        } else {
          tree_->SetVersion(r.id, r.version, r.seq);
          versions_[r.id] = r.version;
        }
      }
      // Nodes our ops moved from the version we knew: the cached bytes are
      // still those of the new version (content changes are in `sent`).
      for (const auto& [id, base] : based)
        if (auto it = by_id.find(id); it != by_id.end() && !it->second->deleted)
          cache_->AdvanceVersion(id, base, it->second->version);
      for (const auto& s : sent) {
        auto it = by_id.find(s.id);
        if (it != by_id.end() && !it->second->deleted) cache_->Committed(s.id, it->second->version, s.m, s.view.write_gen);
      }
      for (auto& f : after) f(by_id);
      return Status::Ok();
    }
    const size_t k = std::min(reply.op, ops.size() - 1);
    CommitOp& op = ops[k];
    spdlog::info("write-back: the server refused {} of node {} ({}: {})", OpName(op.type), op.id, reply.reason,
                 reply.message);
    if ((op.type == OpType::kWrite) && (reply.reason == "stale_base" || reply.reason == "deleted")) {
      // Someone else changed (or deleted) the file since our base: ours
      // becomes a new file beside it, both kept.
      auto n = tree_->Get(op.id);
      if (!n.ok() || !*n) return Status::Internal("write-back: node " + std::to_string(op.id) + " vanished");
      NodeRecord copy = **n;
      const uint64_t old_id = op.id;
      copy.id = NewNodeId();
      copy.name = reply.reason == "deleted" ? copy.name : ConflictName(copy.name);
      copy.version = 0;
      CommitOp c;
      c.type = OpType::kCreate;
      c.id = copy.id;
      c.parent = copy.parent;
      c.name = copy.name;
      c.has_mode = true;
      c.mode = copy.mode;
      c.has_mtime = true;
      c.mtime_ns = copy.mtime_ns;
      c.size = op.size;
      c.blocks = op.blocks;
      op = c;
      for (auto& s : sent)
        if (s.id == old_id) s.id = 0;  // the original keeps the server's bytes
      based.erase(old_id);
      spdlog::warn("write-back: node {} changed elsewhere; keeping this device's version as \"{}\"", old_id, copy.name);
      const bool deleted = reply.reason == "deleted";
      const uint64_t current = reply.current_version;
      after.push_back([this, old_id, copy, deleted, current](const auto& made) mutable {
        if (auto it = made.find(copy.id); it != made.end()) {
          copy.version = it->second->version;
          copy.seq = it->second->seq;
        }
        // An open file keeps its bytes (they are in the copy now as well).
        if (!(is_open_ && is_open_(old_id))) cache_->Forget(old_id);
        NodeRecord gone;
        gone.id = old_id;
        gone.deleted = true;
        std::vector<NodeRecord> rows{copy};
        if (deleted) {
          rows.push_back(gone);
        } else if (auto m = client_->GetManifest(old_id, current); m.ok()) {
          auto o = tree_->Get(old_id);
          if (o.ok() && *o) {
            NodeRecord theirs = **o;
            theirs.size = m->size;
            theirs.version = current;
            rows.push_back(theirs);
          }
        }
        (void)state_->RecordLocal(rows, {});
        for (const auto& r : rows) tree_->Apply(r);
        std::function<void(uint64_t)> inval;
        {
          std::lock_guard plock(progress_mu_);
          inval = invalidate_;
        }
        if (inval) inval(old_id);
      });
      continue;
    }
    if ((Creates(op.type) || op.type == OpType::kRename) && reply.reason == "name_taken") {
      // Created here and there under one name: ours gets a conflict name.
      op.name = ConflictName(op.name);
      auto n = tree_->Get(op.id);
      if (n.ok() && *n) {
        NodeRecord renamed = **n;
        renamed.name = op.name;
        after.push_back([this, renamed](const auto& made) mutable {
          if (auto it = made.find(renamed.id); it != made.end()) {
            renamed.version = it->second->version;
            renamed.seq = it->second->seq;
          }
          (void)state_->RecordLocal({renamed}, {});
          tree_->Apply(renamed);
        });
      }
      continue;
    }
    if (op.type == OpType::kSetattr && reply.reason == "stale_base") {
      op.base = reply.current_version;  // attributes: last writer wins
      based.erase(op.id);                // but the cached bytes may be stale now
      continue;
    }
    if (op.type == OpType::kRename && reply.reason == "stale_base") {
      op.has_base = false;  // the move still happens; a later write of ours will see the conflict
      based.erase(op.id);
      continue;
    }
    if (op.type == OpType::kDelete && (reply.reason == "stale_base" || reply.reason == "deleted" ||
                                       reply.reason == "no_such_node")) {
      // Deleted here, edited (or already deleted) there: their edit stays.
      ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(k));
      if (ops.empty()) {
    RETURN_IF_ERROR(state_->CompleteJournal(last, {}));
    Completed(entries, last);
    return Status::Ok();
  }
      continue;
    }
    return Status(CodeForHttpStatus(reply.http_status),
                  std::string("commit refused at ") + OpName(op.type) + " of node " + std::to_string(op.id) + ": " +
                      reply.message + " (" + reply.reason + ")");
  }
  return Status::Internal("write-back: commit refused too many times");
}

}  // namespace tidefs
