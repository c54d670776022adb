#include "core/hash.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(Hash, HexRoundTrips) {
  Hash128 h = HashBlock("hello");
  auto back = Hash128::FromHex(h.Hex());
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, h);
  EXPECT_EQ(h.Hex().size(), 32u);
}

TEST(Hash, DifferentBytesDifferentHash) { EXPECT_NE(HashBlock("a"), HashBlock("b")); }

TEST(Hash, RejectsBadHex) {
  EXPECT_FALSE(Hash128::FromHex(""));
  EXPECT_FALSE(Hash128::FromHex(std::string(31, 'a')));
  EXPECT_FALSE(Hash128::FromHex(std::string(33, 'a')));
  EXPECT_FALSE(Hash128::FromHex(std::string(31, 'a') + "g"));
  EXPECT_TRUE(Hash128::FromHex(std::string(32, 'A')));
}

TEST(Hash, BlockCount) {
  EXPECT_EQ(BlockCount(0), 0u);
  EXPECT_EQ(BlockCount(1), 1u);
  EXPECT_EQ(BlockCount(kBlockSize), 1u);
  EXPECT_EQ(BlockCount(kBlockSize + 1), 2u);
}

}  // namespace tidefs
