#include "core/block_frame.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(BlockFrame, RoundTripsAndVerifies) {
  std::string body;
  std::string a(kBlockSize, 'a'), b = "tail";
  AppendBlockFrame(&body, HashBlock(a), a);
  AppendBlockFrame(&body, HashBlock(b), b);
  auto frames = DecodeBlockFrames(body);
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 2u);
  EXPECT_EQ((*frames)[1].data, "tail");
  EXPECT_TRUE(VerifyBlockFrames(*frames).ok());
}

TEST(BlockFrame, RejectsBadFrames) {
  std::string body;
  AppendBlockFrame(&body, HashBlock("abc"), "abc");
  EXPECT_FALSE(DecodeBlockFrames(body.substr(0, body.size() - 1)).ok());  // truncated
  EXPECT_FALSE(DecodeBlockFrames(body.substr(0, 10)).ok());
  EXPECT_FALSE(DecodeBlockFrames("").ok());
  std::string zero;
  AppendBlockFrame(&zero, HashBlock(""), "");
  EXPECT_FALSE(DecodeBlockFrames(zero).ok());  // empty block
  std::string big(kBlockSize + 1, 'x');
  std::string oversize;
  AppendBlockFrame(&oversize, HashBlock(big), big);
  EXPECT_FALSE(DecodeBlockFrames(oversize).ok());
  std::string lie;
  AppendBlockFrame(&lie, HashBlock("abc"), "abd");
  auto frames = DecodeBlockFrames(lie);
  ASSERT_TRUE(frames.ok());
  EXPECT_FALSE(VerifyBlockFrames(*frames).ok());
}

}  // namespace tidefs
