// Bad input gets a clear 4xx JSON error and changes nothing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "helpers.h"
#include "test_server.h"

namespace tidefs {
namespace {

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    f_ = CreateOp(c_, kRootId, "f.txt", "content");
    MustCommit(c_, {f_});
    head_ = Head(c_);
  }
  // Expects `status` with a JSON {"error","message"} body, and no change.
  void ExpectRefused(const Result<HttpAnswer>& a, int status, const std::string& what) {
    ASSERT_TRUE(a.ok()) << what;
    EXPECT_EQ(a->status, status) << what << ": " << a->body;
    auto j = nlohmann::json::parse(a->body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error") && j.contains("message")) << what << ": " << a->body;
    EXPECT_EQ(Head(c_), head_) << what;
  }
  TestServer server_;
  ApiClient c_ = server_.Client(server_.rw_token);
  CommitOp f_;
  uint64_t head_ = 0;
};

TEST_F(BadInputTest, MalformedCommitBodies) {
  const std::vector<std::string> bodies = {
      "not json", "{\"ops\":", "{}", "{\"ops\":[]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":\"7\",\"parent\":1,\"name\":\"x\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":7,\"parent\":1,\"name\":\"x\",\"mode\":\"rwx\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":7,\"parent\":1,\"name\":\"x\",\"bogus\":true}]}",
      "{\"ops\":[{\"op\":\"write\",\"id\":7,\"base\":-1,\"size\":0,\"blocks\":[]}]}",
  };
  for (const auto& b : bodies) ExpectRefused(c_.Raw("POST", "/commit", b), 400, b);
}

TEST_F(BadInputTest, BadNames) {
  std::vector<std::string> names = {"", ".", "..", "a/b", std::string("a\0b", 3), std::string(256, 'x'), "\xff"};
  for (const auto& n : names) {
    nlohmann::json op{{"op", "mkdir"}, {"id", 77}, {"parent", 1}};
    std::string body;
    if (n == "\xff" || n.find('\0') != std::string::npos) {
      // Not representable in valid JSON text: send the raw bytes.
      body = "{\"ops\":[{\"op\":\"mkdir\",\"id\":77,\"parent\":1,\"name\":\"" +
             (n == "\xff" ? n : std::string("a\\u0000b")) + "\"}]}";
    } else {
      op["name"] = n;
      body = nlohmann::json{{"ops", {op}}}.dump();
    }
    ExpectRefused(c_.Raw("POST", "/commit", body), 400, "name of " + std::to_string(n.size()) + " bytes");
  }
}

TEST_F(BadInputTest, BodiesOverTheLimit) {
  std::string huge(2 << 20, ' ');
  ExpectRefused(c_.Raw("POST", "/blocks/missing", huge), 413, "missing body");
  std::string frames(9 << 20, 'x');
  ExpectRefused(c_.Raw("POST", "/blocks", frames), 413, "blocks body");
}

TEST_F(BadInputTest, TruncatedOversizeAndLyingFrames) {
  std::string ok;
  AppendBlockFrame(&ok, HashBlock("abc"), "abc");
  ExpectRefused(c_.Raw("POST", "/blocks", ok.substr(0, ok.size() - 1)), 400, "truncated frame");
  ExpectRefused(c_.Raw("POST", "/blocks", ok.substr(0, 12)), 400, "truncated header");
  std::string big(kBlockSize + 1, 'b');
  std::string over;
  AppendBlockFrame(&over, HashBlock(big), big);
  ExpectRefused(c_.Raw("POST", "/blocks", over), 400, "oversize frame");
  // A frame whose bytes do not match its hash: refused, and nothing stored
  // (not even the good frame before it).
  std::string good = "good block", lie;
  AppendBlockFrame(&lie, HashBlock(good), good);
  AppendBlockFrame(&lie, HashBlock("claimed"), "actual");
  ExpectRefused(c_.Raw("POST", "/blocks", lie), 400, "hash mismatch");
  auto missing = c_.MissingBlocks({HashBlock(good), HashBlock("claimed"), HashBlock("actual")});
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->size(), 3u);
}

TEST_F(BadInputTest, CommitReferencingMissingBlocks) {
  CommitOp op;
  op.type = OpType::kCreate;
  op.id = NewNodeId();
  op.parent = kRootId;
  op.name = "ghost";
  op.size = 5;
  op.blocks = {HashBlock("never uploaded")};
  auto a = c_.Raw("POST", "/commit", EncodeCommit({op}));
  ExpectRefused(a, 400, "missing blocks");
  EXPECT_NE(a->body.find(HashBlock("never uploaded").Hex()), std::string::npos);
  // A block whose length does not fit its position.
  CommitOp wrong = CreateOp(c_, kRootId, "wrong", "12345");
  wrong.size = kBlockSize + 5;
  wrong.blocks = {wrong.blocks[0], wrong.blocks[0]};
  ExpectRefused(c_.Raw("POST", "/commit", EncodeCommit({wrong})), 400, "short block");
}

