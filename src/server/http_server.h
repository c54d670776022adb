// The HTTP/1.1 server (Boost.Beast, C++20 coroutines). The only place that
// includes Beast; it turns wire requests into HttpRequests for the Api.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "core/status.h"
#include "server/api.h"
#include "server/metrics.h"

namespace tidefs {

class HttpServer {
 public:
  HttpServer(Api* api, Metrics* metrics);
  ~HttpServer();

  // Binds host:port (port 0 picks a free one).
  Status Listen(const std::string& host, uint16_t port);
  uint16_t port() const;
  // Serves on `threads` threads until SIGINT/SIGTERM or Stop().
  void Run(int threads);
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidefs
