// The messages of GET /events (docs/protocol.md, "Events"). Server to
// client: hello, commit, progress, resync. Client to server: a progress
// report. Both directions are checked strictly: unknown types or fields,
// wrong types and oversized lists are refused (the connection is closed).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/node.h"
#include "core/status.h"

namespace tidefs {

inline constexpr size_t kMaxTransfersPerReport = 64;
inline constexpr size_t kMaxClientMessage = 64 * 1024;

struct Transfer {
  std::string path;
  bool upload = false;  // "up" or "down"
  uint64_t done = 0;
  uint64_t total = 0;
  double rate = 0;  // bytes per second
  bool operator==(const Transfer&) const = default;
};

struct Event {
  enum class Type { kHello, kCommit, kProgress, kResync };
  Type type = Type::kHello;
  uint64_t head = 0;  // hello
  uint64_t seq = 0;   // commit: the new head
  uint64_t prev = 0;  // commit: the head before it
  std::string device;  // hello: the subscriber; commit, progress: who
  bool has_records = false;          // commit: small ones carry their records
  std::vector<NodeRecord> records;   // commit
  std::vector<Transfer> transfers;   // progress
  std::map<std::string, std::vector<Transfer>> progress;  // hello: every device's
};

Result<Event> DecodeEvent(std::string_view msg);

// {"type":"progress","transfers":[...]}, client to server.
std::string EncodeProgressReport(const std::vector<Transfer>& transfers);
Result<std::vector<Transfer>> DecodeProgressReport(std::string_view msg);
// The JSON array of a transfer list.
std::string TransfersJson(const std::vector<Transfer>& transfers);

}  // namespace tidefs
