#include "client/api_client.h"

#include <curl/curl.h>

#include <charconv>
#include <chrono>
#include <cstring>
#include <thread>

#include <nlohmann/json.hpp>
#include "core/hash.h"
#include <spdlog/spdlog.h>

namespace tidefs {

using nlohmann::json;

namespace {

// kProtocolHeader as the answer's header map has it (lowercase names).
constexpr const char* kProtocolHeaderLower = "x-tidefs-protocol";

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

size_t OnBody(char* p, size_t size, size_t n, void* ud) {
  auto* a = static_cast<HttpAnswer*>(ud);
  if (a->into && (a->status == 200 || a->status == 206)) {
    if (a->into_len + size * n > a->into_cap) return 0;  // longer than announced: abort
    std::memcpy(a->into + a->into_len, p, size * n);
    a->into_len += size * n;
  } else {
    a->body.append(p, size * n);
  }
  return size * n;
}

// An exchange's watch for a server gone silent: the last time a byte
// moved, against the client's stall limit (read at each call, so a limit
// set later reaches exchanges under way). libcurl calls it about once a
// second while nothing moves, and on every read while bytes come.
struct StallWatch {
  const std::atomic<long>* stall_ms;
  curl_off_t moved = 0;
  std::chrono::steady_clock::time_point since = std::chrono::steady_clock::now();
  bool stalled = false;
};

int OnProgress(void* ud, curl_off_t, curl_off_t dlnow, curl_off_t, curl_off_t ulnow) {
  auto* w = static_cast<StallWatch*>(ud);
  const auto now = std::chrono::steady_clock::now();
  if (dlnow + ulnow != w->moved) {  // (body bytes: headers alone do not count)
    w->moved = dlnow + ulnow;
    w->since = now;
    return 0;
  }
  const long limit = w->stall_ms->load(std::memory_order_relaxed);
  w->stalled = limit > 0 && now - w->since >= std::chrono::milliseconds(limit);
  return w->stalled ? 1 : 0;  // (nonzero: abort)
}

size_t OnHeader(char* p, size_t size, size_t n, void* ud) {
  auto* a = static_cast<HttpAnswer*>(ud);
  auto* h = &a->headers;
  std::string_view line(p, size * n);
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    std::string name(line.substr(0, colon));
    for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    std::string_view v = line.substr(colon + 1);
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' ')) v.remove_suffix(1);
    (*h)[name] = std::string(v);
    // Room for the whole body at once: chunks arrive as one 4 MiB string.
    if (name == "content-length") {
      uint64_t len = 0;
      auto [ptr, ec] = std::from_chars(v.data(), v.data() + v.size(), len);
      if (ec == std::errc() && len <= (64u << 20) && !a->into) a->body.reserve(len);
    }
  } else if (line.substr(0, 5) == "HTTP/") {
    h->clear();  // a new response (after 100-continue or a redirect)
    size_t sp = line.find(' ');
    int code = 0;
    if (sp != std::string_view::npos && line.size() >= sp + 4)
      std::from_chars(line.data() + sp + 1, line.data() + sp + 4, code);
    a->status = code;
  }
  return size * n;
}

Result<std::vector<NodeRecord>> ParseNodes(const json& arr) {
  if (!arr.is_array()) return Status::Corruption("answer lacks an items array");
  std::vector<NodeRecord> out;
  out.reserve(arr.size());
  for (const auto& j : arr) {
    ASSIGN_OR_RETURN(NodeRecord n, NodeFromJson(j));
    out.push_back(std::move(n));
  }
  return out;
}

Result<json> ParseJson(const std::string& body) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return Status::Corruption("server answered with invalid JSON");
  return j;
}

// Runs a parser of a server answer; a field of an unexpected type (which
// nlohmann reports by throwing) becomes kCorruption, never a crash.
template <typename F>
auto Guard(const char* what, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const json::exception& e) {
    return Status::Corruption(std::string(what) + ": unexpected answer from the server: " + e.what());
  }
}

}  // namespace

