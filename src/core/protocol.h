// Shapes of v1 answers shared by the server and the client.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/hash.h"
#include "core/node.h"

namespace tidefs {

inline constexpr int kMaxPageSize = 500;

// The protocol level a server speaks, sent in every HTTP answer's
// X-Tidefs-Protocol header (docs/protocol.md). A level-1 server sends none.
//   1: the v1 API as first released.
//   2: a rename may swap two nodes ("exchange").
//   3: a content answer carries the file's manifest when asked.
//   4: a commit with no ops and an Idempotency-Key asks for the answer of
//      the commit sent under that key.
inline constexpr int kProtocolLevel = 4;
inline constexpr const char* kProtocolLevelText = "4";
inline constexpr const char* kProtocolHeader = "X-Tidefs-Protocol";
static_assert(kProtocolLevelText[0] - '0' == kProtocolLevel && kProtocolLevelText[1] == '\0');
// The level a mount needs for a swap (RENAME_EXCHANGE).
inline constexpr int kProtocolExchange = 2;
// The level that answers an empty commit (a lost answer's question).
inline constexpr int kProtocolAskAnswer = 4;

// A content request with kWantManifestHeader (any value) is answered with
// the file version's manifest in kManifestHeader (EncodeManifestText) when
// it has at most kMaxInlineManifestBlocks blocks: a small file's first
// read is one round trip. Servers before level 3 ignore the ask.
inline constexpr const char* kWantManifestHeader = "X-Tidefs-Want-Manifest";
inline constexpr const char* kManifestHeader = "X-Tidefs-Manifest";
inline constexpr size_t kMaxInlineManifestBlocks = 64;  // 4 MiB of file, 2 KiB of header

struct NodePage {
  std::vector<NodeRecord> items;
  std::optional<std::string> next;  // name to pass as `after`
};

struct ChangesPage {
  std::vector<NodeRecord> items;
  uint64_t head = 0;
  bool more = false;
};

// A /commit answer: applied (items, head) or refused (the rest).
struct CommitReply {
  bool refused = false;
  int http_status = 200;
  std::string error;   // e.g. "conflict"
  std::string reason;  // e.g. "stale_base", "name_taken", "id_taken", "missing_blocks"
  std::string message;
  size_t op = 0;
  uint64_t node = 0;
  uint64_t current_version = 0;
  std::vector<Hash128> missing;
  std::vector<NodeRecord> items;
  uint64_t head = 0;
  // The answer of the commit first sent with this idempotency key, whose
  // answer was lost: `items` are what that commit made.
  bool replayed = false;
};

}  // namespace tidefs
