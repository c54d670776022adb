// Sending ahead (ChunkCache::BeginAhead/EndAhead): a hash kept for a block
// is always that of the bytes in the cache file, whatever writes, resizes
// and failed sends happen between the pick and the flush. A file created
// here needs no server: its blocks are local.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "cache/chunk_cache.h"
#include "client/api_client.h"

namespace tidefs {
namespace {

class ChunkCacheAheadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tidefs-ahead-XXXXXX";
    dir_ = mkdtemp(tmpl);
    ClientOptions o;
    o.server = "http://127.0.0.1:9";  // never asked: the file is ours
    client_ = std::make_unique<ApiClient>(o);
    cache_ = std::make_unique<ChunkCache>(dir_, client_.get(), nullptr);
    node_.id = 42;
    node_.parent = 1;
    node_.name = "f";
    cache_->MarkLocal(node_.id, /*created=*/true);
  }
  void TearDown() override {
    cache_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Writes `mib` MiB of byte `c` from `at`.
  void Fill(uint64_t at, int mib, char c) {
    const std::string piece(1 << 20, c);
    for (int i = 0; i < mib; ++i) {
      ASSERT_TRUE(cache_->Write(node_, at + (uint64_t{1} << 20) * i, piece.data(), piece.size()).ok());
      node_.size = std::max<uint64_t>(node_.size, at + (uint64_t{1} << 20) * (i + 1));
    }
  }
  std::string dir_;
  std::unique_ptr<ApiClient> client_;
  std::unique_ptr<ChunkCache> cache_;
  NodeRecord node_;
};

TEST_F(ChunkCacheAheadTest, OnlyBlocksUntouchedSinceTheirSendKeepTheirHash) {
  Fill(0, 24, 'a');
  auto v = cache_->BeginAhead(node_, 0, 64 << 20);
  ASSERT_TRUE(v.ok());
  ASSERT_TRUE(v->has_value());
  const auto& blocks = (*v)->blocks;
  ASSERT_EQ(blocks.size(), (20u << 20) / kBlockSize);  // a chunk short of the furthest write
  // Sent (as far as the cache knows), but block 3 is written meanwhile.
  std::vector<Hash128> hashes(blocks.size(), HashBlock(std::string(kBlockSize, 'a')));
  const std::string z(100, 'z');
  ASSERT_TRUE(cache_->Write(node_, 3 * kBlockSize + 7, z.data(), z.size()).ok());
  cache_->EndAhead(node_.id, blocks, hashes, true);
  auto f = cache_->BeginFlush(node_);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->known.size(), blocks.size() - 1);
  EXPECT_FALSE(f->known.count(3)) << "a block written after it was read kept the old hash";
  EXPECT_TRUE(f->known.count(2));
  EXPECT_FALSE(f->known.count(blocks.size()));  // not picked: too close to the writing
  // Nothing more is picked until the writing moves on; then only new blocks (and 3).
  auto again = cache_->BeginAhead(node_, 0, 64 << 20);
  ASSERT_TRUE(again.ok());
  ASSERT_TRUE(again->has_value());
  EXPECT_EQ((*again)->blocks.front(), 3u);
  EXPECT_EQ((*again)->blocks.size(), 1u);
  cache_->EndAhead(node_.id, (*again)->blocks, {}, false);  // failed: picked again next time
  auto third = cache_->BeginAhead(node_, 0, 64 << 20);
  ASSERT_TRUE(third.ok());
  ASSERT_TRUE(third->has_value());
  EXPECT_EQ((*third)->blocks, std::vector<uint64_t>{3});
}

TEST_F(ChunkCacheAheadTest, AResizeForgetsEverythingSentAhead) {
  Fill(0, 24, 'b');
  auto v = cache_->BeginAhead(node_, 0, 64 << 20);
  ASSERT_TRUE(v.ok() && v->has_value());
  std::vector<Hash128> hashes((*v)->blocks.size(), HashBlock(std::string(kBlockSize, 'b')));
  cache_->EndAhead(node_.id, (*v)->blocks, hashes, true);
  ASSERT_FALSE(cache_->BeginFlush(node_)->known.empty());
  ASSERT_TRUE(cache_->Truncate(node_, 10 << 20).ok());
  node_.size = 10 << 20;
  EXPECT_TRUE(cache_->BeginFlush(node_)->known.empty());
  // Below the minimum, nothing is picked (small files wait for their flush).
  Fill(10 << 20, 6, 'c');
  auto small = cache_->BeginAhead(node_, 64 << 20, 128 << 20);
  ASSERT_TRUE(small.ok());
  EXPECT_FALSE(small->has_value());
}

}  // namespace
}  // namespace tidefs
