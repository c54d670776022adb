#include "server/api.h"

#include <charconv>
#include <cstring>
#include <memory>
#include <span>
#include <unordered_set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/block_frame.h"
#include "core/commit_codec.h"
#include "core/event_codec.h"
#include "core/http_range.h"
#include "core/manifest_codec.h"
#include "core/memory.h"
#include "core/names.h"
#include "server/admin.h"
#include "server/json_writer.h"

namespace tidefs {
namespace {

// Downloads' piece buffers, kept for the next response.
BigBufferPool piece_pool(16);

using nlohmann::json;

constexpr size_t kMaxMissingQuery = 20000;
// A commit event carries its records up to these sizes; a bigger commit is
// announced by seq alone and subscribers pull /changes.
constexpr size_t kMaxEventRecords = 256;
constexpr size_t kMaxEventRecordBytes = 64 * 1024;

HttpResponse JsonResponse(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

std::vector<std::string> SplitPath(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    if (path[i] == '/') { ++i; continue; }
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    parts.push_back(path.substr(i, j - i));
    i = j;
  }
  return parts;
}

// Strict unsigned parse: digits only, no sign, no overflow.
bool ParseU64(std::string_view s, uint64_t* v) {
  if (s.empty() || s.size() > 20) return false;
  for (char c : s)
    if (c < '0' || c > '9') return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), *v);
  return ec == std::errc() && p == s.data() + s.size();
}

Status QueryU64(const HttpRequest& req, const char* key, uint64_t* out, bool* present) {
  auto it = req.query.find(key);
  *present = it != req.query.end();
  if (!*present) return Status::Ok();
  if (!ParseU64(it->second, out))
    return Status::Invalid(std::string("query parameter ") + key + "=\"" + it->second + "\" is not a non-negative integer");
  return Status::Ok();
}

Status QueryLimit(const HttpRequest& req, int* limit) {
  uint64_t v = kMaxPageSize;
  bool present;
  RETURN_IF_ERROR(QueryU64(req, "limit", &v, &present));
  if (present && (v < 1 || v > kMaxPageSize))
    return Status::Invalid("limit must be between 1 and " + std::to_string(kMaxPageSize));
  *limit = static_cast<int>(v);
  return Status::Ok();
}

Status CheckQueryKeys(const HttpRequest& req, std::initializer_list<const char*> allowed) {
  for (const auto& [k, v] : req.query) {
    bool ok = false;
    for (auto* a : allowed) ok = ok || k == a;
    if (!ok) return Status::Invalid("unknown query parameter \"" + k + "\"");
  }
  return Status::Ok();
}

std::string NodesJson(const char* key, const std::vector<NodeRecord>& items) {
  std::string out;
  out.reserve(64 + items.size() * 200);
  out += "{\"";
  out += key;
  out += "\":[";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += ',';
    AppendNodeJson(&out, items[i]);
  }
  out += ']';
  return out;
}

}  // namespace

HttpResponse ErrorResponse(const Status& st) {
  json j{{"error", CodeName(st.code())}, {"message", st.message()}};
  return JsonResponse(HttpStatusFor(st.code()), j.dump(-1, ' ', false, json::error_handler_t::replace));
}

Api::Api(MetadataStore* meta, BlockStore* blocks, Metrics* metrics)
    : meta_(meta), blocks_(blocks), metrics_(metrics), snapshots_(meta) {}

size_t Api::BodyLimitFor(const std::string& method, const std::string& path) {
  if (method == "POST" && path.ends_with("/blocks")) return kMaxUploadBody + 4096;
  if (method == "POST" && path.ends_with("/commit")) return kMaxCommitBody;
  return 1 << 20;
}

Result<Api::Caller> Api::Authenticate(const HttpRequest& req, const std::string& project) {
  const std::string* auth = req.Header("authorization");
  if (!auth) return Status::Unauthenticated("missing Authorization: Bearer <token> header");
  std::string_view v(*auth);
  if (v.substr(0, 7) != "Bearer " || v.size() <= 7 || v.size() > 512)
    return Status::Unauthenticated("Authorization header must be \"Bearer <token>\"");
  auto info = meta_->LookupToken(HashToken(v.substr(7)));
  if (!info.ok()) {
    if (info.status().code() == Code::kUnauthenticated) return Status::Unauthenticated("unknown or revoked token");
    return info.status();
  }
  if (info->project != project)
    return Status::Denied("this token is for another project; ask for a token of project " + project);
  return Caller{std::move(*info)};
}

