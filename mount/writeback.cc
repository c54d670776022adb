#include "mount/writeback.h"

#include <time.h>

#include <cinttypes>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_set>

#include <spdlog/spdlog.h>

#include "client/importer.h"
#include "client/uploader.h"
#include "core/logging.h"
#include "core/names.h"

namespace tidefs {
namespace {

constexpr size_t kBatchEntries = 4000;
// Journal entries looked through after a replayed answer for later moves.
constexpr size_t kReplayScan = 100000;
// A file written this recently through a handle still open is looked at
// again that much later, at most kSettleTries times.
constexpr auto kSettle = std::chrono::milliseconds(20);
constexpr int kSettleTries = 25;
// Group commit: a change goes out at once when nothing is being sent (after
// a breath, for the rest of a burst: a close and the rename that follows);
// changes made while a batch is in flight go together in the next one.
constexpr auto kIdle = std::chrono::milliseconds(2);
// Changes that arrived while a batch was in flight (a burst: cp -r, tar x)
// gather a little longer, so a burst goes in a few big commits instead of
// many of a few files each (every commit costs the server a transaction).
constexpr auto kBurstGather = std::chrono::milliseconds(10);
// The same for the local state: a burst goes in a transaction every few ms.
constexpr auto kWriterGather = std::chrono::milliseconds(3);
constexpr auto kWriterBurstGather = std::chrono::milliseconds(50);
constexpr uint64_t kMaxStagedBytes = 64 << 20;  // staged bytes kept in memory (and the log) at most, in a burst
constexpr auto kPlaceAfter = std::chrono::milliseconds(100);  // a pause this long ends a burst for the writer
// A burst (changes at most kBurstGap apart, kBurstMin of them or more) is
// committed once it pauses for kBurstPause, or from kMaxDefer after it
// began if it goes on: on two cores its commits (and the server's work for
// them) would otherwise slow the copy making it by half. (A copy on a busy
// machine has gaps of a few ms now and then: once begun, a burst goes on
// through them, held only once.) A single change, an editor's save or a
// few files still go at once.
constexpr auto kBurstGap = std::chrono::milliseconds(5);
constexpr auto kBurstPause = std::chrono::milliseconds(50);
constexpr size_t kBurstMin = 64;
constexpr auto kMaxDefer = std::chrono::seconds(2);
constexpr auto kHeldLook = std::chrono::milliseconds(250);  // a file held back (set_hold) is asked again
constexpr size_t kMaxUnsaved = 100000;  // changes logged but not in the databases, while those fail
constexpr uint64_t kLogCatchUp = 64 << 20;  // intent log bytes after which new changes wait for the writer
constexpr uint64_t kShowUploadsFrom = 1 << 20;  // smaller files come and go too fast to show
// A file held back while it is written sends its settled blocks ahead, at
// least kAheadMin (less waits for the flush) and at most kAheadRound a round
// (then the write-back looks whether the file was closed meanwhile).
constexpr uint64_t kAheadMin = 16 << 20;
constexpr uint64_t kAheadRound = 128 << 20;
constexpr auto kAheadLook = std::chrono::milliseconds(20);      // less than kAheadMin settled: look again after
constexpr auto kAheadPatience = std::chrono::milliseconds(500);  // nothing to send for this long: the writing paused
constexpr auto kAheadStint = std::chrono::seconds(2);            // then the journal is looked at again

// Ops that name the node's version (a rename too: a rename must not make a
// remote change to the file look like ours).
bool NeedsBase(OpType t) {
  return t == OpType::kWrite || t == OpType::kDelete || t == OpType::kSetattr || t == OpType::kRename;
}
bool Creates(OpType t) { return t == OpType::kCreate || t == OpType::kMkdir || t == OpType::kSymlink; }

// The record of a file sent from its staged bytes: every block here.
LocalState::CachedFile AllHere(uint64_t id, uint64_t version, const Manifest& m) {
  return {id, version, m, std::vector<bool>(m.blocks.size(), true), std::vector<bool>(m.blocks.size(), false)};
}

// Counts entries whose commit is being applied here (Pending() includes
// them until this mount shows the outcome).
struct Applying {
  Applying(std::atomic<uint64_t>& n, uint64_t k) : n(n), k(k) { n += k; }
  ~Applying() { n -= k; }
  std::atomic<uint64_t>& n;
  const uint64_t k;
};

}  // namespace

WriteBack::WriteBack(ApiClient* client, LocalState* state, Tree* tree, ChunkCache* cache, std::string device,
                     std::shared_future<void> ready)
    : client_(client), state_(state), tree_(tree), cache_(cache), device_(std::move(device)), ready_(std::move(ready)) {
  // What an earlier mount left in the journal (a cold mount, whose state is
  // not ready yet, has none).
  if (ready_.wait_for(std::chrono::seconds(0)) == std::future_status::ready) {
    auto pending = state_->PendingJournal(std::numeric_limits<uint32_t>::max());
    if (pending.ok())
      CountPending(*pending, {}, +1);
    else
      spdlog::error("reading the journal failed: {}", pending.status().ToString());
  }
  queued_ticket_ = written_ticket_ = state_->last_ticket();
  writer_ = std::thread([this] {
    NameThread("tidefs-writer");
    WriterLoop();
  });
  thread_ = std::thread([this] {
    NameThread("tidefs-flush");
    Loop();
  });
}

WriteBack::~WriteBack() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  thread_.join();
  // The writer saves what is queued (a conflict's fix-up too), then ends.
  {
    std::lock_guard lock(q_mu_);
    writer_stopping_ = true;
  }
  q_cv_.notify_all();
  writer_.join();
}

Status WriteBack::Record(const std::vector<NodeRecord>& rows, const std::vector<LocalState::JournalEntry>& entries,
                         const std::vector<uint64_t>& files, std::vector<StagedBytes> staged) {
  ready_.wait();  // a cold mount saves its snapshot first
  // Versions are the server's to move (SetVersion): a record read before
  // a commit landed must not carry the older one back. (The tree checks
  // again as it applies them, below: a commit may land in between.)
  LocalState::Change c;
  c.rows = rows;
  c.entries = entries;
  if (spdlog::should_log(spdlog::level::trace))  // (every change passes here: nothing built when not asked)
    for (const auto& e : entries)
      if (!e.flush) spdlog::trace("journal: {} of node {} on version {}", OpName(e.op.type), e.op.id, e.op.base);
  c.staged = std::move(staged);
  for (auto& r : c.rows) {
    if (r.deleted) continue;
    auto cur = tree_->Get(r.id);
    if (cur.ok() && *cur) r.version = std::max(r.version, (*cur)->version);
  }
  // A bitmap calling a block dirty that kept some of the server's bytes
  // goes to the log only once those bytes are on disk: after a power cut,
  // the check of a new boot keeps dirty blocks as they are.
  for (uint64_t id : files)
    if (cache_->NeedsSync(id)) RETURN_IF_ERROR(cache_->SyncFile(id));
  // Counted until saved (rows) or committed (entries): a remote change to
  // these nodes waits for them.
  CountPending(c.entries, c.rows, +1);
  bool wake = false;
  {
    // Where a deleted node was (a directory refused deletion comes back there).
    std::lock_guard lock(ids_mu_);
    for (const auto& r : c.rows)
      if (r.deleted && r.kind == NodeKind::kDir) deleted_parent_[r.id] = r.parent;
  }
  {
    // Under the queue's lock: log order, ticket order and queue order are
    // one, and a bitmap taken later is never saved before an earlier one.
    std::unique_lock lock(q_mu_);
    // The databases refuse writes (disk full?) and much waits: refuse more.
    if (!write_error_.ok() && queue_.size() > kMaxUnsaved) {
      CountPending(c.entries, c.rows, -1);
      return write_error_;
    }
    // The log is emptied only when the writer has caught up: under a
    // long stream of changes, let it (the log stays bounded).
    while (write_error_.ok() && !queue_.empty() && state_->log_bytes() > kLogCatchUp) {
      q_cv_.notify_one();
      written_cv_.wait(lock);
    }
    for (uint64_t id : files)
      if (auto f = cache_->FileRecord(id)) c.files.push_back(std::move(*f));
    c.ticket = queued_ticket_ + 1;
    const auto now = std::chrono::steady_clock::now();
    // A dense run (gaps up to kBurstGap) of kBurstMin or more makes a
    // burst, which then goes on through gaps up to kBurstPause (one
    // stream: its commits are held for its first kMaxDefer only); the
    // writer gathers longer only while the run is dense (a trickle after
    // a spike is not a burst for it).
    const auto gap = now - last_change_;
    if (gap > kBurstGap) dense_len_ = 0;
    if (gap > kBurstPause || (!stream_dense_ && gap > kBurstGap)) {
      stream_since_ = now;
      stream_dense_ = false;
    }
    if (++dense_len_ >= kBurstMin) stream_dense_ = true;
    last_change_ = now;
    if (Status st = state_->LogChange(c); !st.ok()) {
      CountPending(c.entries, c.rows, -1);
      return st;
    }
    queued_ticket_ = c.ticket;
    queued_entries_ += c.entries.size();
    for (auto& s : c.staged) s.bytes = std::string();  // logged; the cache holds them (the writer needs the ids)
    for (const auto& r : c.rows) tree_->ApplyUnsaved(r, c.ticket);
    queue_.push_back(std::move(c));
    wake = writer_awaits_;
  }
  if (wake) q_cv_.notify_one();
  return Status::Ok();
}