Status StatusFromAnswer(const HttpAnswer& a, const std::string& what) {
  std::string msg = "HTTP " + std::to_string(a.status);
  json j = json::parse(a.body, nullptr, false);
  auto text = [&](const char* key) -> std::string {
    if (!j.is_object() || !j.contains(key) || !j[key].is_string()) return "";
    return j[key].get<std::string>();
  };
  if (!text("message").empty()) msg = text("message");
  Code code = CodeForHttpStatus(a.status);
  if (a.status == 409 && text("error") == "already_exists") code = Code::kAlreadyExists;
  if (a.status == 409 && text("error") == "not_empty") code = Code::kNotEmpty;
  return Status(code, what + ": " + msg);
}

struct ApiClient::Pool {
  std::mutex mu;
  std::vector<CURL*> free;  // guarded by mu
  ~Pool() {
    for (CURL* c : free) curl_easy_cleanup(c);
  }
  CURL* Get() {
    {
      std::lock_guard lock(mu);
      if (!free.empty()) {
        CURL* c = free.back();
        free.pop_back();
        return c;
      }
    }
    return curl_easy_init();
  }
  void Put(CURL* c) {
    std::lock_guard lock(mu);
    free.push_back(c);
  }
};

ApiClient::ApiClient(ClientOptions opts)
    : opts_(std::move(opts)), pool_(std::make_unique<Pool>()), stall_ms_(opts_.stall_ms) {
  static CurlGlobal global;
  while (!opts_.server.empty() && opts_.server.back() == '/') opts_.server.pop_back();
}

ApiClient::~ApiClient() = default;

std::string ApiClient::UrlEncode(std::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

int ApiClient::LevelIn(const HttpAnswer& a) {
  const std::string* h = a.Header(kProtocolHeaderLower);
  if (!h) return 0;
  int level = 0;
  auto [end, ec] = std::from_chars(h->data(), h->data() + h->size(), level);
  if (ec != std::errc() || end != h->data() + h->size() || level < 1) {
    spdlog::debug("the server sent a bad {} header: '{}'", kProtocolHeader, *h);
    return 0;
  }
  return level;
}

void ApiClient::SetProtocol(int level) {
  if (server_protocol_.load(std::memory_order_relaxed) == level) return;  // (every answer: no write when unchanged)
  int was = server_protocol_.exchange(level, std::memory_order_relaxed);
  if (was != level && was != 0) spdlog::info("the server at {} now speaks protocol {} (was {})", opts_.server, level, was);
}

Result<HttpAnswer> ApiClient::Raw(const std::string& method, const std::string& path, std::string_view body,
                                  const std::vector<std::string>& headers, bool idempotent) {
  return Exchange(method, path, body, headers, idempotent, nullptr, 0);
}

Result<HttpAnswer> ApiClient::Exchange(const std::string& method, const std::string& path, std::string_view body,
                                       const std::vector<std::string>& headers, bool idempotent, char* into,
                                       size_t into_cap, size_t* into_got) {
  std::string url = path.rfind("//", 0) == 0 ? opts_.server + path.substr(1)
                                             : opts_.server + "/v1/projects/" + opts_.project + path;
  int attempts = idempotent ? opts_.retries + 1 : 1;
  Status last;
  for (int attempt = 0; attempt < attempts; ++attempt) {
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(100 << std::min(attempt, 5)));
    CURL* c = pool_->Get();
    if (!c) return Status::Internal("curl_easy_init failed");
    curl_easy_reset(c);
    HttpAnswer a;
    a.into = into;
    a.into_cap = into_cap;
    curl_slist* hl = nullptr;
    std::string auth = "Authorization: Bearer " + opts_.token;
    if (!opts_.token.empty()) hl = curl_slist_append(hl, auth.c_str());
    hl = curl_slist_append(hl, "Expect:");
    for (const auto& h : headers) hl = curl_slist_append(hl, h.c_str());
    curl_easy_setopt(c, CURLOPT_URL, url.c_str());
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method.c_str());
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &a);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &a);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, opts_.timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, opts_.connect_timeout_ms);
    StallWatch watch{&stall_ms_};
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &watch);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    if (const long stall = stall_ms_.load(std::memory_order_relaxed); stall > 0)
      curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, std::min(opts_.connect_timeout_ms, std::max(stall, 1000L)));
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
    // Receives in 32 KiB reads: a chunk passes through this buffer into
    // ours while it is still in the CPU's cache, and the loopback sender
    // does less too. Cold 1 GiB read against 512 KiB, alternated three
    // times with the server's caches dropped: 855-982 against 708-760 MB/s,
    // server CPU 0.8 against 1.2 s, mount 0.8-1.0 against 1.1-1.3 s.
    curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 32L * 1024);
    curl_easy_setopt(c, CURLOPT_UPLOAD_BUFFERSIZE, 2L * 1024 * 1024);  // (64 KiB: the same, measured)
    if (method != "GET" && method != "HEAD") {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, body.empty() ? "" : body.data());  // (never NULL: that reads stdin)
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(body.size()));
    }
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_slist_free_all(hl);
    pool_->Put(c);
    if (into_got) *into_got = a.into_len;
    if (rc != CURLE_OK) {
      last = Status::Unavailable(method + " " + url + ": " +
                                 (watch.stalled ? "the server sent nothing for " +
                                                      std::to_string(stall_ms_.load(std::memory_order_relaxed)) + " ms"
                                                : std::string(curl_easy_strerror(rc))));
      spdlog::debug("{}", last.message());
      if (watch.stalled) return last;  // (the caller decides whether a silent server is worth another wait)
      continue;
    }
    a.status = static_cast<int>(status);
    // (No header: a level-1 server, or something in between that dropped
    // it, a proxy or a maintenance page: only WhoAmI decides that.)
    if (const int level = LevelIn(a); level && a.status >= 200 && a.status < 300) SetProtocol(level);
    if (a.status >= 500 && attempt + 1 < attempts) {
      last = StatusFromAnswer(a, method + " " + url);
      continue;
    }
    return a;
  }
  return last;
}

