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

TEST(BlockFrame, AHeaderWrittenInPlaceMakesTheSameFrame) {
  const std::string data(1000, 'q');
  std::string appended;
  AppendBlockFrame(&appended, HashBlock(data), data);
  std::string in_place(kFrameHeaderSize, '\0');
  WriteBlockFrameHeader(in_place.data(), HashBlock(data), static_cast<uint32_t>(data.size()));
  in_place += data;
  EXPECT_EQ(in_place, appended);
  auto frames = DecodeBlockFrames(in_place);
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 1u);
  EXPECT_EQ((*frames)[0].data, data);
}

}  // namespace tidefs
