// The v1 API against the real server binary.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include <filesystem>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>

#include "core/sqlite.h"
#include "helpers.h"
#include "server/metadata_store.h"
#include "test_server.h"

namespace tidefs {
namespace {

class ServerApiTest : public ::testing::Test {
 protected:
  // The server started again with more flags; a client of it.
  ApiClient RestartWith(std::vector<std::string> args) {
    server_.Stop();
    server_.extra_args = std::move(args);
    server_.Start();
    return server_.Client(server_.rw_token);
  }
  TestServer server_;
  ApiClient c_ = server_.Client(server_.rw_token);
};

// POST /blocks of these blocks, framed; the answer's body.
std::string PostBlocks(ApiClient& c, std::initializer_list<const std::string*> blocks) {
  std::string body;
  for (const std::string* b : blocks) AppendBlockFrame(&body, HashBlock(*b), *b);
  auto r = c.Raw("POST", "/blocks", body);
  return r.ok() ? r->body : r.status().ToString();
}

TEST_F(ServerApiTest, HealthzAndMetrics) {
  auto h = c_.Raw("GET", "//healthz");
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(h->status, 200);
  ASSERT_TRUE(c_.ListNodes(kRootId).ok());
  auto m = c_.Raw("GET", "//metrics");
  ASSERT_TRUE(m.ok());
  EXPECT_NE(m->body.find("tidefs_http_requests_total{route=\"GET /nodes\",status=\"200\"}"), std::string::npos) << m->body;
  EXPECT_NE(m->body.find("tidefs_http_request_duration_seconds_bucket"), std::string::npos);
  EXPECT_NE(m->body.find("tidefs_blocks_stored_total"), std::string::npos);
}

TEST_F(ServerApiTest, EveryAnswerNamesTheProtocolLevel) {
  ApiClient fresh = server_.Client(server_.rw_token);
  EXPECT_EQ(fresh.server_protocol(), 0);  // nothing answered yet
  // A refusal names it too, but the client only believes a success.
  auto missing = fresh.Raw("GET", "/nodes/12345");
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->status, 404);
  ASSERT_NE(missing->Header("x-tidefs-protocol"), nullptr);
  EXPECT_EQ(*missing->Header("x-tidefs-protocol"), std::to_string(kProtocolLevel));
  EXPECT_EQ(fresh.server_protocol(), 0);
  ASSERT_TRUE(fresh.WhoAmI().ok());
  EXPECT_EQ(fresh.server_protocol(), kProtocolLevel);
  // In the /devices body too (proxies may drop headers).
  auto devices = fresh.Raw("GET", "/devices");
  ASSERT_TRUE(devices.ok());
  EXPECT_EQ(nlohmann::json::parse(devices->body).value("protocol", 0), kProtocolLevel) << devices->body;
  auto health = fresh.Raw("GET", "//healthz");
  ASSERT_TRUE(health.ok());
  EXPECT_NE(health->Header("x-tidefs-protocol"), nullptr);
}

TEST_F(ServerApiTest, AuthRefusesMissingUnknownForeignAndReadOnlyWrites) {
  ApiClient none = server_.Client("");
  EXPECT_EQ(none.Raw("GET", "/nodes")->status, 401);
  ApiClient bogus = server_.Client("tdf_nope");
  EXPECT_EQ(bogus.Raw("GET", "/nodes")->status, 401);
  server_.Admin("project create other");
  std::string other = server_.NewToken("other", "laptop");
  ApiClient foreign = server_.Client(other, "demo");
  EXPECT_EQ(foreign.Raw("GET", "/nodes")->status, 403);
  ApiClient ro = server_.Client(server_.ro_token);
  EXPECT_EQ(ro.Raw("GET", "/nodes")->status, 200);
  uint64_t head = Head(c_);
  auto r = ro.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "x")}));
  EXPECT_EQ(r->status, 403);
  EXPECT_EQ(ro.Raw("POST", "/blocks", "")->status, 403);
  EXPECT_EQ(Head(c_), head);
  // A revoked token stops working at once.
  std::string t = server_.NewToken("demo", "tablet");
  ApiClient tablet = server_.Client(t);
  EXPECT_EQ(tablet.Raw("GET", "/nodes")->status, 200);
  server_.Admin("token revoke --project demo --device tablet");
  EXPECT_EQ(tablet.Raw("GET", "/nodes")->status, 401);
}

