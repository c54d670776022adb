#include "core/config_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

TEST(ConfigFile, ReadsSectionsKeysCommentsAndSpaces) {
  auto c = ParseConfig(
      "# mine\n\n[demo]\nserver = http://h:7750/\r\n  token=tdf_a_b  \n; note\n[big one]\ndevice = laptop\n", "cfg");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->size(), 2u);
  EXPECT_EQ(c->at("demo").server, "http://h:7750/");
  EXPECT_EQ(c->at("demo").token, "tdf_a_b");
  EXPECT_EQ(c->at("demo").device, "");
  EXPECT_EQ(c->at("big one").device, "laptop");
  EXPECT_TRUE(ParseConfig("", "cfg").ok());
}

TEST(ConfigFile, RefusesBadLinesNamingTheLine) {
  struct Case {
    const char* text;
    const char* says;
  } cases[] = {
      {"token = x\n", "line 1: \"token\" comes before any [project] section"},
      {"[demo\n", "line 1: a section is [project name]"},
      {"[]\n", "line 1: the section [] names no project"},
      {"[a]\n[a]\n", "line 2: project [a] appears twice"},
      {"[a]\njust words\n", "line 2: expected [project], key = value"},
      {"[a]\npassword = x\n", "line 2: unknown key \"password\""},
      {"[a]\ntoken =\n", "line 2: token has no value"},
      {"[a]\ntoken = x\ntoken = y\n", "line 3: token is set twice in [a]"},
      {"[a]\ntoken = x\x01y\n", "line 2: control characters"},
  };
  for (const auto& c : cases) {
    auto r = ParseConfig(c.text, "cfg");
    ASSERT_FALSE(r.ok()) << c.text;
    EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
    EXPECT_NE(r.status().message().find(std::string("cfg ") + c.says), std::string::npos) << r.status().message();
  }
}

class ConfigFileOnDisk : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tidefs-config-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Write(const std::string& text, mode_t mode) {
    const std::string path = dir_ + "/config";
    std::ofstream(path) << text;
    EXPECT_EQ(chmod(path.c_str(), mode), 0);
    return path;
  }
  std::string dir_;
};

TEST_F(ConfigFileOnDisk, AMissingFileIsEmptyUnlessNamed) {
  auto quiet = LoadConfig(dir_ + "/none", false);
  ASSERT_TRUE(quiet.ok());
  EXPECT_TRUE(quiet->empty());
  auto named = LoadConfig(dir_ + "/none", true);
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.status().message().find(dir_ + "/none"), std::string::npos);
  EXPECT_FALSE(LoadConfig(dir_, true).ok());  // a directory
}

TEST_F(ConfigFileOnDisk, ATokenOthersMayReadIsRefusedWithTheFix) {
  const std::string path = Write("[demo]\ntoken = tdf_secret\n", 0644);
  auto r = LoadConfig(path, true);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
  EXPECT_NE(r.status().message().find("chmod 600 " + path), std::string::npos);
  ASSERT_EQ(chmod(path.c_str(), 0600), 0);
  auto ok = LoadConfig(path, true);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->at("demo").token, "tdf_secret");
  // Without a token, a readable file is fine.
  EXPECT_TRUE(LoadConfig(Write("[demo]\nserver = http://h\n", 0644), true).ok());
}

TEST(ConfigFile, SameServerIgnoresTrailingSlashesOnly) {
  EXPECT_TRUE(SameServer("http://h:1/", "http://h:1"));
  EXPECT_TRUE(SameServer("http://h:1", "http://h:1//"));
  EXPECT_FALSE(SameServer("http://h:1", "http://h:2"));
  EXPECT_FALSE(SameServer("http://h:1", "https://h:1"));
}

}  // namespace
}  // namespace tidefs