void Api::TouchDevice(const TokenInfo& token) {
  auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(touch_mu_);
    auto& last = touched_[{token.project_id, token.device}];
    if (last.time_since_epoch().count() != 0 && now - last < std::chrono::seconds(30)) return;
    last = now;
  }
  Status st = meta_->TouchDevice(token.project_id, token.device);
  if (!st.ok()) spdlog::warn("cannot record last-seen of device {}: {}", token.device, st.ToString());
}

HttpResponse Api::Handle(const HttpRequest& req, std::string* route) {
  *route = "other";
  if (req.bad_target) return ErrorResponse(Status::Invalid("request target is not valid percent-encoding"));
  if (req.path == "/healthz") {
    *route = "GET /healthz";
    return JsonResponse(200, "{\"status\":\"ok\"}");
  }
  if (req.path == "/metrics") {
    *route = "GET /metrics";
    HttpResponse r = JsonResponse(200, metrics_->Render());
    r.content_type = "text/plain; version=0.0.4";
    return r;
  }
  auto parts = SplitPath(req.path);
  if (parts.size() < 3 || parts[0] != "v1" || parts[1] != "projects")
    return ErrorResponse(Status::NotFound("no such endpoint: " + req.path));
  const std::string& project = parts[2];
  if (Status st = ValidateProjectName(project); !st.ok()) return ErrorResponse(st);
  std::vector<std::string> rest(parts.begin() + 3, parts.end());
  const std::string& m = req.method;

  // Route first (so an unknown path is 404 before auth), then authenticate.
  enum class R { kNone, kNodes, kNode, kChanges, kSnapshot, kManifest, kContent, kMissing, kBlocks, kCommit, kCheckpoint, kDevices, kEvents };
  R r = R::kNone;
  bool write = false;
  uint64_t id = 0;
  if (rest.size() == 1 && rest[0] == "nodes") { r = R::kNodes; *route = "GET /nodes"; }
  else if (rest.size() == 2 && rest[0] == "nodes") { r = R::kNode; *route = "GET /node"; }
  else if (rest.size() == 1 && rest[0] == "changes") { r = R::kChanges; *route = "GET /changes"; }
  else if (rest.size() == 1 && rest[0] == "snapshot") { r = R::kSnapshot; *route = "GET /snapshot"; }
  else if (rest.size() == 3 && rest[0] == "nodes" && rest[2] == "manifest") { r = R::kManifest; *route = "GET /manifest"; }
  else if (rest.size() == 3 && rest[0] == "nodes" && rest[2] == "content") { r = R::kContent; *route = "GET /content"; }
  else if (rest.size() == 2 && rest[0] == "blocks" && rest[1] == "missing") { r = R::kMissing; *route = "POST /blocks/missing"; }
  else if (rest.size() == 1 && rest[0] == "blocks") { r = R::kBlocks; *route = "POST /blocks"; write = true; }
  else if (rest.size() == 1 && rest[0] == "commit") { r = R::kCommit; *route = "POST /commit"; write = true; }
  else if (rest.size() == 3 && rest[0] == "devices" && rest[2] == "checkpoint") { r = R::kCheckpoint; *route = "PUT /checkpoint"; write = true; }
  else if (rest.size() == 1 && rest[0] == "devices") { r = R::kDevices; *route = "GET /devices"; }
  else if (rest.size() == 1 && rest[0] == "events") { r = R::kEvents; *route = "GET /events"; }
  if (r == R::kNone) return ErrorResponse(Status::NotFound("no such endpoint: " + req.path));

  const char* want = (r == R::kMissing || r == R::kBlocks || r == R::kCommit) ? "POST" : r == R::kCheckpoint ? "PUT" : "GET";
  if (m != want) {
    HttpResponse resp = ErrorResponse(Status::Invalid(m + " is not allowed on " + req.path + "; use " + want));
    resp.status = 405;
    resp.headers.emplace_back("Allow", want);
    return resp;
  }
  if (r == R::kNode || r == R::kManifest || r == R::kContent) {
    if (!ParseU64(rest[1], &id) || id == 0 || id > kMaxNodeId)
      return ErrorResponse(Status::Invalid("node id \"" + rest[1] + "\" is not a number in 1..2^63-1"));
  }
  auto caller = Authenticate(req, project);
  if (!caller.ok()) return ErrorResponse(caller.status());
  if (write && caller->token.read_only)
    return ErrorResponse(Status::Denied("this token is read-only; " + req.path + " needs a read-write token"));
  TouchDevice(caller->token);

  switch (r) {
    case R::kNodes: return ListNodes(req, *caller);
    case R::kNode: {
      if (Status st = CheckQueryKeys(req, {}); !st.ok()) return ErrorResponse(st);
      auto n = meta_->GetNode(caller->token.project_id, id);
      if (!n.ok()) return ErrorResponse(n.status());
      return JsonResponse(200, NodesJson("items", {*n}) + "}");
    }
    case R::kChanges: return Changes(req, *caller);
    case R::kSnapshot: return GetSnapshot(*caller);
    case R::kManifest: return GetManifest(req, *caller, id);
    case R::kContent: return GetContent(req, *caller, id);
    case R::kMissing: return BlocksMissing(req, *caller);
    case R::kBlocks: return UploadBlocks(req, *caller);
    case R::kCommit: return Commit(req, *caller);
    case R::kCheckpoint: {
      const std::string& device = rest[1];
      if (Status st = ValidateDeviceName(device); !st.ok()) return ErrorResponse(st);
      return PutCheckpoint(req, *caller, device);
    }
    case R::kDevices: return ListDevices(*caller);
    case R::kEvents: {
      HttpResponse resp = ErrorResponse(Status::Invalid("GET /events is a WebSocket: send Upgrade: websocket"));
      resp.status = 426;
      resp.headers.emplace_back("Upgrade", "websocket");
      return resp;
    }
    case R::kNone: break;
  }
  return ErrorResponse(Status::NotFound("no such endpoint"));
}

