// Small helpers for tests that drive the API directly.
#pragma once

#include <chrono>
#include <functional>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "client/api_client.h"
#include "client/importer.h"
#include "core/block_frame.h"

namespace tidefs {

// Waits for `cond` until the deadline (no sleep as synchronisation: the
// condition is polled); true if it held.
inline bool Within(std::chrono::milliseconds limit, const std::function<bool()>& cond) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  for (;;) {
    if (cond()) return true;
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

inline std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Uploads `content` as blocks and fills op.size/op.blocks.
inline void UploadContent(ApiClient& c, const std::string& content, CommitOp* op) {
  op->size = content.size();
  op->blocks.clear();
  std::string body;
  for (size_t off = 0; off < content.size(); off += kBlockSize) {
    std::string_view b = std::string_view(content).substr(off, kBlockSize);
    Hash128 h = HashBlock(b);
    op->blocks.push_back(h);
    AppendBlockFrame(&body, h, b);
    if (body.size() >= (4u << 20)) {
      ASSERT_TRUE(c.UploadBlocks(body).ok());
      body.clear();
    }
  }
  if (!body.empty()) {
    ASSERT_TRUE(c.UploadBlocks(body).ok());
  }
}

inline CommitOp MkdirOp(uint64_t parent, const std::string& name, uint64_t id = 0) {
  CommitOp op;
  op.type = OpType::kMkdir;
  op.id = id ? id : NewNodeId();
  op.parent = parent;
  op.name = name;
  return op;
}

inline CommitOp DeleteOp(uint64_t id, uint64_t base) {
  CommitOp op;
  op.type = OpType::kDelete;
  op.id = id;
  op.has_base = true;
  op.base = base;
  return op;
}

// A create of a one-block file whose block is on the server already (or
// meant not to be).
inline CommitOp CreateOfBlock(uint64_t parent, const std::string& name, const std::string& block) {
  CommitOp op;
  op.type = OpType::kCreate;
  op.id = NewNodeId();
  op.parent = parent;
  op.name = name;
  op.size = block.size();
  op.blocks = {HashBlock(block)};
  return op;
}

inline CommitOp CreateOp(ApiClient& c, uint64_t parent, const std::string& name, const std::string& content) {
  CommitOp op;
  op.type = OpType::kCreate;
  op.id = NewNodeId();
  op.parent = parent;
  op.name = name;
  UploadContent(c, content, &op);
  return op;
}

// Commits and expects success; returns the reply.
inline CommitReply MustCommit(ApiClient& c, const std::vector<CommitOp>& ops) {
  auto r = c.Commit(ops);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  if (!r.ok()) return {};
  EXPECT_FALSE(r->refused) << r->reason << ": " << r->message;
  return *r;
}

inline uint64_t Head(ApiClient& c) {
  auto ch = c.Changes(0, 1);
  EXPECT_TRUE(ch.ok());
  return ch.ok() ? ch->head : 0;
}

}  // namespace tidefs
