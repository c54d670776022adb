// The client end of GET /v1/projects/{p}/events: a WebSocket (Boost.Beast,
// this file's .cc is the only client-side place that includes it) kept
// open on its own thread. It reconnects by itself with jittered backoff;
// the owner hears every text message and every connect/disconnect, and
// may send text messages (progress reports) while connected.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "client/api_client.h"

namespace tidefs {

class EventStream {
 public:
  struct Callbacks {
    // Every text message, in order (hello, commit, progress, resync). An
    // error (a malformed message) closes the connection; it is logged and
    // a new one is made after the backoff.
    std::function<Status(std::string_view)> on_message;
    // true once the handshake is done; false when the connection is lost
    // (with why), before the next attempt.
    std::function<void(bool connected, const std::string& why)> on_state;
  };
  EventStream(ClientOptions opts, Callbacks cb);
  ~EventStream();  // Stop()s

  void Start();
  void Stop();
  // Queues a text message; false (and dropped) when not connected.
  bool Send(std::string msg);
  bool connected() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace tidefs
