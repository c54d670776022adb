// Request counters, latency histograms and byte counts, rendered as
// Prometheus text with names prefixed tidefs_. Thread-safe.
#pragma once

#include <array>
#include <atomic>
#include <map>
#include <mutex>
#include <string>

namespace tidefs {

class Metrics {
 public:
  void RecordRequest(const std::string& route, int status, double seconds, uint64_t bytes_in, uint64_t bytes_out);
  void AddBlocksStored(uint64_t blocks, uint64_t bytes) {
    blocks_stored_ += blocks;
    block_bytes_stored_ += bytes;
  }
  void AddContentBytes(uint64_t bytes) { content_bytes_out_ += bytes; }
  void AddBlocksCollected(uint64_t blocks, uint64_t bytes) {
    blocks_collected_ += blocks;
    block_bytes_collected_ += bytes;
  }
  std::string Render() const;

  static constexpr std::array<double, 12> kBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                      0.05,   0.1,   0.25,   0.5,   1,    5};

 private:
  struct Histogram {
    std::array<uint64_t, kBuckets.size()> buckets{};
    uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, uint64_t> requests_;  // guarded by mu_
  std::map<std::string, Histogram> latency_;                  // guarded by mu_
  std::atomic<uint64_t> bytes_in_{0}, bytes_out_{0}, blocks_stored_{0}, block_bytes_stored_{0},
      content_bytes_out_{0}, blocks_collected_{0}, block_bytes_collected_{0};
};

}  // namespace tidefs
