// `tidefs import`: uploads a local tree into a project through the API, as
// a user seeding a project would. Blocks are deduplicated (only those the
// server lacks are sent), commits are batched, existing files whose bytes
// differ get a new version, identical ones are left alone.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

#include "client/api_client.h"
#include "core/status.h"

namespace tidefs {

struct ImportOptions {
  std::string src_dir;
  std::string dest = "/";  // path inside the project; created if missing
  int parallel = 4;        // uploads in flight
  size_t batch_ops = 5000;
  bool progress = false;   // a status line on stderr
};

struct ImportStats {
  uint64_t files = 0, dirs = 0, symlinks = 0, unchanged = 0;
  uint64_t bytes = 0;           // file bytes read
  uint64_t blocks_sent = 0;     // blocks the server lacked
  uint64_t bytes_sent = 0;
  uint64_t commits = 0;
};

Status Import(ApiClient* client, const ImportOptions& opts, ImportStats* stats);

// 63 random bits, never 0 or 1 (the root).
uint64_t NewNodeId();

}  // namespace tidefs
