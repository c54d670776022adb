#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "server/block_store.h"

namespace tidefs {

class PackBlockStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tidefs-packs-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string dir_;
};

TEST_F(PackBlockStoreTest, StoresCompressibleAndRandomBlocks) {
  auto store = OpenPackBlockStore(dir_);
  ASSERT_TRUE(store.ok());
  std::string text(kBlockSize, 'z');
  std::string random(kBlockSize, '\0');
  for (auto& c : random) c = static_cast<char>(rand());
  auto locs = (*store)->Append({text, random});
  ASSERT_TRUE(locs.ok());
  EXPECT_EQ((*locs)[0].codec, 1);  // compressed
  EXPECT_EQ((*locs)[1].codec, 0);  // kept raw
  auto a = (*store)->Read((*locs)[0], HashBlock(text));
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*a, text);
  auto b = (*store)->Read((*locs)[1], HashBlock(random));
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(*b, random);
}

TEST_F(PackBlockStoreTest, RefusesToReturnBytesThatFailTheirHash) {
  auto store = OpenPackBlockStore(dir_);
  ASSERT_TRUE(store.ok());
  auto locs = (*store)->Append({"hello"});
  ASSERT_TRUE(locs.ok());
  EXPECT_EQ((*store)->Read((*locs)[0], HashBlock("jello")).status().code(), Code::kCorruption);
}

TEST_F(PackBlockStoreTest, RollsToANewPackAndReopens) {
  std::vector<BlockLocation> locs;
  std::vector<std::string> data;
  {
    auto store = OpenPackBlockStore(dir_, /*pack_bytes=*/100000);
    ASSERT_TRUE(store.ok());
    for (int i = 0; i < 5; ++i) {
      std::string d(kBlockSize, '\0');
      for (auto& c : d) c = static_cast<char>(rand());
      auto l = (*store)->Append({d});
      ASSERT_TRUE(l.ok());
      locs.push_back((*l)[0]);
      data.push_back(d);
    }
  }
  EXPECT_GT(locs.back().pack, locs.front().pack);
  auto store = OpenPackBlockStore(dir_, 100000);
  ASSERT_TRUE(store.ok());
  for (size_t i = 0; i < locs.size(); ++i) {
    auto r = (*store)->Read(locs[i], HashBlock(data[i]));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(*r, data[i]);
  }
}

}  // namespace tidefs