Result<NodePage> ApiClient::ListNodes(uint64_t parent, const std::string& after, int limit) {
  return Guard("listing", [&]() -> Result<NodePage> {
  std::string path = "/nodes?parent=" + std::to_string(parent) + "&limit=" + std::to_string(limit);
  if (!after.empty()) path += "&after=" + UrlEncode(after);
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", path));
  if (a.status != 200) return StatusFromAnswer(a, "listing directory " + std::to_string(parent));
  ASSIGN_OR_RETURN(json j, ParseJson(a.body));
  NodePage page;
  ASSIGN_OR_RETURN(page.items, ParseNodes(j["items"]));
  if (j.contains("next") && j["next"].is_string()) page.next = j["next"].get<std::string>();
  return page;
  });
}

Result<std::vector<NodeRecord>> ApiClient::ListAll(uint64_t parent) {
  std::vector<NodeRecord> all;
  std::string after;
  for (;;) {
    ASSIGN_OR_RETURN(NodePage page, ListNodes(parent, after));
    for (auto& n : page.items) all.push_back(std::move(n));
    if (!page.next) return all;
    after = *page.next;
  }
}

Result<NodeRecord> ApiClient::GetNode(uint64_t id) {
  return Guard("node", [&]() -> Result<NodeRecord> {
    ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", "/nodes/" + std::to_string(id)));
    if (a.status != 200) return StatusFromAnswer(a, "node " + std::to_string(id));
    ASSIGN_OR_RETURN(json j, ParseJson(a.body));
    ASSIGN_OR_RETURN(auto items, ParseNodes(j["items"]));
    if (items.size() != 1 || items[0].id != id) return Status::Corruption("the answer for node " + std::to_string(id) + " names another");
    return items[0];
  });
}