TEST_F(ServerApiTest, CreateListAndReadBack) {
  CommitOp dir = MkdirOp(kRootId, "docs");
  std::string small = "hello tidefs\n";
  std::string big = RandomBytes(9 * 1024 * 1024 + 123, 7);
  std::string exact = RandomBytes(4 * 1024 * 1024, 8);
  std::vector<CommitOp> ops{dir, CreateOp(c_, dir.id, "a.txt", small), CreateOp(c_, dir.id, "big.bin", big),
                            CreateOp(c_, dir.id, "empty", ""), CreateOp(c_, dir.id, "exact4m", exact)};
  CommitOp link;
  link.type = OpType::kSymlink;
  link.id = NewNodeId();
  link.parent = dir.id;
  link.name = "link";
  link.target = "a.txt";
  ops.push_back(link);
  CommitReply reply = MustCommit(c_, ops);
  EXPECT_EQ(reply.items.size(), ops.size());

  auto list = c_.ListAll(dir.id);
  ASSERT_TRUE(list.ok());
  std::vector<std::string> names;
  for (auto& n : *list) names.push_back(n.name);
  EXPECT_EQ(names, (std::vector<std::string>{"a.txt", "big.bin", "empty", "exact4m", "link"}));
  EXPECT_EQ((*list)[4].target, "a.txt");
  EXPECT_EQ((*list)[1].size, big.size());

  auto a = c_.GetContent(ops[1].id, 0, 0, small.size() - 1);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, small);
  // A 4 MiB chunk in the middle of the big file, crossing block boundaries.
  auto chunk = c_.GetContent(ops[2].id, 0, 100, 100 + (4 << 20) - 1);
  ASSERT_TRUE(chunk.ok());
  EXPECT_EQ(*chunk, big.substr(100, 4 << 20));
  auto whole = c_.Raw("GET", "/nodes/" + std::to_string(ops[2].id) + "/content");
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(whole->status, 200);
  EXPECT_EQ(whole->body, big);
  auto ex = c_.Raw("GET", "/nodes/" + std::to_string(ops[4].id) + "/content");
  EXPECT_EQ(ex->body, exact);
  auto empty = c_.Raw("GET", "/nodes/" + std::to_string(ops[3].id) + "/content");
  EXPECT_EQ(empty->status, 200);
  EXPECT_EQ(empty->body, "");

  auto m = c_.GetManifest(ops[2].id);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->size, big.size());
  EXPECT_EQ(m->blocks, ops[2].blocks);

  // Asked for, a content answer carries the manifest of a file of up to
  // 64 blocks (protocol 3), whatever range it sends; not otherwise.
  const std::string want = std::string(kWantManifestHeader) + ": 1";
  for (size_t i : {size_t{1}, size_t{4}}) {  // (4 MiB: 64 blocks, the most)
    auto r = c_.Raw("GET", "/nodes/" + std::to_string(ops[i].id) + "/content", "", {want, "Range: bytes=0-0"});
    ASSERT_TRUE(r.ok());
    const std::string* h = r->Header("x-tidefs-manifest");
    ASSERT_NE(h, nullptr) << i;
    auto got = DecodeManifestText(*h);
    ASSERT_TRUE(got.ok()) << *h;
    auto alone = c_.GetManifest(ops[i].id);
    ASSERT_TRUE(alone.ok());
    EXPECT_EQ(*got, *alone) << i;
  }
  EXPECT_EQ(c_.Raw("GET", "/nodes/" + std::to_string(ops[2].id) + "/content", "", {want, "Range: bytes=0-9"})
                ->Header("x-tidefs-manifest"),
            nullptr);  // 145 blocks
  EXPECT_EQ(c_.Raw("GET", "/nodes/" + std::to_string(ops[1].id) + "/content")->Header("x-tidefs-manifest"), nullptr);
  std::string with_bytes(small.size(), '\0');
  size_t received = 0;
  std::optional<Manifest> carried;
  ASSERT_TRUE(c_.ReadContent(ops[1].id, 0, 0, small.size() - 1, with_bytes.data(), &received, &carried).ok());
  EXPECT_EQ(with_bytes, small);
  ASSERT_TRUE(carried.has_value());
  EXPECT_EQ(carried->blocks, ops[1].blocks);

  // One node by id, as listed; a deleted one as its tombstone.
  auto one = c_.GetNode(ops[1].id);
  ASSERT_TRUE(one.ok()) << one.status().ToString();
  EXPECT_EQ(one->parent, dir.id);
  EXPECT_EQ(one->name, "a.txt");
  EXPECT_EQ(one->size, small.size());
  EXPECT_FALSE(one->deleted);
  CommitOp del;
  del.type = OpType::kDelete;
  del.id = ops[3].id;
  del.has_base = true;
  auto before = c_.GetNode(ops[3].id);
  ASSERT_TRUE(before.ok());
  del.base = before->version;
  MustCommit(c_, {del});
  auto gone = c_.GetNode(ops[3].id);
  ASSERT_TRUE(gone.ok()) << gone.status().ToString();
  EXPECT_TRUE(gone->deleted);
}

