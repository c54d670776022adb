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
