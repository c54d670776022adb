#include "core/event_codec.h"

#include <nlohmann/json.hpp>

namespace tidefs {
namespace {

using nlohmann::json;

Status CheckKeys(const json& j, std::initializer_list<const char*> allowed, const char* what) {
  for (const auto& [k, v] : j.items()) {
    bool ok = false;
    for (auto* a : allowed) ok = ok || k == a;
    if (!ok) return Status::Invalid(std::string("unknown field \"") + k + "\" in a " + what + " message");
  }
  return Status::Ok();
}

Result<uint64_t> U64(const json& j, const char* key, const char* what) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_number_unsigned())
    return Status::Invalid(std::string(what) + " message needs \"" + key + "\" as a non-negative integer");
  return it->get<uint64_t>();
}

Result<std::string> Str(const json& j, const char* key, const char* what, size_t max) {
  auto it = j.find(key);
  if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().size() > max)
    return Status::Invalid(std::string(what) + " message needs \"" + key + "\" as a string of at most " +
                           std::to_string(max) + " bytes");
  return it->get<std::string>();
}

Result<std::vector<Transfer>> ParseTransfers(const json& arr) {
  if (!arr.is_array()) return Status::Invalid("transfers must be an array");
  if (arr.size() > kMaxTransfersPerReport)
    return Status::TooLarge("at most " + std::to_string(kMaxTransfersPerReport) + " transfers per report");
  std::vector<Transfer> out;
  for (const auto& t : arr) {
    if (!t.is_object()) return Status::Invalid("a transfer is an object {path, direction, done, total, rate}");
    RETURN_IF_ERROR(CheckKeys(t, {"path", "direction", "done", "total", "rate"}, "transfer"));
    Transfer x;
    ASSIGN_OR_RETURN(x.path, Str(t, "path", "transfer", 4096));
    ASSIGN_OR_RETURN(std::string dir, Str(t, "direction", "transfer", 8));
    if (dir != "up" && dir != "down") return Status::Invalid("transfer direction must be \"up\" or \"down\"");
    x.upload = dir == "up";
    ASSIGN_OR_RETURN(x.done, U64(t, "done", "transfer"));
    ASSIGN_OR_RETURN(x.total, U64(t, "total", "transfer"));
    if (x.done > x.total) return Status::Invalid("transfer done is more than its total");
    auto rate = t.find("rate");
    if (rate == t.end() || !rate->is_number() || !(rate->get<double>() >= 0) || rate->get<double>() > 1e15)
      return Status::Invalid("transfer rate must be a non-negative number");
    x.rate = rate->get<double>();
    out.push_back(std::move(x));
  }
  return out;
}

json TransfersToJson(const std::vector<Transfer>& transfers) {
  json arr = json::array();
  for (const auto& t : transfers)
    arr.push_back({{"path", t.path}, {"direction", t.upload ? "up" : "down"}, {"done", t.done}, {"total", t.total}, {"rate", t.rate}});
  return arr;
}

}  // namespace

Result<Event> DecodeEvent(std::string_view msg) {
  json j = json::parse(msg, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Invalid("event is not a JSON object");
  ASSIGN_OR_RETURN(std::string type, Str(j, "type", "event", 16));
  Event ev;
  if (type == "hello") {
    ev.type = Event::Type::kHello;
    RETURN_IF_ERROR(CheckKeys(j, {"type", "head", "device", "progress"}, "hello"));
    ASSIGN_OR_RETURN(ev.head, U64(j, "head", "hello"));
    ASSIGN_OR_RETURN(ev.device, Str(j, "device", "hello", 64));
    auto p = j.find("progress");
    if (p == j.end() || !p->is_object()) return Status::Invalid("hello message needs a \"progress\" object");
    if (p->size() > 10000) return Status::TooLarge("hello names over 10000 devices");
    for (const auto& [dev, arr] : p->items()) {
      if (dev.size() > 64) return Status::Invalid("hello names a device over 64 bytes");
      ASSIGN_OR_RETURN(ev.progress[dev], ParseTransfers(arr));
    }
  } else if (type == "commit") {
    ev.type = Event::Type::kCommit;
    RETURN_IF_ERROR(CheckKeys(j, {"type", "seq", "prev", "device", "records"}, "commit"));
    ASSIGN_OR_RETURN(ev.seq, U64(j, "seq", "commit"));
    ASSIGN_OR_RETURN(ev.prev, U64(j, "prev", "commit"));
    ASSIGN_OR_RETURN(ev.device, Str(j, "device", "commit", 64));
    if (ev.prev >= ev.seq) return Status::Invalid("commit message covers no seq (prev >= seq)");
    auto recs = j.find("records");
    if (recs != j.end()) {
      if (!recs->is_array()) return Status::Invalid("commit records must be an array");
      ev.has_records = true;
      for (const auto& r : *recs) {
        ASSIGN_OR_RETURN(NodeRecord n, NodeFromJson(r));
        if (n.seq <= ev.prev || n.seq > ev.seq)
          return Status::Invalid("commit record of node " + std::to_string(n.id) + " has seq " + std::to_string(n.seq) +
                                 " outside (" + std::to_string(ev.prev) + ", " + std::to_string(ev.seq) + "]");
        ev.records.push_back(std::move(n));
      }
    }
  } else if (type == "progress") {
    ev.type = Event::Type::kProgress;
    RETURN_IF_ERROR(CheckKeys(j, {"type", "device", "transfers"}, "progress"));
    ASSIGN_OR_RETURN(ev.device, Str(j, "device", "progress", 64));
    auto t = j.find("transfers");
    if (t == j.end()) return Status::Invalid("progress message needs \"transfers\"");
    ASSIGN_OR_RETURN(ev.transfers, ParseTransfers(*t));
  } else if (type == "resync") {
    ev.type = Event::Type::kResync;
    RETURN_IF_ERROR(CheckKeys(j, {"type"}, "resync"));
  } else {
    return Status::Invalid("unknown event type \"" + type + "\"");
  }
  return ev;
}

std::string TransfersJson(const std::vector<Transfer>& transfers) {
  return TransfersToJson(transfers).dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string EncodeProgressReport(const std::vector<Transfer>& transfers) {
  return json{{"type", "progress"}, {"transfers", TransfersToJson(transfers)}}.dump(-1, ' ', false,
                                                                                      json::error_handler_t::replace);
}

Result<std::vector<Transfer>> DecodeProgressReport(std::string_view msg) {
  if (msg.size() > kMaxClientMessage) return Status::TooLarge("message over " + std::to_string(kMaxClientMessage) + " bytes");
  json j = json::parse(msg, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Invalid("message is not a JSON object");
  ASSIGN_OR_RETURN(std::string type, Str(j, "type", "client", 16));
  if (type != "progress") return Status::Invalid("unknown message type \"" + type + "\"");
  RETURN_IF_ERROR(CheckKeys(j, {"type", "transfers"}, "progress"));
  auto t = j.find("transfers");
  if (t == j.end()) return Status::Invalid("progress message needs \"transfers\"");
  return ParseTransfers(*t);
}

}  // namespace tidefs