TEST_F(ServerApiTest, RangeRequestsFollowRfc9110) {
  std::string data = RandomBytes(300000, 3);
  CommitOp f = CreateOp(c_, kRootId, "r.bin", data);
  MustCommit(c_, {f});
  std::string path = "/nodes/" + std::to_string(f.id) + "/content";
  auto r = c_.Raw("GET", path, "", {"Range: bytes=70000-70009"});
  EXPECT_EQ(r->status, 206);
  EXPECT_EQ(r->body, data.substr(70000, 10));
  EXPECT_EQ(*r->Header("content-range"), "bytes 70000-70009/300000");
  std::string etag = *r->Header("etag");
  auto suffix = c_.Raw("GET", path, "", {"Range: bytes=-5"});
  EXPECT_EQ(suffix->body, data.substr(data.size() - 5));
  auto beyond = c_.Raw("GET", path, "", {"Range: bytes=300000-"});
  EXPECT_EQ(beyond->status, 416);
  EXPECT_EQ(*beyond->Header("content-range"), "bytes */300000");
  // If-Range with the current ETag keeps the range; a stale one gets it all.
  auto same = c_.Raw("GET", path, "", {"Range: bytes=0-1", "If-Range: " + etag});
  EXPECT_EQ(same->status, 206);
  auto stale = c_.Raw("GET", path, "", {"Range: bytes=0-1", "If-Range: \"1.1\""});
  EXPECT_EQ(stale->status, 200);
  EXPECT_EQ(stale->body.size(), data.size());
}

TEST_F(ServerApiTest, OldVersionsStayReadableByVersion) {
  CommitOp f = CreateOp(c_, kRootId, "v.txt", "version one");
  MustCommit(c_, {f});
  CommitOp w;
  w.type = OpType::kWrite;
  w.id = f.id;
  w.has_base = true;
  w.base = 1;
  UploadContent(c_, "version two, longer", &w);
  CommitReply r = MustCommit(c_, {w});
  ASSERT_EQ(r.items.size(), 1u);
  EXPECT_EQ(r.items[0].version, 2u);
  auto v1 = c_.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content?version=1");
  EXPECT_EQ(v1->body, "version one");
  auto v2 = c_.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content");
  EXPECT_EQ(v2->body, "version two, longer");
  EXPECT_EQ(c_.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content?version=9")->status, 404);
}

TEST_F(ServerApiTest, StaleBaseIsA409NamingTheNode) {
  CommitOp f = CreateOp(c_, kRootId, "s.txt", "one");
  MustCommit(c_, {f});
  CommitOp w;
  w.type = OpType::kWrite;
  w.id = f.id;
  w.has_base = true;
  w.base = 1;
  UploadContent(c_, "two", &w);
  MustCommit(c_, {w});
  uint64_t head = Head(c_);
  UploadContent(c_, "three", &w);  // still based on version 1
  auto r = c_.Commit({w});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->refused);
  EXPECT_EQ(r->http_status, 409);
  EXPECT_EQ(r->reason, "stale_base");
  EXPECT_EQ(r->node, f.id);
  EXPECT_EQ(r->current_version, 2u);
  EXPECT_EQ(Head(c_), head);
  EXPECT_EQ(*c_.GetContent(f.id, 0, 0, 2), "two");
}

TEST_F(ServerApiTest, CommitIsAtomic) {
  CommitOp a = MkdirOp(kRootId, "a");
  MustCommit(c_, {a});
  uint64_t head = Head(c_);
  // The second op clashes with "a": neither op may land.
  auto r = c_.Commit({MkdirOp(kRootId, "b"), MkdirOp(kRootId, "a")});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->refused);
  EXPECT_EQ(r->reason, "name_taken");
  EXPECT_EQ(r->op, 1u);
  EXPECT_EQ(Head(c_), head);
  auto list = c_.ListAll(kRootId);
  EXPECT_EQ(list->size(), 1u);
  // Reusing an id is refused too.
  auto dup = c_.Commit({MkdirOp(kRootId, "c", a.id)});
  EXPECT_EQ(dup->reason, "id_taken");
}

