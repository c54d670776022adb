#include "core/config_file.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

TEST(ConfigFile, ReadsSectionsKeysCommentsAndSpaces) {
  auto c = ParseConfig(
      "\xEF\xBB\xBF# mine\n\n[demo]\nserver = http://h:7750/\r\n  token\t=\ttdf_a=b  \n; note\n[big one]\ndevice = laptop",
      "cfg");
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  ASSERT_EQ(c->size(), 2u);
  EXPECT_EQ(c->at("demo").server, "http://h:7750/");
  EXPECT_EQ(c->at("demo").token, "tdf_a=b");
  EXPECT_EQ(c->at("demo").device, "");
  EXPECT_EQ(c->at("big one").device, "laptop");
  EXPECT_TRUE(ParseConfig("", "cfg").ok());
}

TEST(ConfigFile, RefusesBadLinesNamingTheLine) {
  using namespace std::string_view_literals;  // (the NUL case needs its length)
  struct Case {
    std::string_view text;
    const char* says;
  } cases[] = {
      {"token = x\n"sv, "line 1: \"token\" comes before any [project] section"},
      {"[demo\n"sv, "line 1: a section is [project name]"},
      {"[]\n"sv, "line 1: the section [] names no project"},
      {"[a]\n[a]\n"sv, "line 2: project [a] appears twice"},
      {"[a]\njust words\n"sv, "line 2: expected [project], key = value"},
      {"[a]\npassword = x\n"sv, "line 2: unknown key \"password\""},
      {"[a]\nserver =\n"sv, "line 2: server has no value"},
      {"[a]\nserver = x\nserver = y\n"sv, "line 3: server is set twice in [a]"},
      {"[a]\nserver = x\x01y\n"sv, "line 2: control characters"},
      {"[a]\nserver = x\0y\n"sv, "line 2: control characters"},
      {"[a\tb]\n"sv, "line 1: a project name holds no tab"},
      {"[a] # prod\n"sv, "line 1: a section is [project name] alone on its line"},
      {"[a]\nserver = http://h\ntoken = tdf_x  # laptop\n"sv, "line 3: token holds a space, a quote, # or ;"},
      {"[a]\nserver = \"http://h\"\n"sv, "line 2: server holds a space, a quote"},
      {"[a]\ndevice = my laptop\n"sv, "line 2: device holds a space"},
      {"[a]\ntoken = x\n[b]\n"sv, "line 1: [a] has a token but no server = URL"},
      {"[b]\nserver = http://h\n[a]\ntoken = x\n"sv, "line 3: [a] has a token but no server = URL"},
      {"[a]\nthis_is_a_very_long_key_that_goes_on_and_on_and_on = 1\n"sv,
       "line 2: unknown key \"this_is_a_very_long_key_that_goes_on_and...\""},
  };
  for (const auto& c : cases) {
    auto r = ParseConfig(c.text, "cfg");
    ASSERT_FALSE(r.ok()) << c.says;
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
  const std::string text = "[demo]\nserver = http://h\ntoken = tdf_secret\n";
  for (mode_t mode : {0644, 0640, 0604}) {
    const std::string path = Write(text, mode);
    auto r = LoadConfig(path, true);
    ASSERT_FALSE(r.ok()) << std::oct << mode;
    EXPECT_EQ(r.status().code(), Code::kPermissionDenied);
    EXPECT_NE(r.status().message().find("chmod 600 " + path), std::string::npos) << r.status().message();
  }
  auto ok = LoadConfig(Write(text, 0600), true);
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->at("demo").token, "tdf_secret");
  // Without a token, others may read it.
  EXPECT_TRUE(LoadConfig(Write("[demo]\nserver = http://h\n", 0644), true).ok());
}

TEST_F(ConfigFileOnDisk, AFileOthersMayChangeOrAnotherUserOwnsIsRefused) {
  // It says where tokens go, so it must be only its owner's to write.
  const std::string path = Write("[demo]\nserver = http://h\n", 0664);
  auto writable = LoadConfig(path, true);
  ASSERT_FALSE(writable.ok());
  EXPECT_NE(writable.status().message().find("chmod go-w " + path), std::string::npos) << writable.status().message();
  ASSERT_EQ(chmod(path.c_str(), 0644), 0);
  ASSERT_EQ(chown(path.c_str(), 65534, 65534), 0) << "the unit tests run as root";
  auto foreign = LoadConfig(path, true);
  ASSERT_FALSE(foreign.ok());
  EXPECT_NE(foreign.status().message().find("belongs to another user"), std::string::npos) << foreign.status().message();
}

TEST_F(ConfigFileOnDisk, DevNullIsNoConfigAndAFifoDoesNotHang) {
  auto none = LoadConfig("/dev/null", true);
  ASSERT_TRUE(none.ok()) << none.status().ToString();
  EXPECT_TRUE(none->empty());
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
  auto r = LoadConfig(fifo, true);  // no writer: a blocking open would never return
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a regular file"), std::string::npos) << r.status().message();
}

TEST(ConfigFile, DefaultPathFollowsXdgThenHome) {
  struct Env {  // restores the two variables
    bool had_xdg = getenv("XDG_CONFIG_HOME") != nullptr, had_home = getenv("HOME") != nullptr;
    std::string xdg = had_xdg ? getenv("XDG_CONFIG_HOME") : "", home = had_home ? getenv("HOME") : "";
    ~Env() {
      had_xdg ? setenv("XDG_CONFIG_HOME", xdg.c_str(), 1) : unsetenv("XDG_CONFIG_HOME");
      had_home ? setenv("HOME", home.c_str(), 1) : unsetenv("HOME");
    }
  } restore;
  setenv("XDG_CONFIG_HOME", "/x", 1);
  setenv("HOME", "/h", 1);
  EXPECT_EQ(DefaultConfigPath(), "/x/tidefs/config");
  setenv("XDG_CONFIG_HOME", "relative", 1);  // not absolute: ignored, as the XDG spec says
  EXPECT_EQ(DefaultConfigPath(), "/h/.config/tidefs/config");
  unsetenv("XDG_CONFIG_HOME");
  unsetenv("HOME");
  EXPECT_EQ(DefaultConfigPath(), "");
}

TEST(ConfigFile, SameServerIgnoresTrailingSlashesOnly) {
  EXPECT_TRUE(SameServer("http://h:1/", "http://h:1"));
  EXPECT_TRUE(SameServer("http://h:1", "http://h:1//"));
  EXPECT_FALSE(SameServer("http://h:1", "http://h:2"));
  EXPECT_FALSE(SameServer("http://h:1", "https://h:1"));
}

}  // namespace
}  // namespace tidefs