TEST_F(BadInputTest, UnknownNodesAndVersions) {
  ExpectRefused(c_.Raw("GET", "/nodes/999999/content"), 404, "unknown node");
  ExpectRefused(c_.Raw("GET", "/nodes/999999/manifest"), 404, "unknown node manifest");
  ExpectRefused(c_.Raw("GET", "/nodes/" + std::to_string(f_.id) + "/content?version=42"), 404, "unknown version");
  ExpectRefused(c_.Raw("GET", "/nodes/" + std::to_string(f_.id) + "/content?version=0"), 400, "version 0");
  ExpectRefused(c_.Raw("GET", "/nodes/abc/content"), 400, "non-numeric id");
  ExpectRefused(c_.Raw("GET", "/nodes/999999"), 404, "unknown node record");
  ExpectRefused(c_.Raw("GET", "/nodes/0"), 400, "node 0");
  ExpectRefused(c_.Raw("GET", "/nodes/-3"), 400, "negative node");
  ExpectRefused(c_.Raw("GET", "/nodes/" + std::to_string(f_.id) + "?colour=red"), 400, "unknown query key");
  ExpectRefused(c_.Raw("GET", "/nodes?parent=424242"), 404, "unknown parent");
  ExpectRefused(c_.Raw("GET", "/nodes?parent=" + std::to_string(f_.id)), 400, "parent is a file");
  CommitOp w;
  w.type = OpType::kWrite;
  w.id = 123456789;
  w.has_base = true;
  w.base = 1;
  ExpectRefused(c_.Raw("POST", "/commit", EncodeCommit({w})), 404, "write to unknown node");
}

TEST_F(BadInputTest, NegativeOrHugeLimitsAndCursors) {
  for (std::string q : {"limit=-1", "limit=0", "limit=501", "limit=abc", "limit=99999999999999999999999", "parent=-1",
                        "parent=1&parent=1", "after=%zz", "colour=red"})
    ExpectRefused(c_.Raw("GET", "/nodes?" + q), 400, q);
  for (std::string q : {"since=-1", "since=", "since=18446744073709551616", "since=999999", "since=0&limit=1000"})
    ExpectRefused(c_.Raw("GET", "/changes?" + q), 400, q);
  ExpectRefused(c_.Raw("GET", "/changes"), 400, "since missing");
}

TEST_F(BadInputTest, WrongMethodsPathsAndProjects) {
  ExpectRefused(c_.Raw("DELETE", "/nodes"), 405, "DELETE /nodes");
  ExpectRefused(c_.Raw("GET", "/commit"), 405, "GET /commit");
  ExpectRefused(c_.Raw("GET", "/nowhere"), 404, "unknown endpoint");
  ExpectRefused(c_.Raw("GET", "//v1/projects/bad%20name/nodes"), 400, "bad project name");
  ExpectRefused(c_.Raw("GET", "//v1/projects/absent/nodes"), 403, "another project");
  ExpectRefused(c_.Raw("PUT", "/devices/laptop/checkpoint", "{\"seq\":\"1\"}"), 400, "checkpoint type");
  ExpectRefused(c_.Raw("PUT", "/devices/laptop/checkpoint", "{\"seq\":1,\"x\":2}"), 400, "checkpoint field");
  ExpectRefused(c_.Raw("POST", "/blocks/missing", "{\"hashes\":[\"xyz\"]}"), 400, "bad hash");
  ExpectRefused(c_.Raw("POST", "/blocks/missing", "{\"hashes\":7}"), 400, "hashes type");
}

TEST_F(BadInputTest, MalformedHttpIsA400) {
  // Raw bytes over a socket: curl would not send these.
  std::string out;
  std::string host = server_.url().substr(7);
  std::string port = host.substr(host.find(':') + 1);
  int rc = RunCommand("printf 'GARBAGE\\r\\n\\r\\n' | timeout 5 python3 -c \"import socket,sys; s=socket.create_connection(('127.0.0.1'," +
                          port + ")); s.sendall(sys.stdin.buffer.read()); print(s.recv(200).decode(errors='replace'))\"",
                      &out);
  EXPECT_EQ(rc, 0);
  EXPECT_NE(out.find("400"), std::string::npos) << out;
}

}  // namespace
}  // namespace tidefs