// An edit made against a delete it had not seen keeps its file: a create
// naming the deleted file's id brings it back, above its tombstone's
// version, and its old versions stay. Only a deleted file comes back.
TEST_F(ServerApiTest, ACreateNamingADeletedFileBringsItBack) {
  CommitOp d = MkdirOp(kRootId, "d");
  CommitOp f = CreateOp(c_, d.id, "f.txt", "base");
  MustCommit(c_, {d, f});
  CommitOp del;
  del.type = OpType::kDelete;
  del.id = f.id;
  del.has_base = true;
  del.base = 1;
  CommitOp deldir;
  deldir.type = OpType::kDelete;
  deldir.id = d.id;
  deldir.has_base = true;
  deldir.base = 1;
  MustCommit(c_, {del, deldir});
  const uint64_t head = Head(c_);
  // Into the deleted directory: refused, naming the directory.
  CommitOp back = CreateOp(c_, d.id, "f.txt", "edited");
  back.id = f.id;
  auto r = c_.Commit({back});
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->reason, "deleted");
  EXPECT_EQ(r->node, d.id);
  EXPECT_EQ(Head(c_), head);
  // A directory is not brought back this way.
  auto dir = c_.Commit({MkdirOp(kRootId, "d2", d.id)});
  ASSERT_TRUE(dir.ok()) << dir.status().ToString();
  EXPECT_EQ(dir->reason, "id_taken");
  back.parent = kRootId;
  CommitReply ok = MustCommit(c_, {back});
  ASSERT_EQ(ok.items.size(), 1u);
  EXPECT_EQ(ok.items[0].id, f.id);
  EXPECT_FALSE(ok.items[0].deleted);
  EXPECT_EQ(ok.items[0].version, 3u);  // 1, its delete 2, back 3
  EXPECT_EQ(*c_.GetContent(f.id, 0, 0, 5), "edited");
  EXPECT_EQ(c_.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content?version=1")->body, "base");
  auto list = c_.ListAll(kRootId);
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, "f.txt");
  // A live file's id stays taken.
  CommitOp again = CreateOp(c_, kRootId, "g.txt", "g");
  again.id = f.id;
  auto taken = c_.Commit({again});
  ASSERT_TRUE(taken.ok()) << taken.status().ToString();
  EXPECT_EQ(taken->reason, "id_taken");
}

TEST_F(ServerApiTest, RenameRules) {
  CommitOp top = MkdirOp(kRootId, "top");
  CommitOp sub = MkdirOp(top.id, "sub");
  CommitOp f = CreateOp(c_, kRootId, "f", "f");
  CommitOp g = CreateOp(c_, kRootId, "g", "g");
  MustCommit(c_, {top, sub, f, g});
  CommitOp mv;
  mv.type = OpType::kRename;
  mv.id = top.id;
  mv.parent = sub.id;
  mv.name = "loop";
  auto r = c_.Commit({mv});
  EXPECT_TRUE(r->refused);
  EXPECT_EQ(r->reason, "into_own_subtree");
  EXPECT_EQ(r->http_status, 400);
  // Onto an existing name: refused unless replace.
  mv.id = f.id;
  mv.parent = kRootId;
  mv.name = "g";
  EXPECT_EQ(c_.Commit({mv})->reason, "name_taken");
  mv.replace = true;
  MustCommit(c_, {mv});
  auto list = c_.ListAll(kRootId);
  std::set<std::string> names;
  for (auto& n : *list) names.insert(n.name);
  EXPECT_EQ(names, (std::set<std::string>{"g", "top"}));
  EXPECT_EQ(*c_.GetContent(f.id, 0, 0, 0), "f");
  // Deleting a non-empty directory is refused.
  CommitOp del;
  del.type = OpType::kDelete;
  del.id = top.id;
  del.has_base = true;
  del.base = 1;
  auto d = c_.Commit({del});
  EXPECT_EQ(d->reason, "not_empty");
  EXPECT_EQ(d->http_status, 409);
}

// A rename of `id` to parent/name, swapping places with `other`.
CommitOp SwapOp(uint64_t id, uint64_t parent, const std::string& name, uint64_t other) {
  CommitOp x;
  x.type = OpType::kRename;
  x.id = id;
  x.parent = parent;
  x.name = name;
  x.exchange = other;
  return x;
}

TEST_F(ServerApiTest, ARenameWithExchangeSwapsTwoNodes) {
  CommitOp d = MkdirOp(kRootId, "d");
  CommitOp sub = MkdirOp(d.id, "sub");
  CommitOp f = CreateOp(c_, kRootId, "f", "f bytes");
  CommitOp g = CreateOp(c_, d.id, "g", "g bytes");
  CommitOp h = CreateOp(c_, sub.id, "h", "h bytes");
  MustCommit(c_, {d, sub, f, g, h});
  auto at = [&](uint64_t id) {
    auto n = c_.GetNode(id);
    EXPECT_TRUE(n.ok()) << n.status().ToString();
    return n.ok() ? std::to_string(n->parent) + "/" + n->name : std::string("?");
  };
  // Refused, naming `node`, and nothing changed.
  auto refused = [&](const CommitOp& op, const std::string& reason, uint64_t node) {
    const uint64_t head = Head(c_);
    auto r = c_.Commit({op});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->reason, reason);
    EXPECT_EQ(r->node, node);
    EXPECT_EQ(Head(c_), head);
  };
  CommitOp x = SwapOp(f.id, d.id, "g", g.id);
  CommitReply ok = MustCommit(c_, {x});
  EXPECT_EQ(ok.items.size(), 2u);
  EXPECT_EQ(at(f.id), std::to_string(d.id) + "/g");
  EXPECT_EQ(at(g.id), "1/f");
  EXPECT_EQ(*c_.GetContent(f.id, 0, 0, 6), "f bytes");
  EXPECT_EQ(*c_.GetContent(g.id, 0, 0, 6), "g bytes");
  // Sent again (a journal replayed; another body than the first, so not
  // answered from the stored reply): the swap is done, nothing moves back.
  const uint64_t head = Head(c_);
  x.has_base = true;
  x.base = 1;
  MustCommit(c_, {x});
  EXPECT_EQ(at(f.id), std::to_string(d.id) + "/g");
  EXPECT_EQ(at(g.id), "1/f");
  EXPECT_EQ(Head(c_), head);
  // The place it goes to holds a third node.
  refused(SwapOp(g.id, sub.id, "h", f.id), "name_taken", h.id);
  // A directory swapped with something inside it, either way round.
  refused(SwapOp(d.id, sub.id, "h", h.id), "into_own_subtree", d.id);
  refused(SwapOp(h.id, kRootId, "d", d.id), "into_own_subtree", d.id);
  // The other node deleted.
  MustCommit(c_, {DeleteOp(h.id, 1)});
  refused(SwapOp(g.id, sub.id, "h", h.id), "deleted", h.id);
  EXPECT_EQ(at(g.id), "1/f");
}

