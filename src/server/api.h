// The v1 HTTP API: routing, auth and every endpoint of docs/protocol.md.
// Knows nothing of Beast; http_server.cc feeds it HttpRequests.
// Thread-safe: handlers run concurrently on the server's threads.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>

#include "server/block_store.h"
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
