#include "server/metrics.h"

#include <fmt/format.h>

namespace tidefs {

void Metrics::RecordRequest(const std::string& route, int status, double seconds, uint64_t bytes_in,
                            uint64_t bytes_out) {
  bytes_in_ += bytes_in;
  bytes_out_ += bytes_out;
  std::lock_guard lock(mu_);
  requests_[{route, status}]++;
  Histogram& h = latency_[route];
  for (size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) h.buckets[i]++;
  h.count++;
  h.sum += seconds;
}

std::string Metrics::Render() const {
  std::string out;
  out += "# HELP tidefs_http_requests_total HTTP requests by route and status.\n";
  out += "# TYPE tidefs_http_requests_total counter\n";
  std::lock_guard lock(mu_);
  for (const auto& [key, n] : requests_)
    out += fmt::format("tidefs_http_requests_total{{route=\"{}\",status=\"{}\"}} {}\n", key.first, key.second, n);
  out += "# HELP tidefs_http_request_duration_seconds Request latency by route.\n";
  out += "# TYPE tidefs_http_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_) {
    for (size_t i = 0; i < kBuckets.size(); ++i)
      out += fmt::format("tidefs_http_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n", route,
                         kBuckets[i], h.buckets[i]);
    out += fmt::format("tidefs_http_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}\n", route, h.count);
    out += fmt::format("tidefs_http_request_duration_seconds_sum{{route=\"{}\"}} {}\n", route, h.sum);
    out += fmt::format("tidefs_http_request_duration_seconds_count{{route=\"{}\"}} {}\n", route, h.count);
  }
  out += "# TYPE tidefs_http_bytes_received_total counter\n";
  out += fmt::format("tidefs_http_bytes_received_total {}\n", bytes_in_.load());
  out += "# TYPE tidefs_http_bytes_sent_total counter\n";
  out += fmt::format("tidefs_http_bytes_sent_total {}\n", bytes_out_.load());
  out += "# TYPE tidefs_content_bytes_sent_total counter\n";
  out += fmt::format("tidefs_content_bytes_sent_total {}\n", content_bytes_out_.load());
  out += "# TYPE tidefs_blocks_stored_total counter\n";
  out += fmt::format("tidefs_blocks_stored_total {}\n", blocks_stored_.load());
  out += "# TYPE tidefs_block_bytes_stored_total counter\n";
  out += fmt::format("tidefs_block_bytes_stored_total {}\n", block_bytes_stored_.load());
  out += "# TYPE tidefs_blocks_collected_total counter\n";
  out += fmt::format("tidefs_blocks_collected_total {}\n", blocks_collected_.load());
  out += "# TYPE tidefs_block_bytes_collected_total counter\n";
  out += fmt::format("tidefs_block_bytes_collected_total {}\n", block_bytes_collected_.load());
  return out;
}

}  // namespace tidefs