TEST_F(ServerApiTest, PaginationIsStableWhileOthersChangeTheDirectory) {
  CommitOp dir = MkdirOp(kRootId, "many");
  std::vector<CommitOp> ops{dir};
  for (int i = 0; i < 1200; ++i) {
    char name[16];
    snprintf(name, sizeof name, "n%04d", i);
    ops.push_back(MkdirOp(dir.id, name));
  }
  MustCommit(c_, ops);
  auto p1 = c_.ListNodes(dir.id);
  ASSERT_TRUE(p1.ok());
  EXPECT_EQ(p1->items.size(), 500u);
  ASSERT_TRUE(p1->next);
  EXPECT_EQ(*p1->next, "n0499");
  // Others insert before and after the cursor and delete one ahead of it.
  CommitOp del;
  del.type = OpType::kDelete;
  del.id = ops[1 + 700].id;
  del.has_base = true;
  del.base = 1;
  MustCommit(c_, {MkdirOp(dir.id, "a-first"), MkdirOp(dir.id, "zz-last"), del});
  auto p2 = c_.ListNodes(dir.id, *p1->next);
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->items.front().name, "n0500");
  auto p3 = c_.ListNodes(dir.id, *p2->next);
  ASSERT_TRUE(p3.ok());
  EXPECT_FALSE(p3->next);
  EXPECT_EQ(p3->items.back().name, "zz-last");
  size_t total = p1->items.size() + p2->items.size() + p3->items.size();
  EXPECT_EQ(total, 1200u);  // 1200 - 1 deleted + 1 after the cursor
  auto small = c_.ListNodes(dir.id, "", 3);
  EXPECT_EQ(small->items.size(), 3u);
}

TEST_F(ServerApiTest, ChangesIncludeTombstonesInSeqOrder) {
  uint64_t start = Head(c_);
  CommitOp a = MkdirOp(kRootId, "a");
  CommitOp f = CreateOp(c_, a.id, "f", "x");
  MustCommit(c_, {a, f});
  CommitOp del;
  del.type = OpType::kDelete;
  del.id = f.id;
  del.has_base = true;
  del.base = 1;
  MustCommit(c_, {del});
  auto ch = c_.Changes(start);
  ASSERT_TRUE(ch.ok());
  ASSERT_EQ(ch->items.size(), 2u);  // a, then f's tombstone
  EXPECT_EQ(ch->items[0].id, a.id);
  EXPECT_EQ(ch->items[1].id, f.id);
  EXPECT_TRUE(ch->items[1].deleted);
  EXPECT_EQ(ch->head, start + 3);
  EXPECT_FALSE(ch->more);
  auto page = c_.Changes(start, 1);
  EXPECT_TRUE(page->more);
  EXPECT_EQ(page->items.size(), 1u);
  auto none = c_.Changes(ch->head);
  EXPECT_TRUE(none->items.empty());
}

TEST_F(ServerApiTest, SnapshotMatchesTheTreeAndCarriesItsSeq) {
  CommitOp a = MkdirOp(kRootId, "a");
  MustCommit(c_, {a, CreateOp(c_, a.id, "f", "data")});
  auto snap = c_.GetSnapshot();
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->seq, Head(c_));
  EXPECT_EQ(snap->nodes.size(), 3u);  // root, a, f
  // Stale after a commit: rebuilt with the new node.
  MustCommit(c_, {MkdirOp(kRootId, "b")});
  auto again = c_.GetSnapshot();
  EXPECT_EQ(again->nodes.size(), 4u);
  EXPECT_EQ(again->seq, Head(c_));
}

