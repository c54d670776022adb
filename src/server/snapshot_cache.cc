#include "server/snapshot_cache.h"

#include <chrono>

#include <spdlog/spdlog.h>

#include "core/snapshot_codec.h"

namespace tidefs {

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
  ASSIGN_OR_RETURN(Snapshot snap, store_->ReadSnapshot(project));
  auto out = std::make_shared<EncodedSnapshot>();
  out->seq = snap.seq;
  out->nodes = snap.nodes.size();
  out->bytes = EncodeSnapshot(snap.seq, snap.nodes);
  spdlog::info("built snapshot of project {} at seq {}: {} nodes, {} bytes in {} ms", project, snap.seq,
               snap.nodes.size(), out->bytes.size(),
               std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0).count());
  std::lock_guard lock(mu_);
  e->current = out;
  return std::shared_ptr<const EncodedSnapshot>(out);
}

}  // namespace tidefs
