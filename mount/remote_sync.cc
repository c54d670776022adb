#include "mount/remote_sync.h"

#include <algorithm>
#include <random>

#include <spdlog/spdlog.h>

#include "core/logging.h"

namespace tidefs {
namespace {

// What the kernel sees of a node: equal records need no invalidation.
bool SameView(const NodeRecord& a, const NodeRecord& b) {
  return a.parent == b.parent && a.name == b.name && a.kind == b.kind && a.mode == b.mode && a.size == b.size &&
         a.mtime_ns == b.mtime_ns && a.version == b.version && a.target == b.target && a.deleted == b.deleted;
}

}  // namespace

RemoteSync::RemoteSync(Deps deps)
    : d_(std::move(deps)),
      stream_(d_.client->options(),
              EventStream::Callbacks{
                  [this](std::string_view m) { return OnMessage(m); },
                  [this](bool up, const std::string& why) {
                    {
                      std::lock_guard lock(mu_);
                      if (connected_ && !up) spdlog::warn("events: {}; polling /changes until reconnected", why);
                      else if (!up) spdlog::debug("events: {}", why);
                      connected_ = up;
                      if (up) progress_dirty_ = true;  // tell the server what is in flight
                    }
                    cv_.notify_all();
                  }}) {}

RemoteSync::~RemoteSync() { Stop(); }

void RemoteSync::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] {
    NameThread("tidefs-sync");
    Loop();
  });
  stream_.Start();
}

void RemoteSync::Hold(std::vector<NodeRecord> records) {
  for (auto& r : records) {
    auto [it, added] = deferred_.try_emplace(r.id, r);
    if (!added && it->second.seq < r.seq) it->second = std::move(r);
  }
  n_deferred_ = deferred_.size();
}

void RemoteSync::Stop() {
  if (!thread_.joinable()) return;
  stream_.Stop();
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  if (!deferred_.empty()) {
    // Changes still waiting for our journal are not lost with this
    // process: the saved cursor goes back to before the oldest of them,
    // so the next mount pulls them again.
    uint64_t oldest = UINT64_MAX;
    for (const auto& [id, r] : deferred_) oldest = std::min(oldest, r.seq);
    if (oldest > 0 && oldest - 1 < d_.tree->seq()) {
      Status st = d_.state->ApplyChanges({}, oldest - 1);
      if (!st.ok()) spdlog::warn("keeping {} waiting remote changes for the next mount failed: {}", deferred_.size(), st.ToString());
      else d_.tree->set_seq(oldest - 1);
    }
  }
  MaybeCheckpoint(true);
}

Status RemoteSync::OnMessage(std::string_view msg) {
  auto ev = DecodeEvent(msg);
  if (!ev.ok()) return ev.status();
  {
    std::lock_guard lock(mu_);
    ++n_events_;
    switch (ev->type) {
      case Event::Type::kHello:
        head_ = std::max(head_, ev->head);
        others_ = std::move(ev->progress);
        others_.erase(d_.device);
        need_pull_ = true;  // whatever happened while we were away
        break;
      case Event::Type::kCommit:
        head_ = std::max(head_, ev->seq);
        events_.push_back(std::move(*ev));
        break;
      case Event::Type::kResync:
        need_pull_ = true;
        break;
      case Event::Type::kProgress:
        if (ev->device == d_.device) break;
        if (ev->transfers.empty()) others_.erase(ev->device);
        else others_[ev->device] = std::move(ev->transfers);
        return Status::Ok();
    }
  }
  cv_.notify_all();
  return Status::Ok();
}