TEST_F(ServerApiTest, DevicesAndCheckpoints) {
  MustCommit(c_, {MkdirOp(kRootId, "a")});
  uint64_t head = Head(c_);
  EXPECT_TRUE(c_.PutCheckpoint("laptop", head).ok());
  EXPECT_EQ(c_.PutCheckpoint("viewer", 1).code(), Code::kPermissionDenied);
  EXPECT_EQ(c_.PutCheckpoint("laptop", head + 1).code(), Code::kInvalidArgument);
  auto d = c_.Raw("GET", "/devices");
  ASSERT_EQ(d->status, 200);
  auto j = nlohmann::json::parse(d->body);
  bool found = false;
  for (const auto& dev : j["items"])
    if (dev["name"] == "laptop") {
      found = true;
      EXPECT_EQ(dev["checkpoint"].get<uint64_t>(), head);
      EXPECT_GT(dev["last_seen_ns"].get<int64_t>(), 0);
    }
  EXPECT_TRUE(found) << d->body;
  // An admin writing to the data dir of the running server (a new token)
  // after a checkpoint: the server's next writes still go through (a
  // statement left open on its writer once made them "database is locked").
  server_.NewToken("demo", "tablet");
  MustCommit(c_, {MkdirOp(kRootId, "after-admin")});
  EXPECT_TRUE(c_.PutCheckpoint("laptop", Head(c_)).ok());
}

TEST_F(ServerApiTest, ARetriedCommitIsAnsweredNotAppliedTwice) {
  CommitOp op = MkdirOp(kRootId, "once");
  std::string body = EncodeCommit({op});
  auto first = c_.Raw("POST", "/commit", body, {"Idempotency-Key: k1"}, false);
  auto again = c_.Raw("POST", "/commit", body, {"Idempotency-Key: k1"}, false);
  ASSERT_EQ(first->status, 200) << first->body;
  EXPECT_EQ(again->status, 200) << again->body;
  ASSERT_EQ(first->body.back(), '}');
  EXPECT_EQ(again->body, first->body.substr(0, first->body.size() - 1) + ",\"replayed\":true}");
  // The key names the commit, not the body: another body under it gets
  // the first answer too (a client that resolved a refusal, answer lost).
  auto other = c_.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "other")}), {"Idempotency-Key: k1"}, false);
  EXPECT_EQ(other->body, again->body);
  EXPECT_EQ(c_.ListAll(kRootId)->size(), 1u) << "a replayed key applied its body";
  // Without the key the same body is a new commit: the id is taken.
  EXPECT_EQ(c_.Raw("POST", "/commit", body, {}, false)->status, 409);
  EXPECT_EQ(c_.Raw("POST", "/commit", body, {"Idempotency-Key: bad key!"}, false)->status, 400);
}

// A commit with no ops only asks for the answer given under its key: the
// stored one (replayed), or, with none, the head and nothing applied, and
// that empty answer is stored (a commit first sent under the key and still
// on its way is not applied). Without a key it is refused.
TEST_F(ServerApiTest, AnEmptyCommitAsksForTheAnswerUnderItsKey) {
  const std::string empty = "{\"ops\":[]}";
  auto no_key = c_.Raw("POST", "/commit", empty, {}, false);
  EXPECT_EQ(no_key->status, 400) << no_key->body;
  EXPECT_NE(no_key->body.find("Idempotency-Key"), std::string::npos) << no_key->body;
  auto first = c_.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "once")}), {"Idempotency-Key: k1"}, false);
  ASSERT_EQ(first->status, 200) << first->body;
  auto asked = c_.Raw("POST", "/commit", empty, {"Idempotency-Key: k1"}, false);
  ASSERT_EQ(asked->status, 200) << asked->body;
  EXPECT_EQ(asked->body, first->body.substr(0, first->body.size() - 1) + ",\"replayed\":true}");
  const uint64_t head = Head(c_);
  auto unknown = c_.Raw("POST", "/commit", empty, {"Idempotency-Key: k2"}, false);
  ASSERT_EQ(unknown->status, 200) << unknown->body;
  EXPECT_EQ(unknown->body, "{\"items\":[],\"head\":" + std::to_string(head) + "}");
  EXPECT_EQ(Head(c_), head) << "an empty commit moved the head";
  auto late = c_.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "late")}), {"Idempotency-Key: k2"}, false);
  ASSERT_EQ(late->status, 200) << late->body;
  EXPECT_EQ(late->body, unknown->body.substr(0, unknown->body.size() - 1) + ",\"replayed\":true}");
  EXPECT_EQ(c_.ListAll(kRootId)->size(), 1u) << "a commit under a key already asked for was applied";
}

TEST_F(ServerApiTest, ARefusedCommitLeavesTheServerWritableAfterAnAdminWrite) {
  // A refused commit rolls back; an admin then writing to the data dir of
  // the running server (a new token) must not lock the server's writes out.
  CommitOp op = MkdirOp(kRootId, "x");
  MustCommit(c_, {op});
  EXPECT_EQ(c_.Raw("POST", "/commit", EncodeCommit({op}), {}, false)->status, 409);
  server_.NewToken("demo", "tablet");
  auto after = c_.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "y")}), {}, false);
  EXPECT_EQ(after->status, 200) << after->body;
}

