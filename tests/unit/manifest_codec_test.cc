#include "core/manifest_codec.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(ManifestCodec, RoundTrips) {
  Manifest m;
  m.size = 3 * kBlockSize + 5;
  for (int i = 0; i < 4; ++i) m.blocks.push_back(HashBlock(std::to_string(i)));
  auto back = DecodeManifest(EncodeManifest(m));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, m);
}

TEST(ManifestCodec, EmptyFile) {
  auto back = DecodeManifest(EncodeManifest(Manifest{}));
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->size, 0u);
}

TEST(ManifestCodec, RejectsShapeMismatch) {
  Manifest m;
  m.size = kBlockSize + 1;
  m.blocks.push_back(HashBlock("x"));  // needs two blocks
  EXPECT_FALSE(DecodeManifest(EncodeManifest(m)).ok());
  std::string good = EncodeManifest(Manifest{1, {HashBlock("x")}});
  EXPECT_FALSE(DecodeManifest(good.substr(0, good.size() - 1)).ok());
  EXPECT_FALSE(DecodeManifest(good + "x").ok());
  EXPECT_FALSE(DecodeManifest("TDFSMANI").ok());
}

}  // namespace tidefs
