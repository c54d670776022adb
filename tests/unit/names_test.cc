#include "core/names.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(Names, AcceptsOrdinaryNames) {
  EXPECT_TRUE(ValidateName("report.txt").ok());
  EXPECT_TRUE(ValidateName("rapport \xc3\xa9t\xc3\xa9 (1).txt").ok());
  EXPECT_TRUE(ValidateName(std::string(255, 'x')).ok());
  EXPECT_TRUE(ValidateName("...").ok());
}

TEST(Names, RefusesBadNames) {
  EXPECT_FALSE(ValidateName("").ok());
  EXPECT_FALSE(ValidateName(".").ok());
  EXPECT_FALSE(ValidateName("..").ok());
  EXPECT_FALSE(ValidateName("a/b").ok());
  EXPECT_FALSE(ValidateName(std::string("a\0b", 3)).ok());
  EXPECT_FALSE(ValidateName(std::string(256, 'x')).ok());
  EXPECT_FALSE(ValidateName("\xff\xfe").ok());
  EXPECT_FALSE(ValidateName("\xc0\xaf").ok());  // overlong '/'
}

TEST(Names, ConflictCopyNames) {
  const std::string s = "2026-11-29 2319";
  // {name, device, the copy's name}; T is this device's tag for the minute.
  const std::string T = " (conflict from desk 2026-11-29 2319";
  const struct {
    std::string name, device, want;
  } cases[] = {
      {"report.txt", "desk", "report" + T + ").txt"},
      {"Makefile", "desk", "Makefile" + T + ")"},
      {".bashrc", "desk", ".bashrc" + T + ")"},
      {"a.tar.gz", "desk", "a.tar" + T + ").gz"},
      // The copy's own name taken: a number, not a second tag.
      {"report" + T + ").txt", "desk", "report" + T + " 2).txt"},
      {"report" + T + " 2).txt", "desk", "report" + T + " 3).txt"},
      {"Makefile (conflict from my.pc 2026-11-29 2319 9)", "my.pc", "Makefile (conflict from my.pc 2026-11-29 2319 10)"},
      // Another device's copy, another minute's, or text after the tag: a tag of its own.
      {"r (conflict from laptop 2026-11-29 2319).txt", "desk", "r (conflict from laptop 2026-11-29 2319)" + T + ").txt"},
      {"r (conflict from desk 2026-11-29 2318).txt", "desk", "r (conflict from desk 2026-11-29 2318)" + T + ").txt"},
      {"r" + T + ") old.txt", "desk", "r" + T + ") old" + T + ").txt"},
      {"r" + T + " 0).txt", "desk", "r" + T + " 0)" + T + ").txt"},
  };
  for (const auto& c : cases) EXPECT_EQ(ConflictCopyName(c.name, c.device, s), c.want) << c.name;
  // Cut to 255 bytes at a whole character, the tag and extension kept.
  std::string longname;
  for (int i = 0; i < 120; ++i) longname += "\xc3\xa9";  // 240 bytes of e-acute
  const std::string cut = ConflictCopyName(longname + ".txt", "desk", s);
  EXPECT_LE(cut.size(), kMaxNameBytes);
  EXPECT_TRUE(ValidateName(cut).ok()) << cut;
  EXPECT_NE(cut.find(" (conflict from desk 2026-11-29 2319).txt"), std::string::npos) << cut;
  const std::string again = ConflictCopyName(cut, "desk", s);
  EXPECT_TRUE(ValidateName(again).ok()) << again;
  EXPECT_NE(again.find(" (conflict from desk 2026-11-29 2319 2).txt"), std::string::npos) << again;
}

}  // namespace tidefs

#include "core/url.h"

namespace tidefs {

TEST(Url, PercentDecode) {
  std::string out;
  EXPECT_TRUE(PercentDecode("a%20b%2Fc+d", &out, true));
  EXPECT_EQ(out, "a b/c d");
  EXPECT_TRUE(PercentDecode("a+b", &out, false));
  EXPECT_EQ(out, "a+b");
  EXPECT_FALSE(PercentDecode("%", &out, false));
  EXPECT_FALSE(PercentDecode("%2", &out, false));
  EXPECT_FALSE(PercentDecode("%zz", &out, false));
  EXPECT_TRUE(PercentDecode("%00", &out, false));
  EXPECT_EQ(out, std::string(1, '\0'));
}

}  // namespace tidefs
