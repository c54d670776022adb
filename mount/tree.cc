#include "mount/tree.h"

#include <mutex>

namespace tidefs {

void Tree::Load(const Snapshot& snap) {
  std::unique_lock lock(mu_);
  nodes_.clear();
  dirs_.clear();
  nodes_.reserve(snap.nodes.size());
  for (const auto& n : snap.nodes) InsertLocked(n);
  seq_ = snap.seq;
}

void Tree::Apply(const NodeRecord& n) {
  std::unique_lock lock(mu_);
  RemoveLocked(n.id);
  if (!n.deleted) InsertLocked(n);
}

void Tree::InsertLocked(const NodeRecord& n) {
  nodes_[n.id] = n;
  if (n.id != kRootId) dirs_[n.parent][n.name] = n.id;
}

void Tree::RemoveLocked(uint64_t id) {
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return;
  auto d = dirs_.find(it->second.parent);
  if (d != dirs_.end()) {
    auto c = d->second.find(it->second.name);
    if (c != d->second.end() && c->second == id) d->second.erase(c);
  }
  nodes_.erase(it);
}

std::optional<NodeRecord> Tree::Get(uint64_t id) const {
  std::shared_lock lock(mu_);
  auto it = nodes_.find(id);
  if (it == nodes_.end()) return std::nullopt;
  return it->second;
}

std::optional<NodeRecord> Tree::Lookup(uint64_t parent, const std::string& name) const {
  std::shared_lock lock(mu_);
  auto d = dirs_.find(parent);
  if (d == dirs_.end()) return std::nullopt;
  auto c = d->second.find(name);
  if (c == d->second.end()) return std::nullopt;
  auto it = nodes_.find(c->second);
  if (it == nodes_.end()) return std::nullopt;
  return it->second;
}

std::vector<NodeRecord> Tree::Children(uint64_t parent) const {
  std::shared_lock lock(mu_);
  std::vector<NodeRecord> out;
  auto d = dirs_.find(parent);
  if (d == dirs_.end()) return out;
  out.reserve(d->second.size());
  for (const auto& [name, id] : d->second) {
    auto it = nodes_.find(id);
    if (it != nodes_.end()) out.push_back(it->second);
  }
  return out;
}

uint64_t Tree::seq() const {
  std::shared_lock lock(mu_);
  return seq_;
}

void Tree::set_seq(uint64_t s) {
  std::unique_lock lock(mu_);
  seq_ = s;
}

size_t Tree::size() const {
  std::shared_lock lock(mu_);
  return nodes_.size();
}

}  // namespace tidefs