void WriteBack::CountPending(const std::vector<LocalState::JournalEntry>& entries, const std::vector<NodeRecord>& rows,
                             int d) {
  std::lock_guard lock(ids_mu_);
  auto add = [&](uint64_t id) {
    if ((pending_ids_[id] += d) <= 0) pending_ids_.erase(id);
  };
  for (const auto& e : entries) {
    add(e.op.id);
    if (e.op.exchange) add(e.op.exchange);  // (a swap moves that node too)
  }
  for (const auto& r : rows) add(r.id);
}

Status WriteBack::Finish(const std::vector<LocalState::JournalEntry>& entries, uint64_t last,
                         const std::vector<NodeRecord>& made, bool inflight) {
  std::vector<LocalState::JournalEntry> done;
  for (const auto& e : entries)
    if (e.seq <= last) done.push_back(e);
  // The versions made of nodes a later change names (saved or still in the
  // intent log: a delete made while this commit was on its way names the
  // version the node had then) are kept on disk while changes wait: after
  // a restart that change goes with them, not refused as stale and dropped.
  // (The tree has the new versions already: a change recorded from now
  // on names them.) With no other change waiting, none is needed any more.
  std::vector<std::pair<uint64_t, uint64_t>> known;
  bool others = false;
  {
    std::unordered_map<uint64_t, int> here;
    for (const auto& e : done) {
      ++here[e.op.id];
      if (e.op.exchange) ++here[e.op.exchange];
    }
    auto later = [&](uint64_t id, int n) {
      auto h = here.find(id);
      return n > (h == here.end() ? 0 : h->second);
    };
    std::lock_guard lock(ids_mu_);
    for (auto p = pending_ids_.begin(); p != pending_ids_.end() && !others; ++p) others = later(p->first, p->second);
    if (others)
      for (const auto& r : made)
        if (auto p = pending_ids_.find(r.id); !r.deleted && p != pending_ids_.end() && later(r.id, p->second))
          known.emplace_back(r.id, r.version);
  }
  RETURN_IF_ERROR(state_->CompleteJournal(last, made, known, /*forget_known=*/!others));
  CountPending(done, {}, -1);
  return inflight ? state_->SetInflightBatch(0) : Status::Ok();
}

void WriteBack::InvalidateEntry(uint64_t parent, const std::string& name) {
  std::function<void(uint64_t, const std::string&)> f;
  std::function<void(uint64_t)> listing;
  {
    std::lock_guard lock(progress_mu_);
    f = invalidate_entry_;
    listing = invalidate_listing_;
  }
  if (f) f(parent, name);
  if (listing) listing(parent);  // its cached listing too
}

void WriteBack::InvalidateNode(uint64_t id) {
  std::function<void(uint64_t)> f;
  {
    std::lock_guard lock(progress_mu_);
    f = invalidate_;
  }
  if (f) f(id);
}

void WriteBack::RestoreDir(uint64_t id) {
  if (Status st = ReadBackDir(id); !st.ok())
    spdlog::warn("write-back: directory {} stays on the server, but reading it back failed: {}", id, st.ToString());
}

Status WriteBack::ReadBackDir(uint64_t id) {
  uint64_t parent = 0;
  {
    std::lock_guard lock(ids_mu_);
    if (auto it = deleted_parent_.find(id); it != deleted_parent_.end()) parent = it->second;
  }
  if (parent == 0) {
    // Deleted by an earlier run of this mount: the server says where it is.
    ASSIGN_OR_RETURN(NodeRecord there, client_->GetNode(id));
    if (there.deleted) return Status::NotFound("it is deleted on the server as well");
    parent = there.parent;
  }
  ASSIGN_OR_RETURN(auto siblings, client_->ListAll(parent));
  std::vector<NodeRecord> rows;
  for (const auto& n : siblings)
    if (n.id == id) rows.push_back(n);
  if (rows.empty()) return Status::NotFound("it is not in its parent any more");
  ASSIGN_OR_RETURN(auto kids, client_->ListAll(id));
  // Not those this mount is changing (deleting, moving): their ops go on.
  for (const auto& k : kids)
    if (!HasPending(k.id)) rows.push_back(k);
  spdlog::info("write-back: directory \"{}\" got new files elsewhere; it stays, with {} entries", rows[0].name,
               rows.size() - 1);
  RETURN_IF_ERROR(Record(rows, {}));
  InvalidateEntry(parent, rows[0].name);  // the kernel remembers it gone
  return Status::Ok();
}

void WriteBack::RestoreNode(uint64_t id) {
  auto r = client_->GetNode(id);
  if (!r.ok() && r.status().code() == Code::kNotFound) return;  // gone there too: nothing to bring back
  if (!r.ok()) {
    spdlog::warn("write-back: node {} stays where this mount moved it; reading it back failed: {}", id,
                 r.status().ToString());
    return;
  }
  auto here = tree_->Get(id);
  if (r->deleted && here.ok() && !*here) return;  // gone here and there
  NodeRecord rec = *r;
  // Local bytes not yet sent are newer (reads go to them); otherwise the
  // server's size goes with its version.
  if (here.ok() && *here && (*here)->kind == NodeKind::kFile && cache_->IsLocal(id)) rec.size = (*here)->size;
  spdlog::warn("write-back: node {} goes back to where the server has it (\"{}\" in directory {})", id, rec.name,
               rec.parent);
  // Deleted here: whatever the cache held of it is not ours to send any
  // more (a restart marks a file with a flush in the journal as holding
  // local bytes; left so, the server's later records of it waited behind
  // that for good). (Unless open here: its handles keep their bytes.)
  if (!(here.ok() && *here) && !WrittenHereStill(id)) cache_->Forget(id);
  if (!Record({rec}, {}).ok()) return;
  if (here.ok() && *here) InvalidateEntry((*here)->parent, (*here)->name);
  if (!rec.deleted) InvalidateEntry(rec.parent, rec.name);
}

bool WriteBack::HasPending(uint64_t id) {
  std::lock_guard lock(ids_mu_);
  return pending_ids_.count(id) > 0;
}

bool WriteBack::WrittenHereStill(uint64_t id) { return (is_open_ && is_open_(id)) || HasPending(id); }

Status WriteBack::WaitWritten() {
  std::unique_lock lock(q_mu_);
  const uint64_t ticket = queued_ticket_;
  if (written_ticket_ >= ticket) return Status::Ok();
  // An error counts only from an attempt that began after this call (an
  // older one may be gone: space freed since).
  const uint64_t first = attempts_ + 2;
  ++waiters_;
  q_cv_.notify_one();  // no gathering nor backing off while someone waits
  written_cv_.wait(lock, [&] { return written_ticket_ >= ticket || (!write_error_.ok() && attempts_ >= first); });
  --waiters_;
  return written_ticket_ >= ticket ? Status::Ok() : write_error_;
}

void WriteBack::WriterLoop() {
  ready_.wait();  // a cold mount saves its snapshot first
  constexpr size_t kMaxItems = 4096;  // queued changes per transaction
  auto backoff = std::chrono::milliseconds(0);
  bool burst = false;
  std::unique_lock lock(q_mu_);
  for (;;) {
    // (A new waiter cuts the wait short once, not every time: a program
    // calling fsync in a loop on a full disk must not spin the writer.)
    if (backoff.count() > 0) {
      const int seen = waiters_;
      q_cv_.wait_for(lock, backoff, [&] { return writer_stopping_ || waiters_ > seen; });
    }
    // Staged bytes go into their cache files once the changes pause
    // (creating thousands of files took a third of the mount's CPU while
    // cp -r ran); until then the log and the cache's memory hold them.
    auto more = [this] { return writer_stopping_ || !queue_.empty(); };
    // (Record wakes the writer only while it waits here.)
    auto wait_more = [&](std::optional<std::chrono::milliseconds> limit) {
      writer_awaits_ = true;
      if (limit) q_cv_.wait_for(lock, *limit, more);
      else q_cv_.wait(lock, more);
      writer_awaits_ = false;
    };
    wait_more(unplaced_.empty() ? std::nullopt : std::optional(kPlaceAfter));
    if (queue_.empty()) {
      lock.unlock();
      Status st = PlaceStaged();
      if (!st.ok())
        spdlog::warn("{}; the intent log keeps the bytes{}", st.ToString(),
                     writer_stopping_ ? " for the next mount" : ", trying again with the next change");
      lock.lock();
      // All saved and placed: the log starts again (appends take this lock too).
      if (st.ok() && queue_.empty())
        if (Status r = state_->ResetLog(); !r.ok()) spdlog::warn("{} (it is replayed harmlessly)", r.ToString());
      if (writer_stopping_ && queue_.empty()) return;
      if (!st.ok() && queue_.empty()) wait_more(std::nullopt);  // (nothing to retry for until then)
      continue;
    }
    if (burst && !writer_stopping_ && waiters_ == 0) {
      // Changes kept coming while the last ones were written (cp -r, tar
      // x): let a few more gather, one transaction for all.
      // (Longer in a burst: a transaction writes each page it touches once,
      // and the rows of random node ids touch a page each.)
      const auto gather = dense_len_ >= kBurstMin ? kWriterBurstGather : kWriterGather;
      q_cv_.wait_for(lock, gather, [this] { return writer_stopping_ || waiters_ > 0; });
    }
    // Elements of a deque stay put while others are pushed at its back.
    std::vector<const LocalState::Change*> items;
    for (auto& q : queue_) {
      // A bitmap of a node the cache forgot since (deleted) is not saved.
      std::erase_if(q.files, [this](const CachedFile& f) { return !cache_->Holds(f.id); });
      items.push_back(&q);
      if (items.size() >= kMaxItems) break;
    }
    lock.unlock();
    spdlog::trace("local state: writing {} queued changes", items.size());
    Status st = state_->SaveChanges(items);
    bool journal = false;
    if (st.ok()) {
      for (const LocalState::Change* q : items) {
        for (const auto& s : q->staged) unplaced_.push_back(s.id);
        journal = journal || !q->entries.empty();
        CountPending({}, q->rows, -1);  // saved: a remote change may land now
      }
      // (Or now, when too many wait in memory.)
      if (cache_->StagedBytes() > kMaxStagedBytes)
        if (Status p = PlaceStaged(); !p.ok()) spdlog::warn("{} (the intent log keeps the bytes)", p.ToString());
    }
    lock.lock();
    ++attempts_;
    if (st.ok()) {
      written_ticket_ = items.back()->ticket;
      tree_->Saved(written_ticket_);
      for (size_t i = 0; i < items.size(); ++i) {
        queued_entries_ -= queue_.front().entries.size();
        queue_.pop_front();
      }
      burst = !queue_.empty();
      if (!burst && !unplaced_.empty() && state_->log_bytes() > kLogCatchUp / 2) {
        // A long stream of new files: the log may only start again once
        // their bytes are in place (beyond kLogCatchUp every change would
        // wait for the writer).
        lock.unlock();
        if (Status p = PlaceStaged(); !p.ok()) spdlog::warn("{} (the intent log keeps the bytes)", p.ToString());
        lock.lock();
        burst = !queue_.empty();
      }
      // All saved: the log starts again (appends take this lock too).
      if (!burst && unplaced_.empty())
        if (Status r = state_->ResetLog(); !r.ok()) spdlog::warn("{} (it is replayed harmlessly)", r.ToString());
      write_error_ = Status::Ok();
      backoff = std::chrono::milliseconds(0);
      written_cv_.notify_all();
      if (journal) {
        lock.unlock();
        Kick();
        lock.lock();
      }
      continue;
    }
    write_error_ = st;
    written_cv_.notify_all();
    if (writer_stopping_) {
      spdlog::error("unmount: {} changes could not be saved in the local state ({}); they stay in the intent log "
                    "for the next mount",
                    queue_.size(), st.ToString());
      return;
    }
    backoff = std::min<std::chrono::milliseconds>(std::max(backoff * 2, std::chrono::milliseconds(50)),
                                                   std::chrono::milliseconds(2000));
    spdlog::error("saving {} changes in the local state failed: {} (they are safe in the intent log; free space "
                  "in the cache dir; trying again in {} ms)",
                  queue_.size(), st.ToString(), backoff.count());
  }
}

