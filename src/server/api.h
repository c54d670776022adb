// The v1 HTTP API: routing, auth and every endpoint of docs/protocol.md.
// Knows nothing of Beast; http_server.cc feeds it HttpRequests.
// Thread-safe: handlers run concurrently on the server's threads.
#pragma once

#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "server/block_store.h"
#include "server/event_hub.h"
#include "server/http_types.h"
#include "server/metadata_store.h"
#include "server/metrics.h"
#include "server/snapshot_cache.h"

namespace tidefs {

class Api {
 public:
  Api(MetadataStore* meta, BlockStore* blocks, Metrics* metrics);

  // `route` receives the route template for metrics ("GET /nodes").
  HttpResponse Handle(const HttpRequest& req, std::string* route);

  // The largest body a request to `path` may carry.
  static size_t BodyLimitFor(const std::string& method, const std::string& path);

  // GET /v1/projects/{p}/events: the route and token check of a WebSocket
  // upgrade (the server does the upgrade). Errors come as the answer to send.
  static bool IsEventsPath(const std::string& path);
  struct Subscription {
    TokenInfo token;
    uint64_t head = 0;
  };
  Result<Subscription> AuthorizeEvents(const HttpRequest& req, HttpResponse* refusal);
  // The first message to a new subscriber: {"type":"hello","head":N,"progress":{...}}.
  std::string HelloMessage(const Subscription& s);
  // A message from a subscriber (a mount reporting its transfers): checked
  // and turned into the event for the project's other subscribers. An
  // error means the connection is closed.
  Result<EventMessage> OnClientMessage(const TokenInfo& token, std::string_view msg);
  EventHub* events() { return &events_; }

  // Uploaded blocks no commit has named for `grace` are collected (their
  // index rows deleted, their bytes freed in the packs): an interrupted
  // upload can resume within it. Asking about such a block, or sending it
  // again, starts its grace anew.
  void set_block_grace(std::chrono::seconds grace) { grace_ns_ = grace.count() * 1'000'000'000; }
  // One round of collection; returns how many blocks it freed.
  Result<uint64_t> CollectBlocks();

 private:
  struct Caller {
    TokenInfo token;
  };
  Result<Caller> Authenticate(const HttpRequest& req, const std::string& project);
  void TouchDevice(const TokenInfo& token);

  HttpResponse ListNodes(const HttpRequest& req, const Caller& c);
  HttpResponse Changes(const HttpRequest& req, const Caller& c);
  HttpResponse GetSnapshot(const Caller& c);
  HttpResponse GetManifest(const HttpRequest& req, const Caller& c, uint64_t id);
  HttpResponse GetContent(const HttpRequest& req, const Caller& c, uint64_t id);
  HttpResponse BlocksMissing(const HttpRequest& req, const Caller& c);
  HttpResponse UploadBlocks(const HttpRequest& req, const Caller& c);
  HttpResponse Commit(const HttpRequest& req, const Caller& c);
  HttpResponse PutCheckpoint(const HttpRequest& req, const Caller& c, const std::string& device);
  HttpResponse ListDevices(const Caller& c);

  // Blocks stored and not known durable yet are indexed only once a Sync
  // made them so (at the next commit, or when many wait): an index row on
  // disk before its bytes (a WAL checkpoint, then the power lost) would
  // name bytes that are not there, and the block would count as present
  // for good. Until then they count as present here.
  void AddUnindexed(int64_t project, const std::vector<std::pair<Hash128, BlockLocation>>& blocks);
  Status IndexStoredBlocks();
  void DropUnindexed(int64_t project, std::vector<Hash128>* missing);
  // Of the blocks present among `hashes`, those past half their grace get
  // it anew (a client was told they are here).
  std::vector<Hash128> MissingRefreshed(int64_t project, const std::vector<Hash128>& hashes, Status* st);
  std::atomic<int64_t> grace_ns_{int64_t{86400} * 1'000'000'000};
  std::mutex unindexed_mu_;
  // guarded by unindexed_mu_: project -> hash -> where it is stored
  std::unordered_map<int64_t, std::unordered_map<Hash128, BlockLocation, Hash128Hasher>> unindexed_;
  size_t n_unindexed_ = 0;  // guarded by unindexed_mu_
  std::mutex index_mu_;     // one IndexStoredBlocks at a time

  EventHub events_;
  MetadataStore* meta_;
  BlockStore* blocks_;
  Metrics* metrics_;
  SnapshotCache snapshots_;
  std::mutex touch_mu_;
  std::map<std::pair<int64_t, std::string>, std::chrono::steady_clock::time_point> touched_;  // guarded by touch_mu_
};

// Builds a JSON error answer: {"error": code, "message": text}.
HttpResponse ErrorResponse(const Status& st);

}  // namespace tidefs
