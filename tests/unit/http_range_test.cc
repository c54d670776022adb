#include "core/http_range.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(HttpRange, ParsesForms) {
  ByteRange r;
  ASSERT_EQ(ParseRange("bytes=0-99", 1000, &r), RangeResult::kSatisfiable);
  EXPECT_EQ(r.first, 0u);
  EXPECT_EQ(r.last, 99u);
  ASSERT_EQ(ParseRange("bytes=900-", 1000, &r), RangeResult::kSatisfiable);
  EXPECT_EQ(r.last, 999u);
  ASSERT_EQ(ParseRange("bytes=-10", 1000, &r), RangeResult::kSatisfiable);
  EXPECT_EQ(r.first, 990u);
  ASSERT_EQ(ParseRange("bytes=500-5000", 1000, &r), RangeResult::kSatisfiable);
  EXPECT_EQ(r.last, 999u);
  ASSERT_EQ(ParseRange("bytes=-5000", 1000, &r), RangeResult::kSatisfiable);
  EXPECT_EQ(r.first, 0u);
}

TEST(HttpRange, UnsatisfiableAndIgnored) {
  ByteRange r;
  EXPECT_EQ(ParseRange("bytes=1000-", 1000, &r), RangeResult::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=-0", 1000, &r), RangeResult::kUnsatisfiable);
  EXPECT_EQ(ParseRange("bytes=0-0", 0, &r), RangeResult::kUnsatisfiable);
  EXPECT_EQ(ParseRange("items=0-1", 1000, &r), RangeResult::kNone);
  EXPECT_EQ(ParseRange("bytes=5-1", 1000, &r), RangeResult::kNone);
  EXPECT_EQ(ParseRange("bytes=0-1,5-6", 1000, &r), RangeResult::kNone);
  EXPECT_EQ(ParseRange("bytes=a-b", 1000, &r), RangeResult::kNone);
  EXPECT_EQ(ParseRange("bytes=99999999999999999999999-", 1000, &r), RangeResult::kNone);
}

}  // namespace tidefs