HttpResponse Api::ListNodes(const HttpRequest& req, const Caller& c) {
  if (Status st = CheckQueryKeys(req, {"parent", "after", "limit"}); !st.ok()) return ErrorResponse(st);
  uint64_t parent = kRootId;
  bool present;
  int limit;
  if (Status st = QueryU64(req, "parent", &parent, &present); !st.ok()) return ErrorResponse(st);
  if (Status st = QueryLimit(req, &limit); !st.ok()) return ErrorResponse(st);
  std::string after;
  if (auto it = req.query.find("after"); it != req.query.end()) {
    after = it->second;
    if (after.size() > kMaxNameBytes) return ErrorResponse(Status::Invalid("cursor \"after\" is longer than any name"));
  }
  auto page = meta_->ListChildren(c.token.project_id, parent, after, limit);
  if (!page.ok()) return ErrorResponse(page.status());
  std::string body = NodesJson("items", page->items);
  body += ",\"next\":";
  if (page->next) AppendJsonString(&body, *page->next);
  else body += "null";
  body += '}';
  return JsonResponse(200, std::move(body));
}

HttpResponse Api::Changes(const HttpRequest& req, const Caller& c) {
  if (Status st = CheckQueryKeys(req, {"since", "limit"}); !st.ok()) return ErrorResponse(st);
  uint64_t since = 0;
  bool present;
  int limit;
  if (Status st = QueryU64(req, "since", &since, &present); !st.ok()) return ErrorResponse(st);
  if (!present) return ErrorResponse(Status::Invalid("query parameter since=SEQ is required"));
  if (Status st = QueryLimit(req, &limit); !st.ok()) return ErrorResponse(st);
  auto page = meta_->Changes(c.token.project_id, since, limit);
  if (!page.ok()) return ErrorResponse(page.status());
  if (since > page->head)
    return ErrorResponse(Status::Invalid("since=" + std::to_string(since) + " is beyond the head " + std::to_string(page->head)));
  std::string body = NodesJson("items", page->items);
  body += ",\"head\":" + std::to_string(page->head);
  body += page->more ? ",\"more\":true}" : ",\"more\":false}";
  return JsonResponse(200, std::move(body));
}

HttpResponse Api::GetSnapshot(const Caller& c) {
  auto project = meta_->GetProject(c.token.project);
  if (!project.ok()) return ErrorResponse(project.status());
  auto snap = snapshots_.Get(c.token.project_id, project->seq);
  if (!snap.ok()) return ErrorResponse(snap.status());
  HttpResponse r;
  r.content_type = "application/vnd.tidefs.snapshot";
  r.headers.emplace_back("X-Tidefs-Seq", std::to_string((*snap)->seq));
  r.headers.emplace_back("X-Tidefs-Nodes", std::to_string((*snap)->nodes));
  // The body is shared with the cache: stream it without copying.
  auto keep = *snap;
  r.stream_length = keep->bytes.size();
  auto pos = std::make_shared<size_t>(0);
  r.stream = [keep, pos]() -> Result<std::string_view> {
    size_t n = std::min<size_t>(keep->bytes.size() - *pos, 1 << 20);
    std::string_view piece(keep->bytes.data() + *pos, n);
    *pos += n;
    return piece;
  };
  return r;
}