Result<ChangesPage> ApiClient::Changes(uint64_t since, int limit) {
  return Guard("changes", [&]() -> Result<ChangesPage> {
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", "/changes?since=" + std::to_string(since) + "&limit=" + std::to_string(limit)));
  if (a.status != 200) return StatusFromAnswer(a, "changes since " + std::to_string(since));
  ASSIGN_OR_RETURN(json j, ParseJson(a.body));
  ChangesPage page;
  ASSIGN_OR_RETURN(page.items, ParseNodes(j["items"]));
  if (!j.contains("head") || !j["head"].is_number_unsigned()) return Status::Corruption("changes answer lacks head");
  page.head = j["head"].get<uint64_t>();
  page.more = j.value("more", false);
  return page;
  });
}

Result<Snapshot> ApiClient::GetSnapshot() {
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", "/snapshot"));
  if (a.status != 200) return StatusFromAnswer(a, "snapshot");
  ASSIGN_OR_RETURN(Snapshot s, DecodeSnapshot(a.body));
  const std::string* seq = a.Header("x-tidefs-seq");
  if (!seq || *seq != std::to_string(s.seq)) return Status::Corruption("snapshot seq header does not match its body");
  return s;
}

Result<Manifest> ApiClient::GetManifest(uint64_t id, uint64_t version) {
  std::string path = "/nodes/" + std::to_string(id) + "/manifest";
  if (version) path += "?version=" + std::to_string(version);
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", path));
  if (a.status != 200) return StatusFromAnswer(a, "manifest of node " + std::to_string(id));
  return DecodeManifest(a.body);
}

Result<std::string> ApiClient::GetContent(uint64_t id, uint64_t version, uint64_t first, uint64_t last) {
  std::string path = "/nodes/" + std::to_string(id) + "/content";
  if (version) path += "?version=" + std::to_string(version);
  std::string range = "Range: bytes=" + std::to_string(first) + "-" + std::to_string(last);
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", path, "", {range}));
  if (a.status != 206 && a.status != 200) return StatusFromAnswer(a, "content of node " + std::to_string(id));
  return std::move(a.body);
}

Status ApiClient::ReadContent(uint64_t id, uint64_t version, uint64_t first, uint64_t last, char* dest,
                              size_t* received, std::optional<Manifest>* manifest) {
  *received = 0;
  std::string path = "/nodes/" + std::to_string(id) + "/content";
  if (version) path += "?version=" + std::to_string(version);
  std::string range = "Range: bytes=" + std::to_string(first) + "-" + std::to_string(last);
  std::vector<std::string> headers{range};
  if (manifest) {
    manifest->reset();
    headers.push_back(std::string(kWantManifestHeader) + ": 1");
  }
  auto a = Exchange("GET", path, "", headers, /*idempotent=*/false, dest, last - first + 1, received);
  if (!a.ok()) return a.status();
  if (a->status != 206 && !(a->status == 200 && first == 0)) {
    *received = 0;
    if (a->status == 200) return Status::Corruption("content of node " + std::to_string(id) + ": the server ignored the Range");
    return StatusFromAnswer(*a, "content of node " + std::to_string(id));
  }
  if (manifest) {
    if (const std::string* h = a->Header("x-tidefs-manifest")) {
      auto m = DecodeManifestText(*h);
      if (!m.ok()) return Status::Corruption("content of node " + std::to_string(id) + ": " + m.status().message());
      *manifest = std::move(*m);
    }
  }
  return Status::Ok();
}

Result<ApiClient::Caller> ApiClient::WhoAmI() {
  return Guard("devices", [&]() -> Result<Caller> {
    ASSIGN_OR_RETURN(HttpAnswer a, Raw("GET", "/devices"));
    if (a.status != 200) return StatusFromAnswer(a, "devices");
    ASSIGN_OR_RETURN(json j, ParseJson(a.body));
    if (!j.contains("caller") || !j["caller"].is_object()) return Status::Corruption("devices answer lacks caller");
    const json& c = j["caller"];
    if (!c.contains("device") || !c["device"].is_string() || !c.contains("read_only") || !c["read_only"].is_boolean())
      return Status::Corruption("devices answer has a malformed caller");
    // This answer is surely a tidefs server's: its level is in the body
    // (level 2 on), else in the header, else it is 1.
    int level = LevelIn(a);
    if (j.contains("protocol")) {
      const json& p = j["protocol"];
      if (p.is_number_unsigned() && p.get<uint64_t>() >= 1 && p.get<uint64_t>() <= 1000000)
        level = static_cast<int>(p.get<uint64_t>());
      else  // (the caller is still good to know)
        spdlog::warn("the server's /devices answer has a malformed protocol level: {}", p.dump());
    }
    SetProtocol(level ? level : 1);
    return Caller{c["device"].get<std::string>(), c["read_only"].get<bool>()};
  });
}

