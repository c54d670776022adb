#include "server/snapshot_cache.h"

#include <chrono>

#include <spdlog/spdlog.h>

#include "core/snapshot_codec.h"

namespace tidefs {

namespace {
// How long a project must be quiet before its snapshot is rebuilt.
constexpr auto kQuiet = std::chrono::milliseconds(1000);
}  // namespace

SnapshotCache::SnapshotCache(MetadataStore* store) : store_(store), prewarm_([this] { PrewarmLoop(); }) {}

SnapshotCache::~SnapshotCache() {
  {
    std::lock_guard lock(prewarm_mu_);
    stopping_ = true;
  }
  prewarm_cv_.notify_all();
  prewarm_.join();
}

void SnapshotCache::Prewarm(int64_t project, uint64_t head) {
  {
    std::lock_guard lock(prewarm_mu_);
    Due& d = due_[project];
    d.head = std::max(d.head, head);
    d.at = std::chrono::steady_clock::now() + kQuiet;
  }
  prewarm_cv_.notify_all();
}

void SnapshotCache::PrewarmLoop() {
  std::unique_lock lock(prewarm_mu_);
  while (!stopping_) {
    if (due_.empty()) {
      prewarm_cv_.wait(lock);
      continue;
    }
    auto next = due_.begin();
    for (auto it = due_.begin(); it != due_.end(); ++it)
      if (it->second.at < next->second.at) next = it;
    if (std::chrono::steady_clock::now() < next->second.at) {
      prewarm_cv_.wait_until(lock, next->second.at);
      continue;
    }
    int64_t project = next->first;
    uint64_t head = next->second.head;
    due_.erase(next);
    lock.unlock();
    auto built = Get(project, head);
    if (!built.ok()) spdlog::warn("prebuilding the snapshot of project {} failed: {}", project, built.status().ToString());
    lock.lock();
  }
}

Result<std::shared_ptr<const EncodedSnapshot>> SnapshotCache::Get(int64_t project, uint64_t head) {
  Entry* e;
  {
    std::lock_guard lock(mu_);
    auto& slot = entries_[project];
    if (!slot) slot = std::make_unique<Entry>();
    e = slot.get();
    if (e->current && e->current->seq >= head) return e->current;
  }
  std::lock_guard build(e->build_mu);
  {
    std::lock_guard lock(mu_);
    if (e->current && e->current->seq >= head) return e->current;
  }
  auto t0 = std::chrono::steady_clock::now();
  SnapshotEncoder encoder;
  uint64_t last = 0;
  {
    std::lock_guard lock(mu_);
    if (e->current) last = e->current->nodes;
  }
  encoder.Reserve(last);
  ASSIGN_OR_RETURN(uint64_t seq, store_->ForEachLiveNode(project, [&](const NodeRecord& n) { encoder.Add(n); }));
  auto out = std::make_shared<EncodedSnapshot>();
  out->seq = seq;
  out->nodes = encoder.count();
  ASSIGN_OR_RETURN(out->bytes, encoder.Finish(seq));  // (a failure is not kept: the next request tries again)
  spdlog::info("built snapshot of project {} at seq {}: {} nodes, {} bytes in {} ms", project, seq,
               encoder.count(), out->bytes.size(),
               std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  std::lock_guard lock(mu_);
  e->current = out;
  return std::shared_ptr<const EncodedSnapshot>(out);
}

}  // namespace tidefs