void RemoteSync::Loop() {
  d_.ready.wait();
  std::mt19937_64 rng(std::random_device{}());
  auto poll_delay = std::chrono::milliseconds(500);
  auto next_poll = std::chrono::steady_clock::now();
  for (;;) {
    std::deque<Event> evs;
    bool pull;
    {
      std::unique_lock lock(mu_);
      auto wake = [&] { return stopping_ || !events_.empty() || need_pull_; };
      auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(1);
      if (progress_dirty_) limit = std::min(limit, last_report_ + kReportEvery);
      if (!deferred_.empty()) limit = std::min(limit, std::chrono::steady_clock::now() + std::chrono::milliseconds(100));
      if (!connected_ || retry_pull_) limit = std::min(limit, next_poll);
      cv_.wait_until(lock, limit, wake);
      if (stopping_) return;
      evs.swap(events_);
      pull = need_pull_;
      need_pull_ = false;
      if ((!connected_ || retry_pull_) && std::chrono::steady_clock::now() >= next_poll) pull = true;
      if (pull) retry_pull_ = false;
    }
    for (const auto& ev : evs) {
      if (pull) break;
      if (ev.type != Event::Type::kCommit || ev.seq <= d_.tree->seq()) continue;
      if (!ev.has_records || ev.prev != d_.tree->seq()) {
        pull = true;  // a gap: something was announced without us (or too big to carry)
        continue;
      }
      if (Status st = Apply(ev.records, ev.seq); !st.ok()) {
        spdlog::warn("events: applying commit {} failed ({}); pulling /changes", ev.seq, st.ToString());
        pull = true;
      }
    }
    if (pull) {
      Status st = CatchUp();
      std::uniform_int_distribution<int> jitter(0, 250);
      if (st.ok()) {
        poll_delay = std::chrono::milliseconds(500);
      } else {
        if (st.code() == Code::kGone)
          spdlog::error("the server purged changes this mount has not applied (was device {} retired?): unmount, move "
                        "the cache dir away and mount again; the journal there still holds unsent changes",
                        d_.device);
        else if (st.code() != Code::kUnavailable) spdlog::warn("catching up with /changes failed: {}", st.ToString());
        poll_delay = std::min(poll_delay * 2, std::chrono::milliseconds(8000));
        std::lock_guard lock(mu_);
        retry_pull_ = true;  // at next_poll, connected or not
      }
      next_poll = std::chrono::steady_clock::now() + poll_delay + std::chrono::milliseconds(jitter(rng));
    }
    if (Status st = RetryDeferred(); !st.ok()) spdlog::warn("applying a remote change that waited failed: {}", st.ToString());
    MaybeCheckpoint(false);
    ReportProgress();
  }
}

Status RemoteSync::CatchUp() {
  {
    std::lock_guard lock(mu_);
    ++n_polls_;
  }
  for (;;) {
    uint64_t since = d_.tree->seq();
    ASSIGN_OR_RETURN(ChangesPage page, d_.client->Changes(since));
    // The server answers, and its level is still not known (the mount
    // started offline, and a server older than levels names none): ask, so
    // a swap is refused at the call rather than held in the journal.
    if (d_.client->server_protocol() == 0) (void)d_.client->WhoAmI();
    uint64_t next = since;
    for (const auto& n : page.items) next = std::max(next, n.seq);
    if (!page.more) next = std::max(next, page.head);
    {
      std::lock_guard lock(mu_);
      head_ = std::max(head_, page.head);
    }
    if (next > since || !page.items.empty()) RETURN_IF_ERROR(Apply(page.items, next));
    if (!page.more) return Status::Ok();
  }
}

Status RemoteSync::Apply(const std::vector<NodeRecord>& records, uint64_t next) {
  std::vector<Change> changes;
  {
    std::lock_guard meta(*d_.meta_mu);
    if (next <= d_.tree->seq()) return Status::Ok();  // applied meanwhile
    std::vector<NodeRecord> items;
    for (const auto& r : records) {
      const bool ours = d_.has_local_changes(r.id);
      spdlog::trace("remote: node {} version {} seq {}: {} in {} as \"{}\"{}", r.id, r.version, r.seq,
                    r.deleted ? "deleted" : "at", r.parent, r.name, ours ? " (waits: ours pending)" : "");
      if (ours) {
        // Ours in the journal (or written and not closed): our commit
        // names the version it started from, so a real conflict comes back
        // as a refusal and both are kept. Looked at again once sent.
        deferred_[r.id] = r;
        continue;
      }
      deferred_.erase(r.id);
      ASSIGN_OR_RETURN(std::optional<NodeRecord> old, d_.tree->Get(r.id));
      if (!old && !r.deleted && d_.tree->DeletedAfter(r.id, r.seq)) continue;  // deleted here since (NoteDeleted)
      items.push_back(r);
      if (old ? SameView(*old, r) : r.deleted) continue;  // our own commit, or nothing we knew
      changes.push_back({std::move(old), r});
    }
    RETURN_IF_ERROR(d_.state->ApplyChanges(items, CursorToSave(next)));
    for (const auto& r : items) d_.tree->Apply(r);
    d_.tree->set_seq(next);
  }
  n_deferred_ = deferred_.size();
  Notify(changes);
  std::lock_guard lock(mu_);
  n_applied_ += changes.size();
  head_ = std::max(head_, next);
  return Status::Ok();
}

