// The v1 API client over libcurl, used by `tidefs import`, the mount and
// the tests. Thread-safe: each call leases a curl handle from a pool, so
// connections are kept alive and several calls may run at once.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/manifest_codec.h"
#include "core/protocol.h"
#include "core/snapshot_codec.h"
#include "core/status.h"
#include "core/commit_codec.h"

namespace tidefs {

struct ClientOptions {
  std::string server;  // http://host:port
  std::string project;
  std::string token;
  long timeout_ms = 60000;
  long connect_timeout_ms = 5000;
  int retries = 3;  // for idempotent requests, on connection errors and 5xx
  // When set, an exchange that moves no byte for this long (checked about
  // once a second) fails as unavailable: a server that takes requests and
  // never answers is given up on then, not after timeout_ms.
  long stall_ms = 0;
};

struct HttpAnswer {
  int status = 0;
  std::string body;
  // When set, a successful body goes here instead of `body` (no copies,
  // no allocation); a body longer than into_cap aborts the transfer.
  char* into = nullptr;
  size_t into_cap = 0;
  size_t into_len = 0;
  std::map<std::string, std::string> headers;  // lowercase names
  const std::string* Header(const std::string& lower) const {
    auto it = headers.find(lower);
    return it == headers.end() ? nullptr : &it->second;
  }
};

class ApiClient {
 public:
  explicit ApiClient(ClientOptions opts);
  ~ApiClient();
  const ClientOptions& options() const { return opts_; }
  // Sets stall_ms from now on, for the exchanges under way too (0: none).
  void SetStall(std::chrono::milliseconds stall) { stall_ms_.store(static_cast<long>(stall.count()), std::memory_order_relaxed); }
  // The protocol level of the server's last successful answer that named
  // one (kProtocolHeader), or 1 if the last WhoAmI answer had none; 0
  // until then.
  int server_protocol() const { return server_protocol_.load(std::memory_order_relaxed); }

  // One HTTP exchange. `path` is relative to /v1/projects/{project} unless
  // it starts with "//" (then it is taken from the server root, minus one
  // slash). Any status is returned; only transport failures are errors.
  Result<HttpAnswer> Raw(const std::string& method, const std::string& path, std::string_view body = {},
                         const std::vector<std::string>& headers = {}, bool idempotent = true);

  Result<NodePage> ListNodes(uint64_t parent, const std::string& after = "", int limit = kMaxPageSize);
  // Every live child of `parent`, all pages.
  Result<std::vector<NodeRecord>> ListAll(uint64_t parent);
  // One node as the server has it now (a deleted one as its tombstone).
  Result<NodeRecord> GetNode(uint64_t id);
  Result<ChangesPage> Changes(uint64_t since, int limit = kMaxPageSize);
  Result<Snapshot> GetSnapshot();
  // The device this client's token belongs to, and whether it may only
  // read (from GET /devices).
  struct Caller {
    std::string device;
    bool read_only = true;
  };
  Result<Caller> WhoAmI();
  Result<Manifest> GetManifest(uint64_t id, uint64_t version = 0);
  // Bytes [first, last] of a file version (0 = current).
  Result<std::string> GetContent(uint64_t id, uint64_t version, uint64_t first, uint64_t last);
  // One attempt (no retries) at the same into `dest` (room for
  // last - first + 1 bytes). `*received` counts the bytes that arrived even
  // when the transfer broke, so the caller can resume from there.
  // With `manifest`, the server is asked for the file version's manifest
  // too (kWantManifestHeader): set when the answer carried one (a server
  // of level 3 on, for files of at most kMaxInlineManifestBlocks blocks);
  // one that does not decode is kCorruption.
  Status ReadContent(uint64_t id, uint64_t version, uint64_t first, uint64_t last, char* dest, size_t* received,
                     std::optional<Manifest>* manifest = nullptr);
  Result<std::vector<Hash128>> MissingBlocks(const std::vector<Hash128>& hashes);
  // `body` is a sequence of block frames (core/block_frame.h).
  Status UploadBlocks(std::string_view body);
  // `key` (1..128 of [A-Za-z0-9_-]) names what the commit carries: a
  // retry with the same key gets the first answer (`replayed`), whatever
  // its body. The mount names its journal range, so a commit whose refused
  // ops it resolved (another body) is still known when its answer is lost.
  // Empty: the body's hash.
  Result<CommitReply> Commit(const std::vector<CommitOp>& ops, const std::string& key = "");
  Status PutCheckpoint(const std::string& device, uint64_t seq);

  static std::string UrlEncode(std::string_view s);

 private:
  Result<HttpAnswer> Exchange(const std::string& method, const std::string& path, std::string_view body,
                              const std::vector<std::string>& headers, bool idempotent, char* into, size_t into_cap,
                              size_t* into_got = nullptr);
  // The level an answer's kProtocolHeader names; 0 without a good one.
  static int LevelIn(const HttpAnswer& a);
  void SetProtocol(int level);
  struct Pool;
  ClientOptions opts_;
  std::unique_ptr<Pool> pool_;
  std::atomic<int> server_protocol_{0};
  std::atomic<long> stall_ms_;  // options' stall_ms, or what SetStall set
};

// The error an answer carries: its JSON message and the matching Code.
Status StatusFromAnswer(const HttpAnswer& a, const std::string& what);

}  // namespace tidefs