HttpResponse Api::GetManifest(const HttpRequest& req, const Caller& c, uint64_t id) {
  if (Status st = CheckQueryKeys(req, {"version"}); !st.ok()) return ErrorResponse(st);
  uint64_t version = 0, got = 0;
  bool present;
  if (Status st = QueryU64(req, "version", &version, &present); !st.ok()) return ErrorResponse(st);
  if (present && version == 0) return ErrorResponse(Status::Invalid("version must be at least 1"));
  auto m = meta_->GetManifest(c.token.project_id, id, version, &got);
  if (!m.ok()) return ErrorResponse(m.status());
  HttpResponse r;
  r.content_type = "application/vnd.tidefs.manifest";
  r.headers.emplace_back("X-Tidefs-Version", std::to_string(got));
  r.body = EncodeManifest(*m);
  return r;
}

HttpResponse Api::GetContent(const HttpRequest& req, const Caller& c, uint64_t id) {
  if (Status st = CheckQueryKeys(req, {"version"}); !st.ok()) return ErrorResponse(st);
  uint64_t version = 0, got = 0;
  bool present;
  if (Status st = QueryU64(req, "version", &version, &present); !st.ok()) return ErrorResponse(st);
  if (present && version == 0) return ErrorResponse(Status::Invalid("version must be at least 1"));
  auto m = meta_->GetManifest(c.token.project_id, id, version, &got);
  if (!m.ok()) return ErrorResponse(m.status());
  const uint64_t size = m->size;
  const std::string etag = "\"" + std::to_string(id) + "." + std::to_string(got) + "\"";

  HttpResponse r;
  r.content_type = "application/octet-stream";
  r.headers.emplace_back("Accept-Ranges", "bytes");
  r.headers.emplace_back("ETag", etag);
  r.headers.emplace_back("X-Tidefs-Version", std::to_string(got));
  if (req.Header("x-tidefs-want-manifest") && m->blocks.size() <= kMaxInlineManifestBlocks)
    r.headers.emplace_back(kManifestHeader, EncodeManifestText(*m));
  ByteRange range{0, size == 0 ? 0 : size - 1};
  bool partial = false;
  if (const std::string* h = req.Header("range")) {
    const std::string* if_range = req.Header("if-range");
    if (!if_range || *if_range == etag) {
      switch (ParseRange(*h, size, &range)) {
        case RangeResult::kNone: range = {0, size == 0 ? 0 : size - 1}; break;
        case RangeResult::kSatisfiable: partial = true; break;
        case RangeResult::kUnsatisfiable: {
          HttpResponse e = ErrorResponse(Status(Code::kRangeNotSatisfiable, "range " + *h + " is outside the file's " + std::to_string(size) + " bytes"));
          e.headers.emplace_back("Content-Range", "bytes */" + std::to_string(size));
          return e;
        }
      }
    }
  }
  if (size == 0) return r;
  if (partial) {
    r.status = 206;
    r.headers.emplace_back("Content-Range", "bytes " + std::to_string(range.first) + "-" + std::to_string(range.last) + "/" + std::to_string(size));
  }
  uint64_t first_block = range.first / kBlockSize, last_block = range.last / kBlockSize;
  std::vector<Hash128> hashes(m->blocks.begin() + first_block, m->blocks.begin() + last_block + 1);
  auto locs = meta_->LocateBlocks(c.token.project_id, hashes);
  if (!locs.ok()) return ErrorResponse(locs.status());

  // About 1 MiB per piece, read straight into a buffer the response holds
  // (from a pool: a buffer made afresh per response was fresh memory to
  // fault in, 2,600 faults per GiB sent; core/memory.h says why that costs).
  constexpr size_t kPieceBlocks = 16;
  static constexpr size_t kPrefetchBlocks = 128;  // 8 MiB
  struct State {
    std::vector<Hash128> hashes;
    std::vector<BlockLocation> locs;
    size_t next = 0;
    size_t prefetched = 0;  // blocks before this were asked for (Prefetch)
    uint64_t pos = 0;       // absolute offset of the next byte to send
    uint64_t last = 0;      // inclusive
    uint64_t first_block = 0;
    BigBuffer buf;
    BlockStore* store = nullptr;
    bool drop_behind = false;
    bool direct = false;  // cold bytes read past the page cache (ReadRunDirect), while that works
    // Keeps kPrefetchBlocks to twice that asked for ahead of `next`.
    void AskAhead() {
      if (direct || prefetched >= locs.size() || prefetched - next >= kPrefetchBlocks) return;
      const size_t n = std::min(next + 2 * kPrefetchBlocks, locs.size()) - prefetched;
      store->Prefetch(std::span<const BlockLocation>(locs).subspan(prefetched, n));
      prefetched += n;
    }
    // A response cut short (the client went): what was asked for and not
    // sent leaves too, or the next download would take it for hot bytes.
    ~State() {
      if (drop_behind && prefetched > next) store->Release(std::span<const BlockLocation>(locs).subspan(next, prefetched - next));
      piece_pool.Give(std::move(buf));
    }
  };
  // Chunk-sized ranges are the common case; a whole large file streams
  // with its blocks asked for 8 to 16 MiB ahead.
  // Cold bytes, streamed to a client that caches them, leave the page
  // cache once sent; bytes read lately (other devices fetching the same
  // file) stay for the next reader.
  // The packs have no read-ahead of the kernel's (PackBlockStore): the
  // response asks for its blocks itself, kPrefetchBlocks ahead of the
  // piece it reads.
  auto st = std::make_shared<State>();
  st->drop_behind = !locs->empty() && !blocks_->IsCached(locs->front());  // (before any Prefetch)
  st->hashes = std::move(hashes);
  st->locs = std::move(*locs);
  st->pos = range.first;
  st->last = range.last;
  st->first_block = first_block;
  st->buf = piece_pool.Take(kPieceBlocks * kBlockSize + 8192);  // (+ room to align a direct read)
  st->store = blocks_;
  st->direct = st->drop_behind;
  st->AskAhead();
  r.stream_length = range.length();
  Metrics* metrics = metrics_;
  r.stream = [st, metrics]() -> Result<std::string_view> {
    BlockStore* const store = st->store;
    char* const out = st->buf.data();
    size_t used = 0;
    const size_t piece_first = st->next;
    if (st->direct) {
      // Cold: whole blocks of the piece straight from the disk into the
      // piece buffer, no page cache (fresh pages to fill, then to drop).
      size_t n = 0;
      uint64_t bytes = 0;
      while (n < kPieceBlocks && st->next + n < st->locs.size()) {
        const uint64_t block_start = (st->first_block + st->next + n) * kBlockSize;
        const BlockLocation& loc = st->locs[st->next + n];
        if (st->pos + bytes != block_start || block_start + loc.raw_length - 1 > st->last) break;  // not whole
        bytes += loc.raw_length;
        ++n;
      }
      if (n > 0) {
        ASSIGN_OR_RETURN(auto run, store->ReadRunDirect(std::span<const BlockLocation>(st->locs).subspan(st->next, n),
                                                        std::span<const Hash128>(st->hashes).subspan(st->next, n),
                                                        st->buf.data(), st->buf.size()));
        if (run) {
          st->next += n;
          st->pos += run->size();
          metrics->AddContentBytes(run->size());
          return *run;
        }
      }
      st->direct = false;  // this way no more: one by one, through the page cache
      st->prefetched = st->next;
    }
    st->AskAhead();
    for (size_t k = 0; k < kPieceBlocks && st->next < st->locs.size(); ++k, ++st->next) {
      const BlockLocation& loc = st->locs[st->next];
      uint64_t block_start = (st->first_block + st->next) * kBlockSize;
      uint64_t from = st->pos - block_start;
      uint64_t to = std::min<uint64_t>(loc.raw_length, st->last - block_start + 1);
      if (from >= to || to > loc.raw_length) return Status::Corruption("block shorter than its manifest says");
      if (from == 0 && to == loc.raw_length) {
        RETURN_IF_ERROR(store->ReadInto(loc, st->hashes[st->next], out + used));  // a whole block, in place
      } else {
        ASSIGN_OR_RETURN(std::string block, store->Read(loc, st->hashes[st->next]));
        std::memcpy(out + used, block.data() + from, to - from);
      }
      used += to - from;
      st->pos += to - from;
      metrics->AddContentBytes(to - from);
    }
    if (st->drop_behind)
      store->Release(std::span<const BlockLocation>(st->locs).subspan(piece_first, st->next - piece_first));
    return std::string_view(out, used);
  };
  return r;
}

