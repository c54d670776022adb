// The in-process event hub: each project's WebSocket subscribers, the
// commits and transfer progress fanned out to them, and the progress each
// device last reported (in memory only, never in the metadata store).
// Knows nothing of Beast: a session registers a Subscriber with a `wake`
// callback and drains its queue on its own strand. Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace tidefs {

using EventMessage = std::shared_ptr<const std::string>;

class EventHub {
 public:
  // A slow subscriber's queue is bounded; past it the queue is dropped and
  // the subscriber gets one "resync" message (it catches up via /changes).
  static constexpr size_t kMaxQueuedMessages = 1024;
  static constexpr size_t kMaxQueuedBytes = 8 << 20;
  static constexpr size_t kMaxHelloProgress = 1 << 20;

  struct Subscriber {
    int64_t project = 0;
    std::string device;
    // Called (from any thread, with no hub lock held by the caller's
    // caller) when the queue goes from empty to non-empty.
    std::function<void()> wake;

    // Takes every queued message, in order; a "resync" message replaces
    // what an overflow dropped.
    std::vector<EventMessage> TakeAll();

   private:
    friend class EventHub;
    std::mutex mu;
    std::deque<EventMessage> queue;  // guarded by mu
    size_t queued_bytes = 0;         // guarded by mu
    bool overflowed = false;         // guarded by mu
    struct PushResult {
      bool wake = false;        // the queue was empty: the session must be woken
      bool overflowed = false;  // this message overflowed the queue
    };
    PushResult Push(const EventMessage& m);
  };

  void Subscribe(const std::shared_ptr<Subscriber>& s);
  void Unsubscribe(const std::shared_ptr<Subscriber>& s);
  // Queues `msg` for every subscriber of `project` except `skip`.
  void Publish(int64_t project, const EventMessage& msg, const Subscriber* skip = nullptr);

  // A device's transfers in progress (a JSON array) replace what it
  // reported before; an empty array clears them. Returns the event to
  // publish: {"type":"progress","device":D,"transfers":[...]}.
  EventMessage SetProgress(int64_t project, const std::string& device, const std::string& transfers_json);
  // Every device's current transfers, as a JSON object {device: [...]}.
  std::string ProgressJson(int64_t project);
  // A device whose last connection closed: its transfers are over.
  EventMessage DropProgress(int64_t project, const std::string& device);

  // Forgets every subscriber (the server is stopping: their sessions are
  // gone with the io_context, their wake callbacks must go before it).
  void Clear();
  size_t subscribers() const;
  uint64_t messages_dropped() const;

 private:
  mutable std::mutex mu_;
  std::unordered_map<int64_t, std::vector<std::shared_ptr<Subscriber>>> subs_;  // guarded by mu_
  std::map<std::pair<int64_t, std::string>, std::string> progress_;           // guarded by mu_
  size_t count_ = 0;                                                          // guarded by mu_
  uint64_t dropped_ = 0;                                                      // guarded by mu_
};

}  // namespace tidefs
