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
  EXPECT_EQ(ConflictCopyName("report.txt", "desk", s), "report (conflict from desk 2026-11-29 2319).txt");
  EXPECT_EQ(ConflictCopyName("Makefile", "desk", s), "Makefile (conflict from desk 2026-11-29 2319)");
  EXPECT_EQ(ConflictCopyName(".bashrc", "desk", s), ".bashrc (conflict from desk 2026-11-29 2319)");
  EXPECT_EQ(ConflictCopyName("a.tar.gz", "desk", s), "a.tar (conflict from desk 2026-11-29 2319).gz");
  // The copy's own name taken: a number, not a second tag.
  EXPECT_EQ(ConflictCopyName("report (conflict from desk 2026-11-29 2319).txt", "desk", s),
            "report (conflict from desk 2026-11-29 2319 2).txt");
  EXPECT_EQ(ConflictCopyName("report (conflict from desk 2026-11-29 2319 2).txt", "desk", s),
            "report (conflict from desk 2026-11-29 2319 3).txt");
  EXPECT_EQ(ConflictCopyName("Makefile (conflict from my.pc 2026-11-29 2319 9)", "my.pc", s),
            "Makefile (conflict from my.pc 2026-11-29 2319 10)");
  // Another device's copy, another minute's, or text after the tag: a tag of its own.
  EXPECT_EQ(ConflictCopyName("r (conflict from laptop 2026-11-29 2319).txt", "desk", s),
            "r (conflict from laptop 2026-11-29 2319) (conflict from desk 2026-11-29 2319).txt");
  EXPECT_EQ(ConflictCopyName("r (conflict from desk 2026-11-29 2318).txt", "desk", s),
            "r (conflict from desk 2026-11-29 2318) (conflict from desk 2026-11-29 2319).txt");
  EXPECT_EQ(ConflictCopyName("r (conflict from desk 2026-11-29 2319) old.txt", "desk", s),
            "r (conflict from desk 2026-11-29 2319) old (conflict from desk 2026-11-29 2319).txt");
  EXPECT_EQ(ConflictCopyName("r (conflict from desk 2026-11-29 2319 0).txt", "desk", s),
            "r (conflict from desk 2026-11-29 2319 0) (conflict from desk 2026-11-29 2319).txt");
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
