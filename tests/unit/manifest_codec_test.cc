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

TEST(ManifestCodec, TextRoundTrips) {
  Manifest m;
  m.size = 2 * kBlockSize + 7;
  for (int i = 0; i < 3; ++i) m.blocks.push_back(HashBlock(std::to_string(i)));
  std::string text = EncodeManifestText(m);
  EXPECT_EQ(text.substr(0, text.find(' ')), std::to_string(m.size));
  EXPECT_EQ(text.size(), std::to_string(m.size).size() + 1 + 3 * 32);
  auto back = DecodeManifestText(text);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, m);
  EXPECT_EQ(EncodeManifestText(Manifest{}), "0");  // (a trailing space would not survive an HTTP header)
  auto empty = DecodeManifestText("0");
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, Manifest{});
}

TEST(ManifestCodec, TextRejectsWhatItWouldNotWrite) {
  const std::string h = HashBlock("x").Hex();
  for (std::string bad : {std::string(""), std::string("5"), "5" + h, " " + h, "01 " + h, "1  " + h, "1 " + h + " ",
                          "1 " + h.substr(1), "1 " + h + h, "65537 " + h, "-1 " + h, "+1 " + h,
                          "1 " + std::string(32, 'A'), "1 " + std::string(32, 'g'), "0 " + h, std::string("0 "),
                          std::string("17592186044417 "), std::string("17592186044417"), "99999999999999999999 " + h, "1 " + h.substr(0, 31) + "F"}) {
    auto r = DecodeManifestText(bad);
    EXPECT_FALSE(r.ok()) << "accepted: " << bad;
    if (!r.ok()) {
      EXPECT_EQ(r.status().code(), Code::kCorruption) << bad;
    }
  }
}

}  // namespace tidefs