TEST_F(ServerApiTest, ADevicesNewestCommitKeysOutliveTheDay) {
  // A laptop that lost a commit's answer may come back days later: its
  // newest keys stay, older ones go after a day, a retired device's at once.
  constexpr int kKept = MetadataStore::kKeysKeptPerDevice;
  auto keyed = [](ApiClient& c, int i, const std::string& key) {
    return c.Raw("POST", "/commit", EncodeCommit({MkdirOp(kRootId, "d" + std::to_string(i))}),
                 {"Idempotency-Key: " + key}, false);
  };
  for (int i = 0; i < kKept + 4; ++i) ASSERT_EQ(keyed(c_, i, "k" + std::to_string(i))->status, 200);
  ApiClient tablet = server_.Client(server_.NewToken("demo", "tablet"));
  ASSERT_EQ(keyed(tablet, 100, "t")->status, 200);
  ASSERT_TRUE(tablet.PutCheckpoint("tablet", Head(tablet)).ok());
  ASSERT_EQ(keyed(tablet, 101, "t2")->status, 200);
  server_.Stop();
  {
    auto db = Db::Open(server_.data_dir() + "/meta.db");
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    ASSERT_TRUE((*db)->Exec("UPDATE commit_keys SET created_ns = created_ns - 2 * 86400000000000").ok());
  }
  server_.Start();
  ApiClient c = server_.Client(server_.rw_token);
  ASSERT_EQ(keyed(c, 1000, "fresh")->status, 200);  // a keyed commit sweeps old keys
  // The laptop's newest (with "fresh") are answered; older ones are new commits.
  auto last = keyed(c, kKept + 3, "k" + std::to_string(kKept + 3));
  EXPECT_EQ(last->status, 200) << last->body;
  EXPECT_NE(last->body.find("\"replayed\":true"), std::string::npos) << last->body;
  const int oldest_kept = kKept + 4 - (kKept - 1);
  auto kept = keyed(c, oldest_kept, "k" + std::to_string(oldest_kept));
  EXPECT_NE(kept->body.find("\"replayed\":true"), std::string::npos) << kept->body;
  auto gone = keyed(c, oldest_kept - 1, "k" + std::to_string(oldest_kept - 1));
  EXPECT_EQ(gone->status, 409) << "a key past the day and the device's newest was kept: " << gone->body;
  // Another device's keys are its own: the tablet's stay.
  ApiClient t = server_.Client(tablet.options().token);
  auto mine = keyed(t, 101, "t2");
  EXPECT_NE(mine->body.find("\"replayed\":true"), std::string::npos) << mine->body;
  // Retired, its keys go.
  int status = -1;
  server_.Admin("device retire --project demo --device tablet", &status);
  ASSERT_EQ(status, 0);
  auto after = keyed(t, 101, "t2");
  EXPECT_EQ(after->status, 409) << after->body;
}

TEST_F(ServerApiTest, DedupStoresABlockOnce) {
  std::string data(kBlockSize, 'd');
  CommitOp a = CreateOp(c_, kRootId, "a", data);
  std::string body;
  AppendBlockFrame(&body, HashBlock(data), data);
  auto r = c_.Raw("POST", "/blocks", body);
  EXPECT_EQ(r->body, "{\"stored\":0,\"present\":1}");
  auto missing = c_.MissingBlocks({HashBlock(data), HashBlock("other")});
  ASSERT_TRUE(missing.ok());
  ASSERT_EQ(missing->size(), 1u);
  EXPECT_EQ((*missing)[0], HashBlock("other"));
}

// A block is indexed only once a sync made its bytes durable (at the next
// commit, or when many wait): until then it counts as present, and one
// stored before a server died and never committed is asked for again.
TEST_F(ServerApiTest, AStoredBlockIsIndexedOnlyOnceDurable) {
  const std::string data = RandomBytes(kBlockSize, 12), other = RandomBytes(kBlockSize, 13);
  for (const std::string* d : {&data, &other}) ASSERT_EQ(PostBlocks(c_, {d}), "{\"stored\":1,\"present\":0}");
  auto missing = c_.MissingBlocks({HashBlock(data), HashBlock(other)});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->empty()) << "a block stored and not yet indexed counts as missing";
  // A commit naming one indexes both (and is accepted).
  CommitOp f = CreateOfBlock(kRootId, "f.bin", data);
  MustCommit(c_, {f});
  std::string third = RandomBytes(kBlockSize, 14);
  ASSERT_EQ(PostBlocks(c_, {&third}), "{\"stored\":1,\"present\":0}");
  server_.Kill();
  server_.Start();
  ApiClient c = server_.Client(server_.rw_token);
  missing = c.MissingBlocks({HashBlock(data), HashBlock(other), HashBlock(third)});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(*missing, std::vector<Hash128>{HashBlock(third)}) << "only the block stored after the last commit is asked again";
  EXPECT_EQ(c.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content")->body, data);
}

