// The v1 HTTP API: routing, auth and every endpoint of docs/protocol.md.
// Knows nothing of Beast; http_server.cc feeds it HttpRequests.
// Thread-safe: handlers run concurrently on the server's threads.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>

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