HttpResponse Api::BlocksMissing(const HttpRequest& req, const Caller& c) {
  json doc = json::parse(req.body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || !doc.contains("hashes") || !doc["hashes"].is_array() || doc.size() != 1)
    return ErrorResponse(Status::Invalid("body must be {\"hashes\": [\"<32 hex digits>\", ...]}"));
  const json& arr = doc["hashes"];
  if (arr.size() > kMaxMissingQuery) return ErrorResponse(Status::TooLarge("at most 20000 hashes per request"));
  std::vector<Hash128> hashes;
  hashes.reserve(arr.size());
  for (const auto& h : arr) {
    std::optional<Hash128> parsed;
    if (h.is_string()) parsed = Hash128::FromHex(h.get_ref<const std::string&>());
    if (!parsed) return ErrorResponse(Status::Invalid("hash " + h.dump() + " is not 32 hex digits"));
    hashes.push_back(*parsed);
  }
  Status st;
  auto missing = MissingRefreshed(c.token.project_id, hashes, &st);
  if (!st.ok()) return ErrorResponse(st);
  std::string body = "{\"missing\":[";
  for (size_t i = 0; i < missing.size(); ++i) {
    if (i) body += ',';
    body += '"' + missing[i].Hex() + '"';
  }
  body += "]}";
  return JsonResponse(200, std::move(body));
}