uint64_t RemoteSync::CursorToSave(uint64_t seq) const {
  for (const auto& [id, r] : deferred_) seq = std::min(seq, r.seq - 1);
  return seq;
}

Status RemoteSync::RetryDeferred() {
  if (deferred_.empty()) return Status::Ok();
  std::vector<Change> changes;
  {
    std::lock_guard meta(*d_.meta_mu);
    std::vector<NodeRecord> items;
    for (auto it = deferred_.begin(); it != deferred_.end();) {
      if (d_.has_local_changes(it->first)) {
        ++it;
        continue;
      }
      const NodeRecord r = std::move(it->second);
      it = deferred_.erase(it);
      ASSIGN_OR_RETURN(std::optional<NodeRecord> old, d_.tree->Get(r.id));
      if (!old) {
        // Gone here, our delete through: a record of it alive is newer (an
        // edit elsewhere that did not know of the delete brought it back),
        // and it shows here; unless it is older than our delete, whose own
        // record has not come yet (a mkdir and rmdir of ours, the mkdir's
        // record deferred: the directory came back for a moment).
        if (!r.deleted && !d_.tree->DeletedAfter(r.id, r.seq)) {
          items.push_back(r);
          changes.push_back({std::nullopt, r});
        }
        continue;
      }
      // Theirs is still newer than what we hold: it applies now. At the
      // same version it is our own commit coming back, and the server's
      // record is the truth for that version: a setattr that won
      // last-writer-wins, or a move sent without a base, may have merged
      // with a change made elsewhere (their rename, our mode).
      if (old->version < r.version || (old->version == r.version && !SameView(*old, r))) {
        items.push_back(r);
        changes.push_back({old, r});
      }
      // Else ours is newer (a conflict already kept both and the
      // write-back moved the node to theirs, telling the kernel itself).
    }
    if (!items.empty()) {
      RETURN_IF_ERROR(d_.state->ApplyChanges(items, CursorToSave(d_.tree->seq())));
      for (const auto& r : items) d_.tree->Apply(r);
    }
  }
  n_deferred_ = deferred_.size();
  Notify(changes);
  return Status::Ok();
}

void RemoteSync::Notify(const std::vector<Change>& changes) {
  const Kernel& k = d_.kernel;
  if (!k.inval_entry) return;
  for (const auto& c : changes) {
    const NodeRecord& n = c.now;
    if (n.deleted) {
      if (!c.old) continue;
      k.deleted(c.old->parent, n.id, c.old->name);
      k.inval_listing(c.old->parent);
      if (!(d_.keep_if_open && d_.keep_if_open(*c.old))) d_.cache->Forget(n.id);
      continue;
    }
    if (!c.old) {
      // New here: a negative entry the kernel may hold, and the listing.
      k.inval_entry(n.parent, n.name);
      k.inval_listing(n.parent);
      // A file brought back (an edit against its delete) has its old
      // inode number: pages the kernel kept of it are stale.
      if (n.kind == NodeKind::kFile && n.version > 1) k.inval_inode(n.id, 0, 0);
      continue;
    }
    const NodeRecord& o = *c.old;
    if (o.parent != n.parent || o.name != n.name) {
      k.inval_entry(o.parent, o.name);
      k.inval_listing(o.parent);
      k.inval_entry(n.parent, n.name);
      if (n.parent != o.parent) k.inval_listing(n.parent);
    }
    // (Our own chmod or move sent again on a version made elsewhere comes
    // back at the version we hold: the write-back dropped its pages.)
    if (n.kind == NodeKind::kFile && o.version != n.version) {
      auto ranges = o.version ? d_.cache->ChangedRanges(o, n) : std::nullopt;
      if (!ranges) {
        k.inval_inode(n.id, 0, 0);  // every page may be stale
      } else {
        k.inval_inode(n.id, -1, 0);
        for (const auto& [off, len] : *ranges) k.inval_inode(n.id, static_cast<int64_t>(off), static_cast<int64_t>(len));
      }
    } else if (!SameView(o, n)) {
      k.inval_inode(n.id, -1, 0);
    }
  }
}

