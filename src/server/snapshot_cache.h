// Encoded snapshots per project, rebuilt when the project's seq moved.
// One build at a time per project; other callers wait for it. Thread-safe.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "server/metadata_store.h"

namespace tidefs {

struct EncodedSnapshot {
  uint64_t seq = 0;
  uint64_t nodes = 0;
  std::string bytes;
};

class SnapshotCache {
 public:
  explicit SnapshotCache(MetadataStore* store) : store_(store) {}
  // The snapshot at the project's current head (built if stale).
  Result<std::shared_ptr<const EncodedSnapshot>> Get(int64_t project, uint64_t head);

 private:
  struct Entry {
    std::mutex build_mu;  // held while building
    std::shared_ptr<const EncodedSnapshot> current;  // guarded by SnapshotCache::mu_
  };
  MetadataStore* store_;
  std::mutex mu_;
  std::unordered_map<int64_t, std::unique_ptr<Entry>> entries_;  // guarded by mu_
};

}  // namespace tidefs
