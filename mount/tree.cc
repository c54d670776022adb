#include "mount/tree.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <unordered_set>

namespace tidefs {

void Tree::Load(std::shared_ptr<const Snapshot> snap) {
  auto by_parent = [](const NodeRecord& a, const NodeRecord& b) { return a.parent < b.parent; };
  if (!std::is_sorted(snap->nodes.begin(), snap->nodes.end(), by_parent)) {
    auto sorted = std::make_shared<Snapshot>(*snap);
    std::stable_sort(sorted->nodes.begin(), sorted->nodes.end(), by_parent);
    snap = std::move(sorted);
  }
  std::unique_lock lock(mu_);
  nodes_.clear();
  dirs_.clear();
  overridden_.clear();
  seq_ = snap->seq;
  for (const auto& n : snap->nodes)
    if (n.id == kRootId) nodes_[n.id] = n;
  snap_ = std::move(snap);
  ++generation_;
}

void Tree::LoadFromSnapshotLocked(uint64_t parent) {
  Dir& d = dirs_[parent];
  if (d.loaded) return;
  const auto& all = snap_->nodes;
  auto lo = std::lower_bound(all.begin(), all.end(), parent, [](const NodeRecord& n, uint64_t p) { return n.parent < p; });
  for (auto it = lo; it != all.end() && it->parent == parent; ++it)
    if (it->id != kRootId && !overridden_.count(it->id) && !nodes_.count(it->id)) InsertLocked(*it);
  dirs_[parent].loaded = true;
}

void Tree::StartLazy(uint64_t seq) {
  std::unique_lock lock(mu_);
  nodes_.clear();
  dirs_.clear();
  overridden_.clear();
  snap_.reset();
  seq_ = seq;
  ++generation_;
}

void Tree::Apply(const NodeRecord& n) {
  std::unique_lock lock(mu_);
  ApplyLocked(n, std::nullopt);
}

void Tree::ApplyUnsaved(const NodeRecord& n, uint64_t ticket) {
  std::unique_lock lock(mu_);
  // Versions only move forward (SetVersion): a local change's record read
  // before a commit of ours moved the node on must not carry the older
  // version back, or the next op on the node names it as its base and
  // comes back a conflict with this device's own commit.
  NodeRecord r = n;
  auto keep_newer = [&](const NodeRecord& held) {
    if (held.version <= r.version) return;
    r.version = held.version;
    r.seq = std::max(r.seq, held.seq);
  };
  if (!n.deleted) {
    if (auto it = nodes_.find(n.id); it != nodes_.end()) keep_newer(it->second);
    if (auto u = unsaved_.find(n.id); u != unsaved_.end()) keep_newer(u->second.second);
  }
  ApplyLocked(r, ticket);
}

void Tree::ApplyLocked(const NodeRecord& n, std::optional<uint64_t> unsaved) {
  spdlog::trace("tree: node {} version {} {} \"{}\" in {}{}", n.id, n.version, n.deleted ? "deleted, was" : "at", n.name,
                n.parent, unsaved ? " (local)" : "");
  ++generation_;
  if (!loading_.empty()) recent_.emplace_back(generation_, n);
  unsaved_.erase(n.id);  // (superseded)
  if (snap_) {
    // The snapshot's record of this node no longer counts; its new
    // directory is filled first so the node lands where it will be found.
    overridden_.insert(n.id);
    if (!n.deleted && n.id != kRootId) LoadFromSnapshotLocked(n.parent);
  }
  const bool held = nodes_.count(n.id) > 0;
  RemoveLocked(n.id);
  bool placed = false;
  if (n.id == kRootId && !n.deleted) {
    InsertLocked(n);
    placed = true;
  } else if (!n.deleted) {
    // Lazy: keep it only where it will be found (its directory is loaded);
    // otherwise the local state has it for when the directory is read.
    auto d = dirs_.find(n.parent);
    if (d != dirs_.end() && d->second.loaded) {
      InsertLocked(n);
      placed = true;
    }
  }
  // A local change the state does not hold yet, which a directory read
  // from it would miss: kept until saved.
  // (One placed is found where it is, and one deleted from memory was in
  // a loaded directory, which is not read again.)
  if (unsaved && state_ && !snap_ && !placed && !(n.deleted && held)) unsaved_[n.id] = {*unsaved, n};
}

void Tree::Saved(uint64_t ticket) {
  std::unique_lock lock(mu_);
  saved_ticket_ = std::max(saved_ticket_, ticket);
  DropSavedLocked();
}

void Tree::DropSavedLocked() {
  if (!loading_.empty() || unsaved_.empty()) return;
  std::erase_if(unsaved_, [&](const auto& kv) { return kv.second.first <= saved_ticket_; });
}

void Tree::SetVersion(uint64_t id, uint64_t version, uint64_t seq) {
  std::unique_lock lock(mu_);
  if (auto u = unsaved_.find(id); u != unsaved_.end() && u->second.second.version <= version) {
    u->second.second.version = version;  // (what a directory read replays)
    u->second.second.seq = seq;
  }
  auto it = nodes_.find(id);
  // Forward only: a remote change applied meanwhile may already be newer.
  if (it == nodes_.end() || it->second.version > version) return;
  it->second.version = version;
  it->second.seq = seq;
}

void Tree::InsertLocked(const NodeRecord& n) {
  nodes_[n.id] = n;
  if (n.id == kRootId) return;
  Dir& d = dirs_[n.parent];
  uint64_t& slot = d.children[n.name];
  if (slot != 0 && slot != n.id) {
    spdlog::trace("tree: \"{}\" in {} was node {}, now node {}", n.name, n.parent, slot, n.id);
    d.shadowed.emplace(n.name, slot);
  }
  slot = n.id;
}

void Tree::RemoveLocked(uint64_t id) {
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  auto d = dirs_.find(it->second.parent);
  if (d != dirs_.end()) {
    const std::string& name = it->second.name;
    auto c = d->second.children.find(name);
    if (c != d->second.children.end() && c->second == id) {
      d->second.children.erase(c);
      // A node the leaving one had taken the name from, still there, has it back.
      auto [b, e] = d->second.shadowed.equal_range(name);
      for (auto s = b; s != e;) {
        auto other = nodes_.find(s->second);
        const bool there = s->second != id && other != nodes_.end() && other->second.parent == it->second.parent &&
                           other->second.name == name;
        s = d->second.shadowed.erase(s);
        if (there) {
          spdlog::trace("tree: \"{}\" in {} is node {} again", name, it->second.parent, other->first);
          d->second.children[name] = other->first;
          break;
        }
      }
    }
  }
  nodes_.erase(it);
}

Status Tree::EnsureDir(uint64_t parent) {
  uint64_t gen;
  {
    std::shared_lock lock(mu_);
    auto d = dirs_.find(parent);
    if (d != dirs_.end() && d->second.loaded) return Status::Ok();
  }
  if (snap_) {
    std::unique_lock lock(mu_);
    LoadFromSnapshotLocked(parent);
    return Status::Ok();
  }
  if (!state_) return Status::Internal("tree: directory " + std::to_string(parent) + " is not loaded");
  {
    std::unique_lock lock(mu_);
    gen = generation_;
    loading_.insert(gen);  // Apply keeps what lands from here on
  }
  // The query runs unlocked. Changes applied meanwhile (to the local state
  // before or after it read, and to this tree, which could not place them
  // in a directory not loaded) are replayed over what it read.
  auto kids = state_->Children(parent);
  std::unique_lock lock(mu_);
  loading_.erase(loading_.find(gen));
  struct Trim {
    Tree* t;
    ~Trim() {
      const uint64_t keep = t->loading_.empty() ? UINT64_MAX : *t->loading_.begin();
      while (!t->recent_.empty() && t->recent_.front().first <= keep) t->recent_.pop_front();
      t->DropSavedLocked();
    }
  } trim{this};
  if (!kids.ok()) return kids.status();
  if (dirs_[parent].loaded) return Status::Ok();
  std::unordered_set<uint64_t> read;  // placed by this read (maybe older than what was applied since)
  for (const auto& n : *kids)
    if (!nodes_.count(n.id)) {
      InsertLocked(n);
      read.insert(n.id);
    }
  dirs_[parent].loaded = true;
  std::unordered_map<uint64_t, const NodeRecord*> last;  // each node's last record applied meanwhile
  for (const auto& [g, r] : recent_)
    if (g > gen) last[r.id] = &r;
  for (const auto& [id, r] : last) {
    const bool here = read.count(id) > 0;
    if (!here && nodes_.count(id)) continue;  // in a directory loaded then, as Apply left it
    if (here) RemoveLocked(id);
    if (!r->deleted && r->parent == parent) InsertLocked(*r);
  }
  // Local changes the state did not hold yet (each the node's last record).
  for (const auto& [id, u] : unsaved_) {
    const NodeRecord& r = u.second;
    const bool here = read.count(id) > 0;
    if (!here && (r.parent != parent || r.deleted || nodes_.count(id))) continue;
    if (here) RemoveLocked(id);
    if (!r.deleted && r.parent == parent) InsertLocked(r);
  }
  return Status::Ok();
}

Result<std::optional<NodeRecord>> Tree::Get(uint64_t id) {
  {
    std::shared_lock lock(mu_);
    auto it = nodes_.find(id);
    if (it != nodes_.end()) return std::optional<NodeRecord>(it->second);
    // Cold: the kernel only knows nodes of directories already filled.
    if (snap_ || !state_) return std::optional<NodeRecord>();
  }
  // Not in memory: its directory was never read in this mount (a local
  // change not saved yet says where it is now).
  std::optional<NodeRecord> n;
  {
    std::shared_lock lock(mu_);
    auto u = unsaved_.find(id);
    if (u != unsaved_.end()) {
      if (u->second.second.deleted) return std::optional<NodeRecord>();
      n = u->second.second;
    }
  }
  if (!n) {
    ASSIGN_OR_RETURN(n, state_->GetNode(id));
  }
  if (n && n->id != kRootId) {
    RETURN_IF_ERROR(EnsureDir(n->parent));
    std::shared_lock lock(mu_);
    auto it = nodes_.find(id);
    return it == nodes_.end() ? std::optional<NodeRecord>() : std::optional<NodeRecord>(it->second);
  }
  if (n) {
    std::unique_lock lock(mu_);
    if (!nodes_.count(n->id)) nodes_[n->id] = *n;
  }
  return n;
}

Result<std::optional<NodeRecord>> Tree::Lookup(uint64_t parent, const std::string& name) {
  RETURN_IF_ERROR(EnsureDir(parent));
  std::shared_lock lock(mu_);
  auto d = dirs_.find(parent);
  if (d == dirs_.end()) return std::optional<NodeRecord>();
  auto c = d->second.children.find(name);
  if (c == d->second.children.end()) return std::optional<NodeRecord>();
  auto it = nodes_.find(c->second);
  if (it == nodes_.end()) return std::optional<NodeRecord>();
  return std::optional<NodeRecord>(it->second);
}

Result<std::vector<NodeRecord>> Tree::Children(uint64_t parent) {
  return ChildrenAfter(parent, "", SIZE_MAX);  // (no name is empty)
}

Result<std::vector<NodeRecord>> Tree::ChildrenAfter(uint64_t parent, const std::string& name, size_t k) {
  RETURN_IF_ERROR(EnsureDir(parent));
  std::shared_lock lock(mu_);
  std::vector<NodeRecord> out;
  auto d = dirs_.find(parent);
  if (d == dirs_.end()) return out;
  out.reserve(std::min(k, d->second.children.size()));
  for (auto c = d->second.children.upper_bound(name); c != d->second.children.end() && out.size() < k; ++c)
    if (auto it = nodes_.find(c->second); it != nodes_.end()) out.push_back(it->second);
  return out;
}

uint64_t Tree::seq() const {
  std::shared_lock lock(mu_);
  return seq_;
}

void Tree::set_seq(uint64_t s) {
  std::unique_lock lock(mu_);
  seq_ = s;
  std::erase_if(deleted_, [s](const auto& kv) { return kv.second <= s; });
}

void Tree::NoteDeleted(uint64_t id, uint64_t seq) {
  std::unique_lock lock(mu_);
  if (seq > seq_) deleted_[id] = std::max(deleted_[id], seq);
}

bool Tree::DeletedAfter(uint64_t id, uint64_t seq) const {
  std::shared_lock lock(mu_);
  auto it = deleted_.find(id);
  return it != deleted_.end() && it->second > seq;
}

size_t Tree::size() const {
  std::shared_lock lock(mu_);
  return nodes_.size();
}

std::string Tree::PathOf(uint64_t id) {
  std::string path;
  for (int depth = 0; id != kRootId && depth < 256; ++depth) {
    auto n = Get(id);
    if (!n.ok() || !*n) break;
    path = "/" + (*n)->name + path;
    id = (*n)->parent;
  }
  return path.empty() ? "/" : path;
}

}  // namespace tidefs