Status WriteBack::PlaceStaged() {
  size_t done = 0;
  Status st;
  for (; done < unplaced_.size(); ++done)
    if (st = cache_->Materialize(unplaced_[done]); !st.ok()) break;
  if (done) spdlog::debug("local state: {} staged files into the cache", done);
  unplaced_.erase(unplaced_.begin(), unplaced_.begin() + static_cast<std::ptrdiff_t>(done));
  return st;
}

uint64_t WriteBack::Pending() {
  uint64_t queued;
  {
    std::lock_guard lock(q_mu_);
    queued = queued_entries_;
  }
  return Persisted() + queued + applying_.load();
}

uint64_t WriteBack::Persisted() {
  // A local state that cannot be read keeps its last answer: never a 0
  // that would tell `tidefs sync` everything is sent.
  auto n = state_->JournalSize();
  if (!n.ok()) {
    spdlog::warn("write-back: cannot count the journal: {}", n.status().ToString());
    return last_persisted_.load();
  }
  last_persisted_.store(*n);
  return *n;
}

void WriteBack::Loop() {
  ready_.wait();
  LoadKeptIn();
  auto backoff = std::chrono::milliseconds(0);
  bool held = false;      // the last look stopped at a file held back: look again soon
  bool look_now = false;  // a send ahead went on until its stint ended: back at once
  std::unique_lock lock(mu_);
  for (;;) {
    if (look_now) look_now = false;
    else if (backoff.count() > 0) cv_.wait_for(lock, backoff, [this] { return stopping_; });
    else WaitForKick(lock, held ? kHeldLook : std::chrono::milliseconds(2000));
    if (stopping_) return;
    bool was_kicked = kicked_;
    kicked_ = false;
    lock.unlock();
    if (was_kicked) std::this_thread::sleep_for(kIdle);  // let a burst of changes gather
    Status st;
    held = false;
    uint64_t held_id = 0;
    for (int i = 0; i < 1000 && st.ok() && !held && Persisted() > 0; ++i) {
      if (i > 0) std::this_thread::sleep_for(kBurstGather);
      LetBurstFinish();
      st = FlushBatch(&held, &held_id);
    }
    // Nothing can go while a file is held back: its blocks can.
    if (st.ok() && held && send_ahead_) look_now = SendAheadWhileHeld(held_id);
    if (!look_now && !held) {
      std::lock_guard flush_lock(flush_mu_);
      bodies_.clear();  // nothing being written: the request bodies' memory goes back
      if (!kept_in_.empty()) ForgetKeptClosed();
    }
    if (!st.ok()) {
      backoff = std::min<std::chrono::milliseconds>(std::max(backoff * 2, std::chrono::milliseconds(250)),
                                                     std::chrono::milliseconds(10000));
      spdlog::warn("write-back: {} ({} changes kept in the journal; trying again in {} ms)", st.ToString(), Persisted(),
                   backoff.count());
    } else {
      backoff = std::chrono::milliseconds(0);
    }
    lock.lock();
  }
}

void WriteBack::LetBurstFinish() {
  for (;;) {
    {
      std::lock_guard lock(q_mu_);
      const auto now = std::chrono::steady_clock::now();
      if (!stream_dense_ || now - last_change_ > kBurstPause || now - stream_since_ > kMaxDefer) return;
    }
    std::unique_lock lock(mu_);
    if (cv_.wait_for(lock, kBurstGap, [this] { return stopping_; })) return;
  }
}