HttpResponse Api::UploadBlocks(const HttpRequest& req, const Caller& c) {
  if (req.body.size() > kMaxUploadBody)
    return ErrorResponse(Status::TooLarge("upload body is over 8 MiB; send at most 4 MiB of blocks per request"));
  auto frames = DecodeBlockFrames(req.body);
  if (!frames.ok()) return ErrorResponse(frames.status());
  if (Status st = VerifyBlockFrames(*frames); !st.ok()) return ErrorResponse(st);
  std::vector<Hash128> hashes;
  for (const auto& f : *frames) hashes.push_back(f.hash);
  Status st;
  auto missing = MissingRefreshed(c.token.project_id, hashes, &st);
  if (!st.ok()) return ErrorResponse(st);
  std::vector<std::string_view> to_store;
  std::vector<Hash128> to_index;
  std::unordered_set<Hash128, Hash128Hasher> want(missing.begin(), missing.end());
  uint64_t bytes = 0;
  for (const auto& f : *frames) {
    if (want.erase(f.hash)) {  // once per hash, even if sent twice
      to_store.push_back(f.data);
      to_index.push_back(f.hash);
      bytes += f.data.size();
    }
  }
  if (!to_store.empty()) {
    auto locs = blocks_->Append(to_store);
    if (!locs.ok()) {
      spdlog::error("storing {} blocks failed: {}", to_store.size(), locs.status().ToString());
      return ErrorResponse(locs.status());
    }
    std::vector<std::pair<Hash128, BlockLocation>> index;
    for (size_t i = 0; i < to_index.size(); ++i) index.emplace_back(to_index[i], (*locs)[i]);
    AddUnindexed(c.token.project_id, index);
    metrics_->AddBlocksStored(to_store.size(), bytes);
  }
  return JsonResponse(200, "{\"stored\":" + std::to_string(to_store.size()) + ",\"present\":" +
                               std::to_string(frames->size() - to_store.size()) + "}");
}

namespace {
constexpr size_t kIndexEvery = 4096;  // blocks stored and not indexed (256 MiB) before a Sync indexes them
}  // namespace

std::vector<Hash128> Api::MissingRefreshed(int64_t project, const std::vector<Hash128>& hashes, Status* st) {
  // Past half the grace (not each time: asking is a read, refreshing a write).
  const int64_t grace = grace_ns_.load();
  std::vector<Hash128> stale;
  auto missing = meta_->MissingBlocks(project, hashes, &stale, grace / 2);
  if (!missing.ok()) {
    *st = missing.status();
    return {};
  }
  if (!stale.empty()) *st = meta_->RefreshBlocks(project, stale);
  DropUnindexed(project, &*missing);
  return std::move(*missing);
}

