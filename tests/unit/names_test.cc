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