Result<std::vector<Hash128>> ApiClient::MissingBlocks(const std::vector<Hash128>& hashes) {
  return Guard("blocks/missing", [&]() -> Result<std::vector<Hash128>> {
  std::string body = "{\"hashes\":[";
  for (size_t i = 0; i < hashes.size(); ++i) {
    if (i) body += ',';
    body += '"' + hashes[i].Hex() + '"';
  }
  body += "]}";
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("POST", "/blocks/missing", body, {"Content-Type: application/json"}));
  if (a.status != 200) return StatusFromAnswer(a, "blocks/missing");
  ASSIGN_OR_RETURN(json j, ParseJson(a.body));
  if (!j.contains("missing") || !j["missing"].is_array()) return Status::Corruption("blocks/missing answer lacks missing");
  std::vector<Hash128> out;
  for (const auto& h : j["missing"]) {
    auto parsed = h.is_string() ? Hash128::FromHex(h.get_ref<const std::string&>()) : std::nullopt;
    if (!parsed) return Status::Corruption("blocks/missing answered a bad hash");
    out.push_back(*parsed);
  }
  return out;
  });
}

Status ApiClient::UploadBlocks(std::string_view body) {
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("POST", "/blocks", body, {"Content-Type: application/octet-stream"}));
  if (a.status != 200) return StatusFromAnswer(a, "uploading blocks");
  return Status::Ok();
}

Result<CommitReply> ApiClient::Commit(const std::vector<CommitOp>& ops, const std::string& key) {
  return Guard("commit", [&]() -> Result<CommitReply> {
  // A retry of the same commit (its answer lost) gets the first answer
  // instead of being applied twice. Without a key of the caller's, the
  // key is the body's hash.
  std::string body = EncodeCommit(ops);
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("POST", "/commit", body,
                                     {"Content-Type: application/json", "Idempotency-Key: " + (key.empty() ? HashBlock(body).Hex() : key)},
                                     /*idempotent=*/false));
  CommitReply r;
  r.http_status = a.status;
  if (a.status == 200) {
    ASSIGN_OR_RETURN(json j, ParseJson(a.body));
    ASSIGN_OR_RETURN(r.items, ParseNodes(j["items"]));
    r.head = j.value("head", uint64_t{0});
    r.replayed = j.value("replayed", false);
    return r;
  }
  if (a.status >= 500) return StatusFromAnswer(a, "commit");
  json j = json::parse(a.body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return StatusFromAnswer(a, "commit");
  r.refused = true;
  r.error = j.value("error", "");
  r.reason = j.value("reason", "");
  r.message = j.value("message", "");
  r.op = j.value("op", size_t{0});
  r.node = j.value("node", uint64_t{0});
  r.current_version = j.value("current_version", uint64_t{0});
  if (j.contains("missing") && j["missing"].is_array())
    for (const auto& h : j["missing"])
      if (h.is_string())
        if (auto p = Hash128::FromHex(h.get_ref<const std::string&>())) r.missing.push_back(*p);
  return r;
  });
}

Status ApiClient::PutCheckpoint(const std::string& device, uint64_t seq) {
  ASSIGN_OR_RETURN(HttpAnswer a, Raw("PUT", "/devices/" + UrlEncode(device) + "/checkpoint",
                                     "{\"seq\":" + std::to_string(seq) + "}", {"Content-Type: application/json"}));
  if (a.status != 200) return StatusFromAnswer(a, "checkpoint of " + device);
  return Status::Ok();
}

}  // namespace tidefs