Result<uint64_t> Api::CollectBlocks() {
  constexpr size_t kRound = 4096;
  const int64_t grace = grace_ns_.load();
  uint64_t blocks = 0, bytes = 0;
  for (;;) {
    ASSIGN_OR_RETURN(std::vector<BlockLocation> locs, meta_->TakeUnreferencedBlocks(grace, kRound));
    // (Unindexed first: a crash now leaves bytes no row names, never a row
    // naming freed bytes.)
    if (Status st = blocks_->Free(locs); !st.ok())
      spdlog::warn("freeing {} collected blocks: {} (their space stays taken)", locs.size(), st.ToString());
    blocks += locs.size();
    for (const auto& l : locs) bytes += l.stored_length;
    if (locs.size() < kRound) break;
  }
  if (blocks > 0) {
    spdlog::info("collected {} blocks ({} bytes stored) that no commit named within {} s", blocks, bytes,
                 grace / 1'000'000'000);
    metrics_->AddBlocksCollected(blocks, bytes);
  }
  return blocks;
}

void Api::AddUnindexed(int64_t project, const std::vector<std::pair<Hash128, BlockLocation>>& blocks) {
  bool many;
  {
    std::lock_guard lock(unindexed_mu_);
    auto& here = unindexed_[project];
    for (const auto& [h, loc] : blocks) n_unindexed_ += here.emplace(h, loc).second;
    many = n_unindexed_ >= kIndexEvery;
  }
  // (A long upload with no commit: its blocks are indexed as it goes.)
  if (many)
    if (Status st = IndexStoredBlocks(); !st.ok()) spdlog::warn("indexing stored blocks failed: {}", st.ToString());
}

void Api::DropUnindexed(int64_t project, std::vector<Hash128>* missing) {
  std::lock_guard lock(unindexed_mu_);
  auto it = unindexed_.find(project);
  if (it == unindexed_.end()) return;
  std::erase_if(*missing, [&](const Hash128& h) { return it->second.count(h) > 0; });
}

Status Api::IndexStoredBlocks() {
  std::lock_guard index_lock(index_mu_);
  // Copied, not taken: they count as present until indexed.
  std::unordered_map<int64_t, std::vector<std::pair<Hash128, BlockLocation>>> todo;
  {
    std::lock_guard lock(unindexed_mu_);
    for (const auto& [project, blocks] : unindexed_) todo[project].assign(blocks.begin(), blocks.end());
  }
  if (todo.empty()) return Status::Ok();
  // Their bytes were written before they were listed: this covers them.
  Status st = blocks_->Sync();
  for (const auto& [project, blocks] : todo) {
    if (st.ok()) st = meta_->AddBlocks(project, blocks);
    if (!st.ok()) break;
    std::lock_guard lock(unindexed_mu_);
    auto& here = unindexed_[project];
    for (const auto& b : blocks) n_unindexed_ -= here.erase(b.first);
    if (here.empty()) unindexed_.erase(project);
  }
  return st;
}

HttpResponse Api::Commit(const HttpRequest& req, const Caller& c) {
  auto ops = DecodeCommit(req.body);
  if (!ops.ok()) return ErrorResponse(ops.status());
  // The blocks it names that were stored since the last commit.
  if (Status st = IndexStoredBlocks(); !st.ok()) return ErrorResponse(st);
  BlockStore* blocks = blocks_;
  // Announced in seq order, under the store's commit lock: the event names
  // the seq range it covers and, when small, the records themselves.
  auto announce = [this, &c](const CommitResult& r) {
    std::string ev = "{\"type\":\"commit\",\"seq\":" + std::to_string(r.head) + ",\"prev\":" +
                     std::to_string(r.prev_head) + ",\"device\":" + json(c.token.device).dump();
    if (r.records.size() <= kMaxEventRecords) {
      std::string recs = NodesJson("records", r.records);
      if (recs.size() <= kMaxEventRecordBytes) ev += "," + recs.substr(1, recs.size() - 1);
    }
    ev += "}";
    events_.Publish(c.token.project_id, std::make_shared<const std::string>(std::move(ev)));
  };
  std::string key;
  if (const std::string* k = req.Header("idempotency-key")) {
    bool ok = !k->empty() && k->size() <= 128;
    for (char ch : *k) ok = ok && (std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_');
    if (!ok) return ErrorResponse(Status::Invalid("Idempotency-Key must be 1..128 of [A-Za-z0-9_-]"));
    key = c.token.device + "/" + *k;
  }
  // With no ops a commit only asks for the answer of the one sent under its
  // key (level 4): a client whose batch's ops all went since its answer
  // was lost still learns what that commit made.
  if (ops->empty() && key.empty())
    return ErrorResponse(Status::Invalid("commit has no ops (an empty commit needs an Idempotency-Key: it only "
                                         "asks for the answer of the commit sent under that key)"));
  auto result = meta_->Commit(c.token.project_id, *ops, [blocks] { return blocks->Sync(); }, announce, key, c.token.device);
  if (!result.ok()) return ErrorResponse(result.status());
  if (!result->refused && !result->replayed && !ops->empty()) snapshots_.Prewarm(c.token.project_id, result->head);
  if (result->replayed) spdlog::info("commit by {} replayed from its idempotency key (its first answer was lost)", c.token.device);
  if (result->refused) {
    const CommitRefusal& f = *result->refused;
    json j{{"error", CodeName(f.code)}, {"reason", f.reason}, {"message", f.message}, {"op", f.op_index}};
    if (f.node) j["node"] = f.node;
    if (f.current_version) j["current_version"] = f.current_version;
    if (!f.missing.empty()) {
      json miss = json::array();
      for (const auto& h : f.missing) miss.push_back(h.Hex());
      j["missing"] = std::move(miss);
    }
    return JsonResponse(HttpStatusFor(f.code), j.dump(-1, ' ', false, json::error_handler_t::replace));
  }
  std::string body = NodesJson("items", result->records);
  body += ",\"head\":" + std::to_string(result->head);
  if (result->replayed) body += ",\"replayed\":true";  // the answer of the commit first sent with this key
  body += "}";
  return JsonResponse(200, std::move(body));
}

HttpResponse Api::PutCheckpoint(const HttpRequest& req, const Caller& c, const std::string& device) {
  if (device != c.token.device)
    return ErrorResponse(Status::Denied("this token belongs to device " + c.token.device + "; it cannot move the checkpoint of " + device));
  json doc = json::parse(req.body, nullptr, false);
  if (doc.is_discarded() || !doc.is_object() || doc.size() != 1 || !doc.contains("seq") || !doc["seq"].is_number_unsigned())
    return ErrorResponse(Status::Invalid("body must be {\"seq\": <non-negative integer>}"));
  uint64_t seq = doc["seq"].get<uint64_t>();
  if (Status st = meta_->SetCheckpoint(c.token.project_id, device, seq); !st.ok()) return ErrorResponse(st);
  return JsonResponse(200, "{\"device\":\"" + device + "\",\"checkpoint\":" + std::to_string(seq) + "}");
}

HttpResponse Api::ListDevices(const Caller& c) {
  auto devices = meta_->ListDevices(c.token.project_id);
  if (!devices.ok()) return ErrorResponse(devices.status());
  json items = json::array();
  for (const auto& d : *devices)
    items.push_back({{"name", d.name}, {"checkpoint", d.checkpoint}, {"last_seen_ns", d.last_seen_ns}, {"retired", d.retired}});
  // The caller's own token: a mount asks, to mount read-only when it must.
  json caller{{"device", c.token.device}, {"read_only", c.token.read_only}};
  // The level in the body too: it reaches a mount through proxies that drop headers.
  return JsonResponse(200, json{{"items", std::move(items)}, {"caller", std::move(caller)}, {"protocol", kProtocolLevel}}.dump());
}

}  // namespace tidefs

namespace tidefs {

bool Api::IsEventsPath(const std::string& path) {
  auto parts = SplitPath(path);
  return parts.size() == 4 && parts[0] == "v1" && parts[1] == "projects" && parts[3] == "events";
}

Result<Api::Subscription> Api::AuthorizeEvents(const HttpRequest& req, HttpResponse* refusal) {
  auto fail = [&](const Status& st) {
    *refusal = ErrorResponse(st);
    return st;
  };
  if (req.bad_target) return fail(Status::Invalid("request target is not valid percent-encoding"));
  auto parts = SplitPath(req.path);
  if (!IsEventsPath(req.path)) return fail(Status::NotFound("no such endpoint: " + req.path));
  if (Status st = ValidateProjectName(parts[2]); !st.ok()) return fail(st);
  if (req.method != "GET") return fail(Status::Invalid(req.method + " is not allowed on " + req.path + "; use GET"));
  if (!req.query.empty()) return fail(Status::Invalid("GET /events takes no query parameters"));
  auto caller = Authenticate(req, parts[2]);
  if (!caller.ok()) return fail(caller.status());
  TouchDevice(caller->token);
  auto project = meta_->GetProject(caller->token.project);
  if (!project.ok()) return fail(project.status());
  return Subscription{caller->token, project->seq};
}

std::string Api::HelloMessage(const Subscription& s) {
  return "{\"type\":\"hello\",\"head\":" + std::to_string(s.head) + ",\"device\":" + json(s.token.device).dump() +
         ",\"progress\":" + events_.ProgressJson(s.token.project_id) + "}";
}

Result<EventMessage> Api::OnClientMessage(const TokenInfo& token, std::string_view msg) {
  ASSIGN_OR_RETURN(std::vector<Transfer> transfers, DecodeProgressReport(msg));
  return events_.SetProgress(token.project_id, token.device, TransfersJson(transfers));
}

}  // namespace tidefs