Status WriteBack::Drain(std::chrono::seconds patience) {
  // A server that takes the requests and never answers is given up on as
  // one that is down, the exchanges under way included (not after the
  // 60 s timeout of each, then tries again).
  client_->SetStall(std::max<std::chrono::milliseconds>(patience, std::chrono::seconds(1)));
  ready_.wait();
  auto last_progress = std::chrono::steady_clock::now();
  if (Status w = WaitWritten(); !w.ok())
    return Status::IoError("changes could not be saved in the local state (" + w.message() + ")");
  uint64_t left = Persisted();
  while (left > 0) {
    if (left) spdlog::info("unmount: {} changes to send", left);
    Status st = FlushBatch();
    // A conflict's fix-up is queued: in the local state before the next look.
    if (Status w = WaitWritten(); !w.ok())
      return Status::IoError("changes could not be saved in the local state (" + w.message() + ")");
    const uint64_t now_left = Persisted();
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
  return ConflictCopyName(name, device_, stamp);
}

void WriteBack::ShowServersAttributes(const std::vector<NodeRecord>& made, const std::unordered_set<uint64_t>& waiting) {
  // The tree's record of a file our op moved to a new version made
  // elsewhere (a move or attributes over their edit, a place found for
  // ours) has that version with our size and mode: without local bytes,
  // the size and time are the server's (else a read asks the new version
  // for the old size, and fails), and so is the mode (a chmod made
  // elsewhere: the remote sync's record of it may have come before this,
  // and no other comes); the place and mode stay ours while a change of
  // ours to them waits.
  for (const auto& r : made) {
    if (r.deleted || r.kind != NodeKind::kFile || cache_->IsLocal(r.id)) continue;
    auto here = tree_->Get(r.id);
    if (!here.ok() || !*here || (*here)->version != r.version || ((*here)->size == r.size && (*here)->mode == r.mode))
      continue;
    NodeRecord fixed = waiting.count(r.id) ? **here : r;
    fixed.size = r.size;
    fixed.mtime_ns = r.mtime_ns;
    (void)Record({fixed}, {});
    InvalidateNode(r.id);
  }
}

void WriteBack::KeepOrForget(uint64_t id, KeptIn copy) {
  // An open file keeps its bytes (they are in the copy now as well), and
  // so does one written since the bytes sent: its next flush is refused
  // the same way and goes to the copy.
  if (WrittenHereStill(id)) {
    kept_in_[id] = copy;
    SaveKeptIn();
    return;
  }
  if (kept_in_.erase(id)) SaveKeptIn();
  ShowTheirs(id, copy);
}

constexpr const char* kKeptInKey = "kept_in";  // "ID:COPY:VERSION ..."

void WriteBack::LoadKeptIn() {
  auto v = state_->Meta(kKeptInKey);
  if (!v.ok()) {
    spdlog::warn("write-back: reading the conflict copies' links failed ({}); later writes to those files make "
                 "copies of their own", v.status().ToString());
    return;
  }
  std::istringstream in(*v);
  std::string item;
  while (in >> item) {
    KeptIn k;
    uint64_t id = 0;
    if (std::sscanf(item.c_str(), "%" SCNu64 ":%" SCNu64 ":%" SCNu64, &id, &k.copy, &k.version) == 3 && id && k.copy)
      kept_in_[id] = k;
  }
  // Those with nothing left to send are done with (closed: no file is open
  // in a new mount).
  if (!kept_in_.empty()) ForgetKeptClosed();
}

void WriteBack::SaveKeptIn() {
  std::string v;
  for (const auto& [id, k] : kept_in_)
    v += (v.empty() ? "" : " ") + std::to_string(id) + ":" + std::to_string(k.copy) + ":" + std::to_string(k.version);
  if (Status st = state_->SetMeta(kKeptInKey, v); !st.ok())
    spdlog::warn("write-back: saving the conflict copies' links failed ({}); after a restart, later writes to those "
                 "files make copies of their own", st.ToString());
}

void WriteBack::ShowTheirs(uint64_t id, std::optional<KeptIn> copy) {
  // The local record carries our size still (written here since theirs
  // was recorded): the server's is the one now.
  // (Read first: until the record is theirs, a reader opening the node
  // from the server would ask their version for our size, and fail.)
  auto r = client_->GetNode(id);
  // A newer version reached the tree while this was read (a change made
  // elsewhere, the remote sync quicker): the server's newest, else the
  // record would take that version with the older one's size, and every
  // read of the file would fail (its manifest says otherwise).
  for (int i = 0; i < 3 && r.ok(); ++i) {
    auto now = tree_->Get(id);
    if (!now.ok() || !*now || (*now)->version <= r->version) break;
    r = client_->GetNode(id);
  }
  // Opened or written here while that was read (a program writing the
  // file again at once): its bytes stay, and go where its edit went.
  if (WrittenHereStill(id)) {
    if (copy) {
      kept_in_[id] = *copy;
      SaveKeptIn();
    }
    InvalidateNode(id);
    return;
  }
  auto here = tree_->Get(id);
  cache_->Forget(id);
  if (r.ok()) (void)Record({*r}, {});
  else spdlog::warn("write-back: reading node {} back failed ({}); it is read again at the next change", id, r.status().ToString());
  InvalidateNode(id);  // what the kernel kept of ours
  // Theirs may be elsewhere (moved there): both places' names and listings.
  if (here.ok() && *here) InvalidateEntry((*here)->parent, (*here)->name);
  if (r.ok() && !r->deleted) InvalidateEntry(r->parent, r->name);
}

void WriteBack::ForgetKeptClosed() {
  std::vector<std::pair<uint64_t, KeptIn>> gone;
  for (auto it = kept_in_.begin(); it != kept_in_.end();) {
    if (WrittenHereStill(it->first)) {
      ++it;
      continue;
    }
    gone.emplace_back(it->first, it->second);
    it = kept_in_.erase(it);
  }
  if (!gone.empty()) SaveKeptIn();
  for (const auto& [id, copy] : gone) ShowTheirs(id, copy);
}

void WriteBack::Kick() {
  bool wake;
  {
    std::lock_guard lock(mu_);
    kicked_ = true;
    wake = awaits_kick_;
  }
  if (wake) cv_.notify_all();
}

void WriteBack::WaitForKick(std::unique_lock<std::mutex>& lock, std::chrono::milliseconds limit) {
  awaits_kick_ = true;
  cv_.wait_for(lock, limit, [this] { return stopping_ || kicked_; });
  awaits_kick_ = false;
}

bool WriteBack::KickedOrStopping() {
  std::lock_guard lock(mu_);
  return kicked_ || stopping_;
}

void WriteBack::EndAheadShown(uint64_t id) {
  ProgressFn progress;
  std::string path;
  {
    std::lock_guard plock(progress_mu_);
    auto it = ahead_shown_.find(id);
    if (it == ahead_shown_.end()) return;
    path = std::move(it->second);
    ahead_shown_.erase(it);
    progress = progress_;
  }
  if (progress) progress(path, 0, 0, 0, true);
}

bool WriteBack::SendAheadWhileHeld(uint64_t id) {
  if (std::chrono::steady_clock::now() < ahead_after_) return false;
  std::lock_guard flush_lock(flush_mu_);
  std::optional<BlockSender> sender;
  bool failed = false;
  bool again = SendAheadRounds(id, &sender, &failed);
  if (sender) {
    if (Status st = sender->Finish(); !st.ok()) {
      // Rounds took their blocks for sent as they were queued: some are
      // not on the server. The flush reads and asks about them again.
      spdlog::debug("write-back: sending node {} ahead: {}", id, st.ToString());
      cache_->ForgetAhead(id);
      if (!failed) AheadFailed();  // (once per failure: a round may have seen it too)
      again = false;
    }
  }
  return again;
}

void WriteBack::AheadFailed() {
  // The server, most likely: the flush will say; stints wait longer each time.
  ahead_backoff_ = std::min<std::chrono::milliseconds>(std::max(ahead_backoff_ * 2, std::chrono::milliseconds(250)),
                                                       std::chrono::milliseconds(10000));
  ahead_after_ = std::chrono::steady_clock::now() + ahead_backoff_;
}

bool WriteBack::SendAheadRounds(uint64_t id, std::optional<BlockSender>* sender, bool* failed) {
  const auto start = std::chrono::steady_clock::now();
  auto last_sent = start;
  while (!KickedOrStopping()) {
    if (std::chrono::steady_clock::now() - start > kAheadStint) return true;
    switch (SendAhead(id, sender)) {
      case Ahead::kFailed:
        AheadFailed();
        *failed = true;
        return false;
      case Ahead::kSent:
        ahead_backoff_ = std::chrono::milliseconds(0);
        last_sent = std::chrono::steady_clock::now();
        continue;
      case Ahead::kNothingYet:
        break;
    }
    if (std::chrono::steady_clock::now() - last_sent > kAheadPatience) return false;
    std::unique_lock wait(mu_);
    WaitForKick(wait, kAheadLook);
  }
  return false;
}

WriteBack::Ahead WriteBack::SendAhead(uint64_t id, std::optional<BlockSender>* sender) {
  auto n = tree_->Get(id);
  if (!n.ok() || !*n || (*n)->kind != NodeKind::kFile) return Ahead::kNothingYet;
  auto view = cache_->BeginAhead(**n, kAheadMin, kAheadRound);
  if (!view.ok()) {
    spdlog::debug("write-back: node {} cannot be sent ahead: {}", id, view.status().ToString());
    return Ahead::kFailed;
  }
  if (!*view) return Ahead::kNothingYet;
  ChunkCache::AheadView& v = **view;
  UploadStats up;
  up.drop_behind = true;
  // Shown as the file's upload (`tidefs status`, other devices): how far
  // into the file it has got.
  const ProgressFn progress = CurrentProgress();
  if (progress) {
    const std::string path = tree_->PathOf(id);
    {
      // Ended when the file's flush begins, even under another name by then.
      std::lock_guard plock(progress_mu_);
      auto [it, fresh] = ahead_shown_.try_emplace(id, path);
      if (!fresh && it->second != path) {
        progress(it->second, 0, 0, 0, true);  // renamed between rounds
        it->second = path;
      }
    }
    const auto t0 = std::chrono::steady_clock::now();
    const uint64_t first = v.blocks.front() * kBlockSize;
    up.on_progress = [this, id, progress, path, t0, size = v.size, first](uint64_t done) {
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      auto now = tree_->Get(id);  // out of what the file holds now: it is still being written
      const uint64_t total = now.ok() && *now ? std::max(size, (*now)->size) : size;
      progress(path, done, total, secs > 0 && done > first ? (done - first) / secs : 0, false);
    };
    up.on_progress(first);  // shown from the start (a server that stalls now leaves it there)
  }
  if (!*sender) sender->emplace(client_, kUploadSenders, &bodies_);
  auto hashes = UploadBlocksAhead(client_, v.fd, v.size, v.blocks, &up, &**sender);
  if (up.on_progress && hashes.ok()) up.on_progress((v.blocks.back() + 1) * kBlockSize);
  cache_->EndAhead(id, v.blocks, hashes.ok() ? *hashes : std::vector<Hash128>{}, hashes.ok());
  if (!hashes.ok()) {
    spdlog::debug("write-back: sending node {} ahead: {}", id, hashes.status().ToString());
    return Ahead::kFailed;
  }
  Count(up);
  blocks_sent_ahead_ += up.blocks_sent;
  spdlog::debug("write-back: node {}: {} blocks sent ahead of its flush ({} were on the server)", id, v.blocks.size(),
                v.blocks.size() - up.blocks_sent);
  return Ahead::kSent;
}

void WriteBack::Count(const UploadStats& up) {
  blocks_hashed_ += up.blocks_hashed;
  blocks_sent_ += up.blocks_sent;
  bytes_sent_ += up.bytes_sent;
}

WriteBack::ProgressFn WriteBack::CurrentProgress() {
  std::lock_guard plock(progress_mu_);
  return progress_;
}

WriteBack::UploadCounters WriteBack::uploads() const {
  return {blocks_hashed_.load(), blocks_sent_.load(), bytes_sent_.load(), blocks_sent_ahead_.load()};
}

Status WriteBack::ServerTooOld(const std::string& what) const {
  return Status::Unavailable(what + " needs a tidefs server of protocol " + std::to_string(kProtocolExchange) +
                             " or later, and the server at " + client_->options().server + " speaks " +
                             std::to_string(client_->server_protocol()) +
                             ": upgrade the server (this change and the ones after it wait in the journal)");
}

Status WriteBack::FlushBatch(bool* held, uint64_t* held_id) {
  std::lock_guard flush_lock(flush_mu_);
  if (held) *held = false;
  ASSIGN_OR_RETURN(auto entries, state_->PendingJournal(kBatchEntries));
  if (entries.empty()) return Status::Ok();
  if (!versions_loaded_) {
    // What an earlier mount's commits made of nodes its journal names.
    ASSIGN_OR_RETURN(auto known, state_->KnownVersions());
    for (const auto& [id, v] : known) versions_.emplace(id, v);
    versions_loaded_ = true;
  }
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
  std::vector<Sent> sent;
  std::unordered_set<uint64_t> flushed;
  std::unordered_map<uint64_t, uint64_t> based;  // node -> the version our op in this batch names
  // Nodes given new content by our ops whose bytes are not in their cache
  // entry (a conflict copy taking a later write): never advanced as is.
  std::unordered_set<uint64_t> content_elsewhere;
  BlockBatch small_files;  // blocks of the batch's small files, sent together before the commit
  uint64_t last = 0;
  for (const auto& e : entries) {
    CommitOp op = e.op;
    if (!e.flush) {
      // An op that names a version of a node created in this batch waits
      // for the next one (the version comes from this commit).
      // So does a second op on one node (the first moves its version).
      if (NeedsBase(op.type) && (created.count(op.id) || based.count(op.id))) break;
      // A swap with such a node too: where the node is follows that op's
      // answer (a conflict name), so the swap waits for it.
      if (op.exchange && (created.count(op.exchange) || based.count(op.exchange))) break;
      // A server older than swaps would refuse the batch: what comes
      // before goes, the swap waits in the journal for a newer server.
      // (Not inside a batch already sent once: its retry is the same range.)
      if (op.exchange && e.seq > inflight && client_->server_protocol() < kProtocolExchange) {
        if (last != 0) break;
        // Not known (offline since the start) or older: ask, the server
        // may be a newer one by now.
        auto who = client_->WhoAmI();
        if (!who.ok())
          return Status(who.status().code(), "before sending the swap of " + tree_->PathOf(op.id) + " with " +
                                                 tree_->PathOf(op.exchange) + ": " + who.status().message());
        if (client_->server_protocol() < kProtocolExchange)
          return ServerTooOld("the swap of " + tree_->PathOf(op.id) + " with " + tree_->PathOf(op.exchange));
      }
      if (NeedsBase(op.type)) {
        // The version we last knew: the tree's, or (a node deleted here)
        // the one our own commits gave it.
        // (Of one deleted here, the newer of the two: an earlier mount's
        // record of a version it made may predate one a later commit made,
        // whose answer the entry's base already names.)
        auto n = tree_->Get(op.id);
        if (n.ok() && *n) op.base = (*n)->version;
        else if (auto v = versions_.find(op.id); v != versions_.end())
          op.base = std::max(e.op.has_base ? e.op.base : 0, v->second);
        if (spdlog::should_log(spdlog::level::trace))
          spdlog::trace("write-back: {} of node {} names version {} ({})", OpName(op.type), op.id, op.base,
                        n.ok() && *n ? "the tree's" : versions_.count(op.id) ? "our commit's" : "the journal's");
        op.has_base = true;
        based[op.id] = op.base;
      }
      if (Creates(op.type)) created[op.id] = ops.size();
      ops.push_back(std::move(op));
    } else if (!flushed.count(op.id)) {
      if (based.count(op.id)) break;  // after another op on this node: next batch
      // (Not inside a batch already sent once: its retry must be the same
      // range, under the same key. The flush begins either way.)
      if (hold_ && hold_(op.id, /*may_hold=*/e.seq > inflight)) {
        if (held && last == 0) *held = true;
        if (held_id) *held_id = op.id;
        break;
      }
      ASSIGN_OR_RETURN(std::optional<NodeRecord> n, tree_->Get(op.id));
      EndAheadShown(op.id);
      if (n && n->kind == NodeKind::kFile) {
        // A file being written through another handle right now (one
        // write() the kernel split into several requests may be half
        // done): its view waits for a pause in the writes, so a commit
        // does not take half a write (which stayed on the server when
        // the rest was refused as stale).
        for (int i = 0; i < kSettleTries && is_open_ && is_open_(n->id) && cache_->WrittenWithin(n->id, kSettle); ++i)
          std::this_thread::sleep_for(kSettle);
        ASSIGN_OR_RETURN(auto view, cache_->BeginFlush(*n));
        UploadStats up;
        up.drop_behind = true;
        std::string path;
        // Big uploads are shown while they run (`tidefs status`, other devices).
        const ProgressFn progress = CurrentProgress();
        const bool show = progress && view.size >= kShowUploadsFrom;
        if (show) {
          path = tree_->PathOf(n->id);
          const auto t0 = std::chrono::steady_clock::now();
          const uint64_t total = view.size;
          // The rate counts from the first report: a file sent ahead
          // starts far into it.
          up.on_progress = [progress, path, t0, total, from = std::optional<uint64_t>()](uint64_t done) mutable {
            if (!from) from = done;
            double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            progress(path, done, total, secs > 0 && done > *from ? (done - *from) / secs : 0, false);
          };
          progress(path, 0, total, 0, false);
        }
        auto uploaded = UploadFileBlocks(client_, view.fd, view.size, view.base, view.dirty, 8, &up, &small_files,
                                         view.staged ? &*view.staged : nullptr, &view.known, &bodies_);
        if (show) progress(path, view.size, view.size, 0, true);
        if (!uploaded.ok())
          return Status(uploaded.status().code(), "sending node " + std::to_string(n->id) + " (" + tree_->PathOf(n->id) +
                                                      "): " + uploaded.status().message());
        view.pin.reset();  // read: its cache file may be closed while the batch goes on
        view.fd = -1;
        const bool from_staged = view.staged.has_value();
        view.staged.reset();  // (a batch may hold thousands)
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
        sent.push_back({n->id, std::move(view), std::move(m), from_staged, n->parent, n->name});
        flushed.insert(n->id);
        Count(up);
        spdlog::debug("write-back: node {} ({} bytes): {} blocks hashed, {} sent", n->id, n->size, up.blocks_hashed,
                      up.blocks_sent);
      }
    }
    last = e.seq;
  }
  if (last == 0) return Status::Ok();
  if (!small_files.blocks.empty() && !ops.empty()) {
    UploadStats up;
    const size_t n = small_files.blocks.size();
    RETURN_IF_ERROR(SendMissingBlocks(client_, &small_files.blocks, 8, &up));
    Count(up);
    spdlog::debug("write-back: {} of the batch's {} small-file blocks sent", up.blocks_sent, n);
  }
  if (ops.empty()) {
    // A batch sent before whose ops have all gone since (its files deleted
    // here) and whose answer was lost: if the server applied it, the
    // versions it made are the ones our later changes must name (a delete
    // naming the older one is refused as stale and dropped). A level-4
    // server gives that answer to an empty commit under the batch's key.
    // (Its level unknown, offline since the start: asked first.)
    if (inflight == last && client_->server_protocol() == 0) (void)client_->WhoAmI();
    if (inflight == last && client_->server_protocol() >= kProtocolAskAnswer) {
      ASSIGN_OR_RETURN(std::string key, state_->InflightKey());
      if (!key.empty()) {
        ASSIGN_OR_RETURN(CommitReply reply, client_->Commit({}, key));
        if (reply.refused)
          return Status(CodeForHttpStatus(reply.http_status),
                        "asking for the lost answer of a commit: " + reply.message + " (" + reply.reason + ")");
        if (reply.replayed) {
          spdlog::debug("write-back: the lost answer of a batch whose changes went since: {} records",
                        reply.items.size());
          Applying applying(applying_, entries.size());
          RETURN_IF_ERROR(Finish(entries, last, reply.items, true));
          ApplyReplayed({}, reply.items, {}, {}, Named(entries, last));
          return Status::Ok();
        }
      }
    }
    return Finish(entries, last, {}, inflight != 0);
  }

  // Local fix-ups once the commit holds, given the versions it made.
  std::vector<std::function<void(const std::unordered_map<uint64_t, const NodeRecord*>&)>> after;
  // The same, before the journal lets go of the batch's entries.
  std::vector<std::function<void(const std::unordered_map<uint64_t, const NodeRecord*>&)>> before_finish;
  // Where ours ends up when a refusal moved it (a conflict name, the top
  // directory): applied here once the commit holds, the last place only.
  struct Placed {
    NodeRecord rec;
    bool in_tree = false;  // else a conflict copy, recorded by its own fix-up
    uint64_t old_parent = 0;
    std::string old_name;
  };
  std::unordered_map<uint64_t, Placed> placed;
  std::vector<uint64_t> restore;  // nodes whose move or delete was dropped: back as the server has them
  std::vector<uint64_t> repaged;  // nodes our op changed on a version made elsewhere: the kernel's pages are stale
  // Nodes whose move or attributes went through over a change of their
  // bytes made elsewhere since the version we knew (kept here), and which
  // here are deleted or hold bytes of ours: this device shows bytes based
  // on that version, not theirs, so it keeps naming it (a delete or write
  // of ours still to go is then refused as stale: theirs is kept). Taking
  // the version this commit makes would pass a delete of ours for one made
  // on top of their bytes, and lose them. Their record comes with the
  // remote sync once nothing of ours waits.
  std::unordered_map<uint64_t, uint64_t> unseen;
  auto forced = [&](const CommitOp& o, uint64_t current) {
    if (!o.has_base || unseen.count(o.id)) return;
    auto n = tree_->Get(o.id);
    if (n.ok() && *n && !cache_->IsLocal(o.id)) return;  // shown as theirs once committed (repaged)
    // (Base 0: a node deleted here since, whose version we no longer
    // know: taken as changed.)
    if (o.base == 0 || BytesDiffer(o.id, o.base, current)) unseen[o.id] = o.base;
  };
  // The key names this batch: random, saved with the in-flight mark before
  // the first send, the same for every attempt of this journal range (also
  // after a crash), so a lost answer comes back even when the body sent
  // then had refusals resolved into it.
  std::string key;
  if (inflight == last) {
    ASSIGN_OR_RETURN(key, state_->InflightKey());
  }
  if (key.empty()) {
    std::random_device rd;
    char hex[17];
    std::snprintf(hex, sizeof hex, "%08x%08x", rd(), rd());
    key = std::string("b") + hex + "-" + std::to_string(entries.front().seq) + "-" + std::to_string(last);
    RETURN_IF_ERROR(state_->SetInflightBatch(last, key));
  }
  // The server stops at the first refused op: each answer resolves one, so
  // a batch may take one attempt per op, and a few more.
  const int attempts = 16 + static_cast<int>(ops.size());
  for (int attempt = 0; attempt < attempts; ++attempt) {
    ASSIGN_OR_RETURN(CommitReply reply, client_->Commit(ops, key));
    if (!reply.refused) {
      spdlog::debug("write-back: committed {} ops ({} journal entries){}", ops.size(), entries.size(),
                    reply.replayed ? ", an earlier attempt's answer" : "");
      Applying applying(applying_, entries.size());
      for (const auto& [id, base] : unseen)
        std::erase_if(reply.items, [id = id](const NodeRecord& r) { return r.id == id && !r.deleted; });
      // The versions first: a change recorded from here on names them.
      // (A delete's too: a record of the node from before it, still on
      // its way through /changes, must not bring it back.)
      if (!reply.replayed) {
        for (const auto& r : reply.items) {
          if (!r.deleted) tree_->SetVersion(r.id, r.version, r.seq);
          else tree_->NoteDeleted(r.id, r.seq);
        }
      }
      // The cache takes the versions our bytes made, on disk, before the
      // journal lets go of the entries: a kill in between left the file's
      // later bytes naming the older version (refused as stale: a conflict
      // copy of this device's own change). A kill before the entries go
      // sends the batch again under its key, and its answer is replayed.
      std::vector<uint64_t> saved;
      std::vector<const Sent*> staged_later;  // new files sent from staged bytes, not opened since
      if (!reply.replayed) {
        std::unordered_map<uint64_t, uint64_t> made;
        for (const auto& r : reply.items)
          if (!r.deleted) made[r.id] = r.version;
        std::vector<LocalState::CachedFile> records;
        for (const auto& s : sent) {
          auto it = made.find(s.id);
          // (A new file sent from its staged bytes, not opened since: its
          // record is written whole below, before the cache takes it.)
          if (it == made.end()) continue;
          if (s.staged && !cache_->Holds(s.id)) {
            staged_later.push_back(&s);
            continue;
          }
          cache_->Committed(s.id, it->second, s.m, s.view.write_gen, s.staged);
          saved.push_back(s.id);
          if (auto f = cache_->FileRecord(s.id)) records.push_back(std::move(*f));
        }
        if (!records.empty())
          if (Status f = state_->SaveFiles(records); !f.ok()) spdlog::warn("{} (saved again with the next change)", f.ToString());
        // Nodes our ops moved or changed the attributes of from the version
        // we knew: the cached bytes are still those of the new version (the
        // same window: a write after it, still waiting, named the base).
        // Content changes (in `sent`) moved with their new manifest above:
        // saved with the old one, a kill then left blocks that matched
        // neither (EIO on the next mount).
        std::unordered_set<uint64_t> sent_ids = content_elsewhere;
        for (const auto& s : sent) sent_ids.insert(s.id);
        for (const auto& [id, base] : based)
          if (auto it = made.find(id); it != made.end() && !sent_ids.count(id))
            cache_->AdvanceVersion(id, base, it->second);
      }
      if (reply.replayed) CommitReplayedBytes(reply.items, sent, based);
      std::unordered_map<uint64_t, const NodeRecord*> by_id;  // the versions the commit made
      for (const auto& r : reply.items) by_id[r.id] = &r;
      if (!reply.replayed)
        for (auto& f : before_finish) f(by_id);
      RETURN_IF_ERROR(Finish(entries, last, reply.items, true));
      if (reply.replayed) {
        ApplyReplayed(ops, reply.items, sent, based, Named(entries, last));
        return Status::Ok();
      }
      // The nodes a change of ours still waits for (asked now: the fix-ups
      // below queue records of their own, which count as waiting too).
      std::unordered_set<uint64_t> waiting;
      for (const auto& r : reply.items) {
        if (HasPending(r.id)) waiting.insert(r.id);
        if (r.deleted) {
          versions_.erase(r.id);
        } else {
          tree_->SetVersion(r.id, r.version, r.seq);
          versions_[r.id] = r.version;
        }
      }
      // Files created and never written: nothing local is left of them
      // (unless a flush of theirs waits in the journal still: a batch cut
      // short, or a retry of the entries of a lost answer). Also when the
      // create went in an earlier batch with a change of the node (a move)
      // still waiting: that change's batch is the last (else the node
      // stayed local, and a record of it from the server waited forever).
      for (const auto& o : ops)
        if (!flushed.count(o.id) && by_id.count(o.id) && !HasPending(o.id)) cache_->CreatedCommitted(o.id);
      // Files sent from their staged bytes: all here at the new version,
      // on record before the cache takes them for committed (a read then
      // finds the record, not a node with nothing local and nothing known).
      std::vector<LocalState::CachedFile> staged_files;
      // (One opened since has its bitmap saved from the entry, below.)
      for (const auto& s : sent)
        if (auto it = by_id.find(s.id); s.staged && it != by_id.end() && !it->second->deleted && !cache_->Holds(s.id))
          staged_files.push_back(AllHere(s.id, it->second->version, s.m));
      if (!staged_files.empty())
        if (Status f = state_->SaveFiles(staged_files); !f.ok())
          spdlog::warn("{} (the new files are fetched again when read)", f.ToString());
      for (const Sent* s : staged_later) {
        cache_->Committed(s->id, by_id.at(s->id)->version, s->m, s->view.write_gen, s->staged);
        saved.push_back(s->id);
      }
      if (!saved.empty()) (void)Record({}, {}, saved);  // their bitmaps (also in queue order with later ones)
      for (auto& f : after) f(by_id);
      for (uint64_t id : restore) RestoreNode(id);
      for (auto& [id, p] : placed) {
        if (!p.in_tree) continue;
        if (auto it = by_id.find(id); it != by_id.end()) {
          p.rec.version = it->second->version;
          p.rec.seq = it->second->seq;
        }
        (void)Record({p.rec}, {});
        InvalidateEntry(p.old_parent, p.old_name);
        InvalidateEntry(p.rec.parent, p.rec.name);
      }
      ShowServersAttributes(reply.items, waiting);
      for (uint64_t id : repaged) InvalidateNode(id);
      return Status::Ok();
    }
    const size_t k = std::min(reply.op, ops.size() - 1);
    CommitOp& op = ops[k];
    spdlog::info("write-back: the server refused {} of node {} ({}: {})", OpName(op.type), op.id, reply.reason,
                 reply.message);
    if (reply.http_status == 400 && std::any_of(ops.begin(), ops.end(), [](const CommitOp& o) { return o.exchange; })) {
      // A server older than swaps (downgraded since it last said) cannot
      // read the body: say so, and the batch waits for a newer one.
      if (client_->WhoAmI().ok() && client_->server_protocol() < kProtocolExchange)
        return ServerTooOld("the batch holds a swap, which");
    }
    if (reply.reason == "missing_blocks") {
      // The server lacks blocks the commit names: those sent ahead are
      // read and sent again when the batch is tried again.
      for (const CommitOp& o : ops) cache_->ForgetAhead(o.id);
      return Status::Unavailable("the server lacks " + std::to_string(reply.missing.size()) + " blocks of node " +
                                 std::to_string(op.id) + " (" + tree_->PathOf(op.id) +
                                 "); they are read and sent again");
    }
    if (op.type == OpType::kWrite && (reply.reason == "deleted" || reply.reason == "no_such_node") &&
        (reply.node == op.id || reply.node == 0)) {
      // Deleted elsewhere since our base: the edit brings the file back,
      // the same node (a create naming its id), so what is written to it
      // later, or still open, follows it; if its directory is gone too,
      // the create is moved to the top directory below.
      auto n = tree_->Get(op.id);
      if (!n.ok() || !*n) return Status::Internal("write-back: node " + std::to_string(op.id) + " vanished");
      CommitOp c;
      c.type = OpType::kCreate;
      c.id = op.id;
      c.parent = (*n)->parent;
      c.name = (*n)->name;
      c.has_mode = true;
      c.mode = (*n)->mode;
      c.has_mtime = true;
      c.mtime_ns = (*n)->mtime_ns;
      c.size = op.size;
      c.blocks = std::move(op.blocks);
      based.erase(op.id);
      spdlog::warn("write-back: \"{}\" was deleted elsewhere; this device's edit brings it back", tree_->PathOf(op.id));
      op = std::move(c);
      continue;
    }
    if (op.type == OpType::kWrite && reply.reason == "stale_base" && kept_in_.count(op.id)) {
      // Written on after its edit went to a conflict copy: the copy takes
      // these bytes too (unless it is gone or changed elsewhere: then a
      // copy of its own, below, on the next refusal).
      const uint64_t old_id = op.id, kept = kept_in_[op.id].copy, kept_version = kept_in_[op.id].version;
      auto k = tree_->Get(kept);
      if (k.ok() && *k && (*k)->kind == NodeKind::kFile && kept_version != 0) {
        op.id = kept;
        op.base = kept_version;  // ours: an edit made elsewhere since is a conflict
        based.erase(old_id);
        based[kept] = op.base;
        content_elsewhere.insert(kept);
        for (auto& s : sent)
          if (s.id == old_id) s.id = 0;  // the original keeps the server's bytes
        spdlog::info("write-back: node {} written again after its conflict copy; the copy {} takes the bytes", old_id,
                     kept);
        after.push_back([this, old_id, kept](const auto& made) {
          uint64_t version = 0;
          if (auto it = made.find(kept); it != made.end() && !it->second->deleted) {
            (void)Record({*it->second}, {});
            version = it->second->version;
          }
          KeepOrForget(old_id, {kept, version});
          if (!(is_open_ && is_open_(kept))) cache_->Forget(kept);
          InvalidateNode(kept);
        });
        continue;
      }
    }
    if (op.type == OpType::kWrite && reply.reason == "stale_base") {
      // Someone else changed the file since our base: ours becomes a new
      // file beside it, both kept.
      auto n = tree_->Get(op.id);
      if (!n.ok() || !*n) return Status::Internal("write-back: node " + std::to_string(op.id) + " vanished");
      NodeRecord copy = **n;
      const uint64_t old_id = op.id;
      copy.id = NewNodeId();
      copy.name = ConflictName(copy.name);
      copy.version = 0;
      copy.size = op.size;  // what was sent (the tree may show a later local size)
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
      const uint64_t current = reply.current_version;
      // The records of both go in before the journal lets go of the edit:
      // a kill after that left the file's record with this device's size at
      // the old version, its bytes on their way to the copy (reads failed
      // with EIO on the next start: the size was neither version's). Their
      // size is asked now, so nothing but the records is done in between
      // (a kill there is a lost answer: the batch goes again).
      auto copy_made = std::make_shared<NodeRecord>(copy);
      std::optional<uint64_t> their_size;
      if (auto m = client_->GetManifest(old_id, current); m.ok()) their_size = m->size;
      before_finish.push_back([this, old_id, copy_made, current, their_size, &placed](const auto& made) {
        NodeRecord& copy = *copy_made;
        // A later refusal may have placed the copy elsewhere.
        if (auto p = placed.find(copy.id); p != placed.end()) {
          copy.parent = p->second.rec.parent;
          copy.name = p->second.rec.name;
        }
        if (auto it = made.find(copy.id); it != made.end()) {
          copy.version = it->second->version;
          copy.seq = it->second->seq;
        }
        std::vector<NodeRecord> rows{copy};
        if (their_size) {
          auto o = tree_->Get(old_id);
          // (Not over a newer record the remote sync brought meanwhile:
          // its version with this older size would be neither.)
          if (o.ok() && *o && (*o)->version <= current) {
            NodeRecord theirs = **o;
            theirs.size = *their_size;
            theirs.version = current;
            rows.push_back(theirs);
          }
        }
        (void)Record(rows, {});
      });
      after.push_back([this, old_id, copy_made](const auto&) {
        // (Once those records are saved: until then they count as changes
        // of the file still waiting, and it would keep our bytes.)
        (void)WaitWritten();
        KeepOrForget(old_id, {copy_made->id, copy_made->version});
        InvalidateEntry(copy_made->parent, copy_made->name);
        InvalidateNode(old_id);
      });
      continue;
    }
    // Ours gets another place (a conflict name, maybe the top directory):
    // the op says so, and once committed, the mirror too.
    auto move_ours = [&](uint64_t parent, const std::string& name) {
      op.parent = parent;
      op.name = name;
      auto it = placed.find(op.id);
      if (it == placed.end()) {
        Placed p;
        auto n = tree_->Get(op.id);
        if (n.ok() && *n) {
          p.rec = **n;
          p.in_tree = true;
          p.old_parent = p.rec.parent;
          p.old_name = p.rec.name;
        } else {
          p.rec.id = op.id;
        }
        it = placed.emplace(op.id, std::move(p)).first;
      }
      it->second.rec.parent = parent;
      it->second.rec.name = name;
    };
    // Ours is dropped: the other side's change stands.
    auto drop_ours = [&] {
      placed.erase(op.id);  // nothing of ours to place
      ops.erase(ops.begin() + static_cast<std::ptrdiff_t>(k));
      return ops.empty();
    };
    const bool gone = reply.reason == "deleted" || reply.reason == "no_such_node";
    if ((Creates(op.type) || op.type == OpType::kRename) && reply.reason == "name_taken") {
      // Created here and there under one name: ours gets a conflict name.
      move_ours(op.parent, ConflictName(op.name));
      continue;
    }
    if ((Creates(op.type) || op.type == OpType::kRename) && op.parent != 0 && reply.node == op.parent &&
        (gone || reply.reason == "not_a_directory")) {
      // Made in (or moved into) a directory deleted elsewhere: ours goes to
      // the top directory under a conflict name, nothing lost.
      spdlog::warn("write-back: the directory of \"{}\" was deleted elsewhere; keeping ours at the top as \"{}\"",
                   op.name, ConflictName(op.name));
      move_ours(kRootId, ConflictName(op.name));
      continue;
    }
    if (op.type == OpType::kRename && op.replace && reply.node != 0 && reply.node != op.parent &&
        (reply.reason == "not_empty" || reply.reason == "is_a_directory" || reply.reason == "not_a_directory")) {
      // Moved here over something the server can no longer replace (an
      // empty directory that got files elsewhere, a name that became a
      // directory or stopped being one): theirs stays, ours goes beside it
      // under a conflict name; a directory of theirs comes back here.
      const uint64_t target = reply.node;
      spdlog::warn("write-back: \"{}\" changed elsewhere and cannot be replaced; keeping ours as \"{}\"", op.name,
                   ConflictName(op.name));
      op.replace = false;
      move_ours(op.parent, ConflictName(op.name));
      if (reply.reason == "not_empty") RestoreDir(target);
      continue;
    }
    if (op.type == OpType::kSetattr && reply.reason == "stale_base") {
      forced(op, reply.current_version);
      op.base = reply.current_version;  // attributes: last writer wins
      based.erase(op.id);                // but the cached bytes may be stale now
      repaged.push_back(op.id);
      continue;
    }
    if (op.type == OpType::kRename && reply.reason == "stale_base") {
      forced(op, reply.current_version);
      op.has_base = false;  // the move still happens; a later write of ours will see the conflict
      based.erase(op.id);
      repaged.push_back(op.id);
      continue;
    }
    if (op.type == OpType::kRename && op.exchange != 0 && gone && (reply.node == op.id || reply.node == op.exchange)) {
      // A swap of places with one side deleted elsewhere: that delete
      // stands, and the other node still goes where the swap put it: the
      // op's place for `id`; for the other, the one it has here (the op
      // does not say where `id` was).
      const uint64_t survivor = reply.node == op.id ? op.exchange : op.id;
      spdlog::warn("write-back: node {} was deleted elsewhere; node {} still moves to its place here", reply.node,
                   survivor);
      based.erase(reply.node);
      op.exchange = 0;
      if (survivor == op.id) continue;
      auto n = tree_->Get(survivor);
      if (!n.ok()) return n.status();
      if (!*n) {
        if (drop_ours()) break;
        continue;
      }
      placed.erase(op.id);
      op.has_base = false;
      op.id = survivor;
      op.parent = (*n)->parent;
      op.name = (*n)->name;
      continue;
    }
    const bool of_node = reply.node == op.id || reply.node == 0;
    if ((op.type == OpType::kDelete && (reply.reason == "stale_base" || gone)) ||
        ((op.type == OpType::kRename || op.type == OpType::kSetattr) && gone && of_node)) {
      // Deleted here, edited (or already deleted) there: their edit stays,
      // and comes back here. Moved or changed here, deleted there: their
      // delete stands (an edit of ours is a write, which keeps a copy).
      based.erase(op.id);
      if (op.type == OpType::kDelete && !gone) restore.push_back(op.id);
      if (drop_ours()) break;
      continue;
    }
    if (op.type == OpType::kRename && reply.reason == "into_own_subtree") {
      // Moved here into a directory that, elsewhere, was moved into the one
      // moved here: both cannot stand, and theirs is in. Ours is dropped
      // (a move: no bytes are lost) and the node goes back where it is.
      based.erase(op.id);
      restore.push_back(op.id);
      if (op.exchange) restore.push_back(op.exchange);  // (a swap: both go back)
      if (drop_ours()) break;
      continue;
    }
    if (op.type == OpType::kDelete && reply.reason == "not_empty") {
      // A directory emptied and removed here, given new files there: it
      // stays, with their files; it comes back here.
      based.erase(op.id);
      RestoreDir(op.id);
      if (drop_ours()) break;
      continue;
    }
    return Status(CodeForHttpStatus(reply.http_status),
                  std::string("commit refused at ") + OpName(op.type) + " of node " + std::to_string(op.id) + ": " +
                      reply.message + " (" + reply.reason + ")");
  }
  if (ops.empty()) {
    // Every op was dropped: the entries are done.
    RETURN_IF_ERROR(Finish(entries, last, {}, true));
    for (uint64_t id : restore) RestoreNode(id);
    return Status::Ok();
  }
  return Status::Internal("write-back: commit refused too many times");
}

bool WriteBack::BytesDiffer(uint64_t id, uint64_t ours, uint64_t theirs) {
  auto a = client_->GetManifest(id, ours);
  auto b = a.ok() ? client_->GetManifest(id, theirs) : a;
  if (a.ok() && b.ok()) return a->size != b->size || a->blocks != b->blocks;
  const Status& st = a.ok() ? b.status() : a.status();
  spdlog::debug("write-back: manifests of node {} at versions {} and {}: {}", id, ours, theirs, st.message());
  return st.code() != Code::kInvalidArgument && st.code() != Code::kNotFound;
}

std::unordered_set<uint64_t> WriteBack::Named(const std::vector<LocalState::JournalEntry>& entries, uint64_t last) {
  std::unordered_set<uint64_t> ids;
  for (const auto& e : entries) {
    if (e.seq > last) break;
    ids.insert(e.op.id);
    if (e.op.exchange) ids.insert(e.op.exchange);
  }
  return ids;
}

void WriteBack::CommitReplayedBytes(const std::vector<NodeRecord>& made, const std::vector<Sent>& sent,
                                    const std::unordered_map<uint64_t, uint64_t>& based) {
  std::unordered_map<uint64_t, const NodeRecord*> by_id;
  for (const auto& r : made) by_id[r.id] = &r;
  std::vector<LocalState::CachedFile> records;
  for (const auto& s : sent) {
    if (s.id == 0) continue;
    auto it = by_id.find(s.id);
    if (it == by_id.end() || it->second->deleted) continue;  // (in a conflict copy: ApplyReplayed)
    // The bytes sent then are those held now only if the manifests agree;
    // otherwise the cache keeps its content local, on the server's version
    // (a later flush sends it).
    auto m = client_->GetManifest(s.id, it->second->version);
    if (m.ok() && *m == s.m) {
      if (s.staged) (void)state_->SaveFile(AllHere(s.id, it->second->version, s.m));
      cache_->Committed(s.id, it->second->version, s.m, s.view.write_gen, s.staged);
    } else if (m.ok()) {
      cache_->Committed(s.id, it->second->version, *m, ~uint64_t{0});
    } else {
      continue;
    }
    if (auto f = cache_->FileRecord(s.id)) records.push_back(std::move(*f));
  }
  if (!records.empty())
    if (Status f = state_->SaveFiles(records); !f.ok()) spdlog::warn("{} (saved again with the next change)", f.ToString());
  // Attributes or a move committed on a base: the cached bytes are those of
  // the new version if the server's manifest says so: the same as the
  // cache's, or as the base's on the server (the cache's view of it is
  // shorter after a cut here; left on the base, the file's next flush
  // would name it, be refused as stale, and become a conflict copy of
  // this device's own change).
  // (AdvanceVersion saves the record.)
  for (const auto& [id, base] : based) {
    auto it = by_id.find(id);
    if (it == by_id.end() || it->second->deleted || it->second->kind != NodeKind::kFile) continue;
    // (Not open here, after a restart say: its saved record.)
    auto held = cache_->FileRecord(id);
    if (!held)
      if (auto saved = state_->LoadFile(id); saved.ok() && *saved) held = std::move(**saved);
    if (!held || held->version != base) continue;
    auto m = client_->GetManifest(id, it->second->version);
    if (!m.ok()) continue;
    bool same = *m == held->manifest;
    if (!same)
      if (auto b = client_->GetManifest(id, base); b.ok()) same = *m == *b;
    if (same) cache_->AdvanceVersion(id, base, it->second->version);
  }
}

void WriteBack::ApplyReplayed(const std::vector<CommitOp>& ops, const std::vector<NodeRecord>& made,
                              const std::vector<Sent>& sent, const std::unordered_map<uint64_t, uint64_t>& based,
                              const std::unordered_set<uint64_t>& named) {
  // The server applied an earlier attempt of these journal entries, maybe
  // with refusals resolved (a conflict name, the top directory, a conflict
  // copy, a dropped op), and that answer was lost. Where the records differ
  // from this body, a resolution did it: the local view follows (a node
  // changed here since, or by a newer change from elsewhere, is left to
  // its journal entry or the remote sync). Only what is proven on the
  // server leaves the cache's local content.
  spdlog::warn("write-back: an earlier attempt of this commit was applied (its answer was lost); following its {} records",
               made.size());
  std::unordered_map<uint64_t, const CommitOp*> placing;  // our op naming a node's place
  std::unordered_set<uint64_t> wrote;                     // our writes (a deleted file's comes back, maybe elsewhere)
  for (const auto& o : ops) {
    if (Creates(o.type) || o.type == OpType::kRename) placing[o.id] = &o;
    if (o.type == OpType::kWrite) wrote.insert(o.id);
  }
  // Of those, the ones moved or deleted here since (a later journal entry
  // says where they go): left to that entry. (One made while this batch
  // was out may not be in the journal's table yet: see `moved` below.)
  if (!wrote.empty())
    if (auto later = state_->PendingJournal(kReplayScan); later.ok())
      for (const auto& e : *later)
        if (!e.flush && (e.op.type == OpType::kRename || e.op.type == OpType::kDelete)) {
          wrote.erase(e.op.id);
          if (e.op.exchange) wrote.erase(e.op.exchange);
        }
  std::unordered_map<uint64_t, const Sent*> sent_by_id;
  for (const auto& s : sent)
    if (s.id) sent_by_id[s.id] = &s;
  // The nodes a change of ours still waits for (asked before the records
  // below, which count as waiting too).
  std::unordered_set<uint64_t> waiting;
  for (const auto& r : made)
    if (HasPending(r.id)) waiting.insert(r.id);
  for (const auto& o : ops)
    for (uint64_t id : {o.id, o.exchange})
      if (id && HasPending(id)) waiting.insert(id);
  std::unordered_map<uint64_t, const NodeRecord*> by_id;
  std::vector<const NodeRecord*> copies;  // conflict copies the earlier attempt made
  for (const auto& r : made) {
    by_id[r.id] = &r;
    if (r.deleted) {
      versions_.erase(r.id);
      tree_->NoteDeleted(r.id, r.seq);
      continue;
    }
    versions_[r.id] = r.version;
    auto n = tree_->Get(r.id);
    if (!n.ok()) continue;
    if (*n && (*n)->version > r.version) continue;  // a newer change from elsewhere holds
    auto p = placing.find(r.id);
    // Made by a resolution only (a conflict copy): new here (not a node
    // the batch names: one deleted here since stays deleted). Placed by our
    // op elsewhere than it says (a conflict name, the top directory), and
    // not moved or deleted here since: it goes where the server put it.
    const bool copy = !*n && p == placing.end() && !named.count(r.id);
    if (copy) copies.push_back(&r);
    const bool moved = (*n && p != placing.end() && (p->second->parent != r.parent || p->second->name != r.name) &&
                        (*n)->parent == p->second->parent && (*n)->name == p->second->name) ||
                       // A write that brought the file back at the top (its
                       // directory deleted too), not moved here since (still
                       // where it was when sent).
                       (*n && p == placing.end() && wrote.count(r.id) &&
                        ((*n)->parent != r.parent || (*n)->name != r.name) && sent_by_id.count(r.id) &&
                        (*n)->parent == sent_by_id[r.id]->parent && (*n)->name == sent_by_id[r.id]->name);
    if (!copy && !moved) {
      if (*n) tree_->SetVersion(r.id, r.version, r.seq);
      continue;
    }
    NodeRecord rec = r;
    if (*n && (*n)->kind == NodeKind::kFile) rec.size = (*n)->size;  // local bytes may be newer
    std::vector<NodeRecord> rows;
    if (copy) {
      // A conflict copy that kept the original's name: theirs was deleted.
      if (auto there = tree_->Lookup(r.parent, r.name); there.ok() && *there && (*there)->id != r.id) {
        NodeRecord gone;
        gone.id = (*there)->id;
        gone.deleted = true;
        rows.push_back(gone);
        if (!(is_open_ && is_open_(gone.id))) cache_->Forget(gone.id);
      }
    }
    rows.push_back(rec);
    (void)Record(rows, {});
    if (*n) InvalidateEntry((*n)->parent, (*n)->name);
    InvalidateEntry(r.parent, r.name);
  }
  // As after a first answer: a file our op moved to a version made
  // elsewhere shows its size (and mode) there. (At once: until then a read
  // asks that version for our size, and fails.) The kernel's pages of it
  // may be of the version we knew: they go (their bytes of the same size
  // would not be read otherwise).
  ShowServersAttributes(made, waiting);
  for (const auto& [id, base] : based)
    if (auto it = by_id.find(id); it != by_id.end() && !it->second->deleted && it->second->version != base &&
                                  it->second->kind == NodeKind::kFile)
      InvalidateNode(id);
  std::vector<const Sent*> copied;  // files whose content went into a conflict copy
  for (const auto& s : sent) {
    if (s.id == 0) continue;
    if (auto it = by_id.find(s.id); it == by_id.end() || it->second->deleted) copied.push_back(&s);
    else (void)Record({}, {}, {s.id});  // (its bytes taken by CommitReplayedBytes)
  }
  for (const Sent* s : copied) {
    // The original shows theirs (the tree's record has our size still: a
    // read would ask their version for it, and fail, until the remote
    // sync's record came), and the kernel drops ours. Unless written since
    // (open, or a later flush in the journal): those bytes are only in its
    // cache, and that flush goes to the copy that holds what was sent
    // (found by its manifest; written between the attempts, a cut and then
    // its bytes: the batch's one copy of its one such file; none found: a
    // copy of its own).
    std::optional<KeptIn> in;
    for (const NodeRecord* c : copies)
      if (auto m = client_->GetManifest(c->id, c->version); m.ok() && *m == s->m) {
        in = KeptIn{c->id, c->version};
        break;
      }
    if (!in && copies.size() == 1 && copied.size() == 1) in = KeptIn{copies[0]->id, copies[0]->version};
    if (in) KeepOrForget(s->id, *in);  // (ShowTheirs when not written since)
    else if (!WrittenHereStill(s->id)) ShowTheirs(s->id);
    else InvalidateNode(s->id);
  }
  // A delete the server did not apply: a directory it kept (it had files
  // from elsewhere), a file edited elsewhere (theirs stays): back here.
  for (const auto& o : ops) {
    if (o.type != OpType::kDelete || by_id.count(o.id)) continue;
    bool dir;
    {
      std::lock_guard lock(ids_mu_);
      dir = deleted_parent_.count(o.id) > 0;
    }
    if (dir) RestoreDir(o.id);
    else RestoreNode(o.id);
  }
  // A move or attributes the server did not apply (the node deleted there,
  // or a directory moved there into the one moved here; a swap: both):
  // back where the server has it, as after a first answer, unless a later
  // change of ours names it.
  for (const auto& o : ops) {
    if (o.type != OpType::kRename && o.type != OpType::kSetattr) continue;
    for (uint64_t id : {o.id, o.exchange})
      if (id && !by_id.count(id) && !waiting.count(id)) RestoreNode(id);
  }
  for (const auto& o : ops)
    if (o.type == OpType::kCreate && by_id.count(o.id) && !HasPending(o.id)) cache_->CreatedCommitted(o.id);
}

}  // namespace tidefs
