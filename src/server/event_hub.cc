#include "server/event_hub.h"

#include <algorithm>

#include <nlohmann/json.hpp>

namespace tidefs {

EventHub::Subscriber::PushResult EventHub::Subscriber::Push(const EventMessage& m) {
  std::lock_guard lock(mu);
  if (overflowed) return {};
  if (queue.size() >= kMaxQueuedMessages || queued_bytes + m->size() > kMaxQueuedBytes) {
    queue.clear();
    queued_bytes = 0;
    overflowed = true;
    return {true, true};
  }
  bool was_empty = queue.empty();
  queue.push_back(m);
  queued_bytes += m->size();
  return {was_empty, false};
}

std::vector<EventMessage> EventHub::Subscriber::TakeAll() {
  static const EventMessage kResync = std::make_shared<const std::string>(R"({"type":"resync"})");
  std::lock_guard lock(mu);
  std::vector<EventMessage> out(queue.begin(), queue.end());
  queue.clear();
  queued_bytes = 0;
  if (overflowed) {
    out.push_back(kResync);
    overflowed = false;
  }
  return out;
}

void EventHub::Subscribe(const std::shared_ptr<Subscriber>& s) {
  std::lock_guard lock(mu_);
  subs_[s->project].push_back(s);
  ++count_;
}

void EventHub::Unsubscribe(const std::shared_ptr<Subscriber>& s) {
  std::lock_guard lock(mu_);
  auto it = subs_.find(s->project);
  if (it == subs_.end()) return;
  auto& v = it->second;
  auto pos = std::find(v.begin(), v.end(), s);
  if (pos == v.end()) return;
  *pos = std::move(v.back());
  v.pop_back();
  --count_;
  if (v.empty()) subs_.erase(it);
}

void EventHub::Publish(int64_t project, const EventMessage& msg, const Subscriber* skip) {
  // Woken outside the hub lock: a wake posts to a session's strand.
  std::vector<std::shared_ptr<Subscriber>> wake;
  {
    std::lock_guard lock(mu_);
    auto it = subs_.find(project);
    if (it == subs_.end()) return;
    for (const auto& s : it->second) {
      if (s.get() == skip) continue;
      auto r = s->Push(msg);
      if (r.wake) wake.push_back(s);
      if (r.overflowed) ++dropped_;
    }
  }
  for (const auto& s : wake) s->wake();
}

EventMessage EventHub::SetProgress(int64_t project, const std::string& device, const std::string& transfers_json) {
  {
    std::lock_guard lock(mu_);
    if (transfers_json == "[]") progress_.erase({project, device});
    else progress_[{project, device}] = transfers_json;
  }
  nlohmann::json j{{"type", "progress"}, {"device", device}};
  std::string out = j.dump();
  out.pop_back();  // the transfers are spliced in as they came (already checked JSON)
  out += ",\"transfers\":" + transfers_json + "}";
  return std::make_shared<const std::string>(std::move(out));
}

EventMessage EventHub::DropProgress(int64_t project, const std::string& device) {
  {
    std::lock_guard lock(mu_);
    if (!progress_.erase({project, device})) return nullptr;
  }
  return SetProgress(project, device, "[]");
}

std::string EventHub::ProgressJson(int64_t project) {
  std::lock_guard lock(mu_);
  std::string out = "{";
  for (auto it = progress_.lower_bound({project, std::string()}); it != progress_.end() && it->first.first == project; ++it) {
    if (out.size() > kMaxHelloProgress) break;  // a hello stays well under a client's message limit
    if (out.size() > 1) out += ',';
    out += nlohmann::json(it->first.second).dump() + ":" + it->second;
  }
  return out + "}";
}

void EventHub::Clear() {
  std::lock_guard lock(mu_);
  subs_.clear();
  count_ = 0;
}

size_t EventHub::subscribers() const {
  std::lock_guard lock(mu_);
  return count_;
}

uint64_t EventHub::messages_dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

}  // namespace tidefs