// Bytes the packs hold on disk (holes not counted).
uint64_t PackDiskBytes(const std::string& data_dir) {
  uint64_t total = 0;
  for (const auto& e : std::filesystem::directory_iterator(data_dir + "/packs")) {
    struct stat st;
    if (stat(e.path().c_str(), &st) == 0) total += static_cast<uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

// Uploaded blocks that no commit names are collected once their grace
// has passed: unindexed, their bytes freed in the packs. Committed ones
// stay, and a commit naming a collected block is refused until it is sent
// again.
TEST_F(ServerApiTest, AnUploadNoCommitNamesIsCollectedAfterItsGrace) {
  ApiClient c = RestartWith({"--block-grace", "1", "--collect-every", "1"});
  const std::string kept = RandomBytes(kBlockSize, 31), dropped = RandomBytes(kBlockSize, 32);
  ASSERT_EQ(PostBlocks(c, {&kept, &dropped}), "{\"stored\":2,\"present\":0}");
  CommitOp f = CreateOfBlock(kRootId, "kept.bin", kept);
  MustCommit(c, {f});  // (indexes both)
  const uint64_t before = PackDiskBytes(server_.data_dir());
  // (Watched through the metrics: asking about the block would refresh it.)
  std::string metrics;
  ASSERT_TRUE(Within(std::chrono::seconds(20), [&] {
    auto m = c.Raw("GET", "//metrics");
    metrics = m.ok() ? m->body : "";
    return metrics.find("tidefs_blocks_collected_total 0\n") == std::string::npos;
  })) << "the block no commit named was never collected";
  EXPECT_NE(metrics.find("tidefs_blocks_collected_total 1\n"), std::string::npos) << metrics;
  EXPECT_EQ(*c.MissingBlocks({HashBlock(dropped), HashBlock(kept)}), std::vector<Hash128>{HashBlock(dropped)})
      << "a committed block was collected, or the other one not";
  EXPECT_EQ(c.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content")->body, kept);
  EXPECT_LE(PackDiskBytes(server_.data_dir()) + 60 * 1024, before) << "its bytes still take space in the pack";
  // A commit naming it now is refused; sent again, it is taken.
  CommitOp g = CreateOfBlock(kRootId, "late.bin", dropped);
  auto r = c.Commit({g});
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->refused);
  EXPECT_EQ(r->reason, "missing_blocks");
  EXPECT_EQ(r->missing, std::vector<Hash128>{HashBlock(dropped)});
  ASSERT_EQ(PostBlocks(c, {&dropped}), "{\"stored\":1,\"present\":0}");
  MustCommit(c, {g});
  EXPECT_EQ(c.Raw("GET", "/nodes/" + std::to_string(g.id) + "/content")->body, dropped);
}

// A client told that a block no commit names yet is here (it resumes an
// upload, or asks before its commit) gives that block its grace anew: it
// is not collected between the answer and the commit.
TEST_F(ServerApiTest, AskingAboutAnUploadStartsItsGraceAnew) {
  ApiClient c = RestartWith({"--block-grace", "4", "--collect-every", "1"});
  const std::string data = RandomBytes(kBlockSize, 33);
  ASSERT_EQ(PostBlocks(c, {&data}), "{\"stored\":1,\"present\":0}");
  // Indexed (as by any commit), then asked about every half second for
  // three graces: each answer that it is here refreshes it once it is two
  // seconds old. (The pacing of a client; the collector runs every second.)
  CommitOp mk = MkdirOp(kRootId, "d");
  MustCommit(c, {mk});
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(12);
  while (std::chrono::steady_clock::now() < until) {
    auto m = c.MissingBlocks({HashBlock(data)});
    ASSERT_TRUE(m.ok());
    ASSERT_TRUE(m->empty()) << "collected while a client kept asking about it";
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  CommitOp f = CreateOfBlock(kRootId, "f.bin", data);
  MustCommit(c, {f});
  EXPECT_EQ(c.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content")->body, data);
}

TEST_F(ServerApiTest, DataSurvivesARestart) {
  std::string data = RandomBytes(200000, 11);
  CommitOp f = CreateOp(c_, kRootId, "keep.bin", data);
  MustCommit(c_, {f});
  uint64_t head = Head(c_);
  server_.Stop();
  server_.Start();
  ApiClient c = server_.Client(server_.rw_token);
  EXPECT_EQ(Head(c), head);
  auto back = c.Raw("GET", "/nodes/" + std::to_string(f.id) + "/content");
  EXPECT_EQ(back->body, data);
}

}  // namespace
}  // namespace tidefs
