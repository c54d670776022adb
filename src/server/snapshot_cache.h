// Encoded snapshots per project, rebuilt when the project's seq moved.
// One build at a time per project; other callers wait for it. Thread-safe.
#pragma once

#include <memory>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>
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
  explicit SnapshotCache(MetadataStore* store);
  ~SnapshotCache();
  // The snapshot at the project's current head (built if stale).
  Result<std::shared_ptr<const EncodedSnapshot>> Get(int64_t project, uint64_t head);
  // A commit moved the project to `head`: the snapshot is rebuilt in the
  // background once the project has been quiet for a moment, so the next
  // cold mount does not wait for it. A burst of commits costs one build.
  void Prewarm(int64_t project, uint64_t head);

 private:
  void PrewarmLoop();
  struct Entry {
    std::mutex build_mu;  // held while building
    std::shared_ptr<const EncodedSnapshot> current;  // guarded by SnapshotCache::mu_
  };
  MetadataStore* store_;
  std::mutex mu_;
  std::unordered_map<int64_t, std::unique_ptr<Entry>> entries_;  // guarded by mu_

  struct Due {
    uint64_t head = 0;
    std::chrono::steady_clock::time_point at;
  };
  std::mutex prewarm_mu_;
  std::condition_variable prewarm_cv_;
  std::map<int64_t, Due> due_;  // guarded by prewarm_mu_
  bool stopping_ = false;       // guarded by prewarm_mu_
  std::thread prewarm_;
};

}  // namespace tidefs