void RemoteSync::MaybeCheckpoint(bool force) {
  // Never past a change still waiting for our journal: the server must keep
  // its tombstone until it is applied here.
  const uint64_t seq = CursorToSave(d_.tree->seq());
  {
    std::lock_guard lock(mu_);
    if (seq <= checkpoint_) return;
  }
  auto now = std::chrono::steady_clock::now();
  if (!force && now - last_checkpoint_ < std::chrono::seconds(1)) return;
  last_checkpoint_ = now;
  Status st = d_.client->PutCheckpoint(d_.device, seq);
  if (!st.ok()) {
    spdlog::debug("recording checkpoint {} failed: {}", seq, st.ToString());
    return;
  }
  std::lock_guard lock(mu_);
  checkpoint_ = std::max(checkpoint_, seq);
}

void RemoteSync::SetTransfer(const Transfer& t) {
  std::lock_guard lock(mu_);
  ours_[{t.upload, t.path}] = t;
  progress_dirty_ = true;
}

void RemoteSync::EndTransfer(bool upload, const std::string& path) {
  std::lock_guard lock(mu_);
  if (ours_.erase({upload, path})) progress_dirty_ = true;
}

void RemoteSync::AddDownloaded(const std::string& path, uint64_t bytes, uint64_t total) {
  std::lock_guard lock(mu_);
  auto now = std::chrono::steady_clock::now();
  auto [it, fresh] = downloads_.try_emplace(path, DownloadTimes{now, now});
  it->second.last = now;
  Transfer& t = ours_[{false, path}];
  if (fresh) t = Transfer{path, false, 0, 0, 0};
  t.done += bytes;
  t.total = std::max(total, t.done);
  double secs = std::chrono::duration<double>(now - it->second.start).count();
  t.rate = secs > 0.01 ? t.done / secs : 0;
  progress_dirty_ = true;
}

void RemoteSync::ExpireDownloadsLocked() {
  auto now = std::chrono::steady_clock::now();
  for (auto it = downloads_.begin(); it != downloads_.end();) {
    if (now - it->second.last < std::chrono::seconds(1)) {
      ++it;
      continue;
    }
    ours_.erase({false, it->first});
    it = downloads_.erase(it);
    progress_dirty_ = true;
  }
}

void RemoteSync::ReportProgress() {
  std::vector<Transfer> list;
  {
    std::lock_guard lock(mu_);
    ExpireDownloadsLocked();
    if (!progress_dirty_) return;
    auto now = std::chrono::steady_clock::now();
    if (now - last_report_ < kReportEvery) return;
    last_report_ = now;
    progress_dirty_ = false;
    for (const auto& [k, t] : ours_) {
      if (list.size() == kMaxTransfersPerReport) break;
      list.push_back(t);
    }
  }
  stream_.Send(EncodeProgressReport(list));
}

RemoteSync::Status_ RemoteSync::Snapshot() const {
  std::lock_guard lock(mu_);
  Status_ s;
  s.connected = connected_;
  s.cursor = d_.tree->seq();
  s.head = std::max(head_, s.cursor);
  s.commits_applied = n_applied_;
  s.events = n_events_;
  s.polls = n_polls_;
  s.deferred = n_deferred_;
  s.checkpoint = checkpoint_;
  for (const auto& [k, t] : ours_) s.ours.push_back(t);
  s.others = others_;
  return s;
}

}  // namespace tidefs
