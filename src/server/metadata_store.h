// MetadataStore: projects, nodes, manifests, block index, devices and
// tokens. SQLite is the default; the interface is what a PostgreSQL store
// would implement. Implementations are thread-safe.
#pragma once

#include <array>
#include <functional>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/commit_codec.h"
#include "core/hash.h"
#include "core/manifest_codec.h"
#include "core/node.h"
#include "core/protocol.h"
#include "core/snapshot_codec.h"
#include "core/status.h"

namespace tidefs {

struct ProjectInfo {
  int64_t id = 0;
  std::string name;
  uint64_t seq = 0;
};

using TokenHash = std::array<uint8_t, 32>;  // SHA-256 of the token

struct TokenInfo {
  int64_t project_id = 0;
  std::string project;
  std::string device;
  bool read_only = false;
};

// Where the block store put a block.
struct BlockLocation {
  uint64_t pack = 0;
  uint64_t offset = 0;
  uint32_t stored_length = 0;
  uint32_t raw_length = 0;
  uint8_t codec = 0;  // 0 raw, 1 zstd
};

// Why a commit was refused; nothing of it was applied.
struct CommitRefusal {
  size_t op_index = 0;
  Code code = Code::kConflict;
  std::string reason;  // short machine name: stale_base, name_taken, id_taken, ...
  std::string message;
  uint64_t node = 0;             // the node in the way, if any
  uint64_t current_version = 0;  // its version, if any
  std::vector<Hash128> missing;  // missing_blocks only
};

struct CommitResult {
  std::optional<CommitRefusal> refused;
  uint64_t head = 0;
  uint64_t prev_head = 0;           // the head before this commit
  bool replayed = false;            // the answer of an earlier identical commit
  std::vector<NodeRecord> records;  // final state of every node touched
};

struct DeviceInfo {
  std::string name;
  uint64_t checkpoint = 0;
  int64_t last_seen_ns = 0;
  bool retired = false;
};

struct StoreStats {
  uint64_t blocks = 0;
  uint64_t block_bytes = 0;
};

class MetadataStore {
 public:
  virtual ~MetadataStore() = default;

  virtual Result<ProjectInfo> CreateProject(std::string_view name) = 0;
  virtual Result<std::vector<ProjectInfo>> ListProjects() = 0;
  virtual Result<ProjectInfo> GetProject(std::string_view name) = 0;

  virtual Status AddToken(const TokenHash& hash, int64_t project, std::string_view device, bool read_only) = 0;
  virtual Result<TokenInfo> LookupToken(const TokenHash& hash) = 0;
  // Revokes every token of a device; returns how many.
  virtual Result<int> RevokeDeviceTokens(int64_t project, std::string_view device) = 0;
  virtual Result<int> RevokeToken(const TokenHash& hash) = 0;

  // Live children of `parent` with name > after, by name; at most `limit`.
  virtual Result<NodePage> ListChildren(int64_t project, uint64_t parent, std::string_view after, int limit) = 0;
  virtual Result<ChangesPage> Changes(int64_t project, uint64_t since, int limit) = 0;
  // Every live node at one consistent seq, sorted by (parent, name), to
  // `each` one by one (the record is reused: copy what you keep); the seq.
  virtual Result<uint64_t> ForEachLiveNode(int64_t project, const std::function<void(const NodeRecord&)>& each) = 0;
  virtual Result<NodeRecord> GetNode(int64_t project, uint64_t id) = 0;
  // version 0 means the current one.
  virtual Result<Manifest> GetManifest(int64_t project, uint64_t id, uint64_t version, uint64_t* version_out) = 0;

  // The hashes the project has no block of. `stale`, if given, gets those
  // it has that no version names and that were stored (or last
  // refreshed) more than `stale_age_ns` ago: uploads waiting for their
  // commit, which the collector would soon take.
  virtual Result<std::vector<Hash128>> MissingBlocks(int64_t project, const std::vector<Hash128>& hashes,
                                                     std::vector<Hash128>* stale = nullptr,
                                                     int64_t stale_age_ns = 0) = 0;
  virtual Result<std::vector<BlockLocation>> LocateBlocks(int64_t project, const std::vector<Hash128>& hashes) = 0;
  // Indexes blocks already durable in the block store; an existing one
  // keeps its place (one no version names counts as stored now).
  virtual Status AddBlocks(int64_t project, const std::vector<std::pair<Hash128, BlockLocation>>& blocks) = 0;
  // A client was told these blocks are here: those no version names count
  // as stored now (a commit naming them is on its way).
  virtual Status RefreshBlocks(int64_t project, const std::vector<Hash128>& hashes) = 0;
  // Unindexes up to `limit` blocks (of any project) that no version names
  // and that were stored more than `age_ns` ago; says where they were, so the
  // block store can free them. A commit naming one afterwards is refused
  // (missing_blocks) and its client sends it again.
  virtual Result<std::vector<BlockLocation>> TakeUnreferencedBlocks(int64_t age_ns, size_t limit) = 0;

  // Applies all ops atomically or none (then `refused` says why).
  // `barrier` runs first, under the store's write lock: it makes the block
  // store durable, so every block indexed before the commit is on disk
  // before the commit is. `committed` runs after a successful commit, still
  // under the lock, so commits are announced in seq order.
  // With a non-empty `key` (idempotency), a commit already applied under
  // that key is not applied again: its first result comes back, `replayed`.
  // Keys are kept a day, and each `device`'s newest kKeysKeptPerDevice of
  // them until the device is retired (a mount retries only its last batch,
  // however long it was away).
  static constexpr int kKeysKeptPerDevice = 16;
  virtual Result<CommitResult> Commit(int64_t project, const std::vector<CommitOp>& ops,
                                      const std::function<Status()>& barrier,
                                      const std::function<void(const CommitResult&)>& committed = {},
                                      const std::string& key = "", std::string_view device = "") = 0;

  // Records the seq a device has applied, then purges the tombstones every
  // active (not retired) device has passed.
  virtual Status SetCheckpoint(int64_t project, std::string_view device, uint64_t seq) = 0;
  // A device that will not come back: its checkpoint no longer holds
  // tombstones. Returns whether the device was known.
  virtual Result<bool> RetireDevice(int64_t project, std::string_view device) = 0;
  // Tombstones purged so far: /changes since an older seq is refused.
  virtual Result<uint64_t> PurgedSeq(int64_t project) = 0;
  virtual Status TouchDevice(int64_t project, std::string_view device) = 0;
  virtual Result<std::vector<DeviceInfo>> ListDevices(int64_t project) = 0;

  virtual Result<StoreStats> Stats() = 0;
};

// Opens (creating and migrating) the SQLite store at `path`.
Result<std::unique_ptr<MetadataStore>> OpenSqliteMetadataStore(const std::string& path);

// Project and device names: 1..64 of [A-Za-z0-9._-], not starting with '.'.
Status ValidateProjectName(std::string_view name);
Status ValidateDeviceName(std::string_view name);

}  // namespace tidefs
