// The block uploader against the real server: only changed blocks the
// server lacks cross the network, and the commit that follows names them.
#include "client/uploader.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include <gtest/gtest.h>

#include "helpers.h"
#include "test_server.h"

namespace tidefs {
namespace {

class UploaderTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = MakeTempDir("tidefs-upload"); }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  int OpenWith(const std::string& data) {
    { std::ofstream(dir_ + "/f", std::ios::binary) << data; }
    return ::open((dir_ + "/f").c_str(), O_RDONLY | O_CLOEXEC);
  }
  TestServer server_;
  ApiClient c_ = server_.Client(server_.rw_token);
  std::string dir_;
};

TEST_F(UploaderTest, SendsOnlyTheChangedBlocksAndTheCommitMatchesTheFile) {
  std::string data = RandomBytes(64 << 20, 21);  // 1,024 blocks
  int fd = OpenWith(data);
  ASSERT_GE(fd, 0);
  UploadStats first;
  auto blocks = UploadFileBlocks(&c_, fd, data.size(), Manifest{}, {}, 4, &first);
  ::close(fd);
  ASSERT_TRUE(blocks.ok()) << blocks.status().ToString();
  EXPECT_EQ(first.bytes_sent, data.size());
  // Requests of at most 4 MiB (frames included), not many more than needed.
  EXPECT_GE(first.requests, 17u);
  EXPECT_LE(first.requests, 20u);
  CommitOp create;
  create.type = OpType::kCreate;
  create.id = 77777;
  create.parent = kRootId;
  create.name = "big.bin";
  create.size = data.size();
  create.blocks = *blocks;
  CommitReply made = MustCommit(c_, {create});

  // 5% of the blocks change; one changed block equals a block the server
  // already has (it is not sent again); the file grows by half a block.
  std::mt19937 rng(5);
  std::vector<bool> dirty(1024, false);
  std::string edited = data;
  uint64_t changed_bytes = 0;
  for (int i = 0; i < 51; ++i) {
    uint64_t b = rng() % 1024;
    if (dirty[b]) continue;
    dirty[b] = true;
    edited.replace(b * kBlockSize, kBlockSize, RandomBytes(kBlockSize, 100 + i));
    changed_bytes += kBlockSize;
  }
  uint64_t copy_to = 0;
  while (dirty[copy_to]) ++copy_to;
  edited.replace(copy_to * kBlockSize, kBlockSize, edited.substr((copy_to + 1) * kBlockSize, kBlockSize));
  dirty[copy_to] = true;  // now equal to its neighbour: the server has it
  edited += RandomBytes(kBlockSize / 2, 99);
  changed_bytes += kBlockSize / 2;

  fd = OpenWith(edited);
  ASSERT_GE(fd, 0);
  Manifest base;
  base.size = data.size();
  base.blocks = *blocks;
  UploadStats second;
  auto next = UploadFileBlocks(&c_, fd, edited.size(), base, dirty, 4, &second);
  ::close(fd);
  ASSERT_TRUE(next.ok()) << next.status().ToString();
  EXPECT_EQ(second.bytes_sent, changed_bytes) << "sent more than the changed blocks";
  const uint64_t dirty_count = std::count(dirty.begin(), dirty.end(), true);
  EXPECT_EQ(second.blocks_hashed, dirty_count + 1) << "hashed more than the dirty blocks and the new tail";

  CommitOp write;
  write.type = OpType::kWrite;
  write.id = 77777;
  write.has_base = true;
  write.base = made.items.at(0).version;
  write.size = edited.size();
  write.blocks = *next;
  MustCommit(c_, {write});
  auto back = c_.GetContent(77777, 0, 0, edited.size() - 1);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(*back == edited);
}

TEST_F(UploaderTest, AFileShorterThanClaimedIsAnErrorNotAGuess) {
  int fd = OpenWith("short");
  ASSERT_GE(fd, 0);
  UploadStats st;
  auto r = UploadFileBlocks(&c_, fd, 100, Manifest{}, {}, 2, &st);
  ::close(fd);
  EXPECT_EQ(r.status().code(), Code::kIoError);
  EXPECT_EQ(st.bytes_sent, 0u);
}

// The mount's send-ahead: rounds share one sender, so requests stay in
// flight from one call to the next; Finish says when all have landed.
TEST_F(UploaderTest, ASharedSenderCarriesSeveralCallsAndFinishWaitsForThem) {
  std::string data = RandomBytes(48 << 20, 22);  // 768 blocks
  int fd = OpenWith(data);
  ASSERT_GE(fd, 0);
  std::vector<uint64_t> front, back;
  for (uint64_t b = 0; b < 768; ++b) (b < 384 ? front : back).push_back(b);
  UploadStats st;
  std::vector<Hash128> hashes;
  {
    BlockSender sender(&c_, kUploadSenders);
    for (const auto* part : {&front, &back}) {
      auto h = UploadBlocksAhead(&c_, fd, data.size(), *part, &st, &sender);
      ASSERT_TRUE(h.ok()) << h.status().ToString();
      hashes.insert(hashes.end(), h->begin(), h->end());
    }
    ASSERT_TRUE(sender.Finish().ok());
  }
  ::close(fd);
  EXPECT_EQ(st.bytes_sent, data.size());
  auto missing = c_.MissingBlocks(hashes);
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  EXPECT_TRUE(missing->empty()) << missing->size() << " blocks not on the server after Finish";
  EXPECT_EQ(hashes[5], HashBlock(data.data() + 5 * kBlockSize, kBlockSize));
}

// A request that fails after its call returned (here: refused, the token
// can ask about blocks but not store them) is not lost: Finish reports it.
TEST_F(UploaderTest, ASharedSenderReportsARequestThatFailedInFlight) {
  std::string data = RandomBytes(8 << 20, 23);
  int fd = OpenWith(data);
  ASSERT_GE(fd, 0);
  ApiClient reader = server_.Client(server_.ro_token);
  std::vector<uint64_t> all;
  for (uint64_t b = 0; b < 128; ++b) all.push_back(b);
  UploadStats st;
  BlockSender sender(&reader, 2);
  auto h = UploadBlocksAhead(&reader, fd, data.size(), all, &st, &sender);
  ::close(fd);
  // The call may return before or after the refusal: either way, it is not ok at Finish.
  Status done = sender.Finish();
  EXPECT_FALSE(done.ok());
  EXPECT_NE(done.message().find("read-only"), std::string::npos) << done.ToString();
  if (h.ok()) {
    auto missing = c_.MissingBlocks(*h);
    ASSERT_TRUE(missing.ok());
    EXPECT_EQ(missing->size(), h->size());
  }
}

}  // namespace
}  // namespace tidefs
