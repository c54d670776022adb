// `tidefs import` end to end: the real binary uploads a local tree.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "test_server.h"

namespace tidefs {
namespace {

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
}

class ImportTest : public ::testing::Test {
 protected:
  void SetUp() override { src_ = MakeTempDir("tidefs-import-src"); }
  void TearDown() override { std::filesystem::remove_all(src_); }
  int RunImport(const std::string& extra, std::string* out) {
    return RunCommand(std::string(TIDEFS_BINARY) + " import --server " + server_.url() + " --project demo --token " +
                          server_.rw_token + " " + src_ + " " + extra + " 2>&1",
                      out);
  }
  Result<NodeRecord> Find(uint64_t parent, const std::string& name) {
    auto all = c_.ListAll(parent);
    if (!all.ok()) return all.status();
    for (auto& n : *all)
      if (n.name == name) return n;
    return Status::NotFound(name);
  }
  TestServer server_;
  ApiClient c_ = server_.Client(server_.rw_token);
  std::string src_;
};

TEST_F(ImportTest, UploadsATreeAndIsIdempotent) {
  std::string big = RandomBytes(9 * 1024 * 1024 + 7, 1);
  mkdir((src_ + "/sub").c_str(), 0755);
  mkdir((src_ + "/sub/deeper").c_str(), 0700);
  WriteFile(src_ + "/a.txt", "alpha\n");
  WriteFile(src_ + "/empty", "");
  WriteFile(src_ + "/sub/big.bin", big);
  WriteFile(src_ + "/sub/deeper/same1", std::string(5000, 's'));
  WriteFile(src_ + "/sub/deeper/same2", std::string(5000, 's'));
  ASSERT_EQ(symlink("a.txt", (src_ + "/link").c_str()), 0);

  std::string out;
  ASSERT_EQ(RunImport("projects/x", &out), 0) << out;
  EXPECT_NE(out.find("imported 5 files, 4 dirs, 1 symlinks"), std::string::npos) << out;

  auto projects = Find(kRootId, "projects");
  ASSERT_TRUE(projects.ok());
  auto x = Find(projects->id, "x");
  ASSERT_TRUE(x.ok());
  auto a = Find(x->id, "a.txt");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(*c_.GetContent(a->id, 0, 0, 5), "alpha\n");
  auto link = Find(x->id, "link");
  ASSERT_TRUE(link.ok());
  EXPECT_EQ(link->kind, NodeKind::kSymlink);
  EXPECT_EQ(link->target, "a.txt");
  auto sub = Find(x->id, "sub");
  auto bigrec = Find(sub->id, "big.bin");
  ASSERT_TRUE(bigrec.ok());
  EXPECT_EQ(bigrec->size, big.size());
  auto whole = c_.Raw("GET", "/nodes/" + std::to_string(bigrec->id) + "/content");
  EXPECT_EQ(whole->body, big);
  auto deeper = Find(sub->id, "deeper");
  EXPECT_EQ(deeper->mode, 0700u);

  // Again: nothing changed, nothing committed.
  uint64_t head = Head(c_);
  ASSERT_EQ(RunImport("projects/x", &out), 0) << out;
  EXPECT_NE(out.find("imported 0 files, 0 dirs, 0 symlinks (5 unchanged)"), std::string::npos) << out;
  EXPECT_EQ(Head(c_), head);

  // A changed file becomes a new version of the same node.
  WriteFile(src_ + "/a.txt", "alpha, edited\n");
  ASSERT_EQ(RunImport("projects/x", &out), 0) << out;
  auto a2 = Find(x->id, "a.txt");
  EXPECT_EQ(a2->id, a->id);
  EXPECT_EQ(a2->version, 2u);
  EXPECT_EQ(*c_.GetContent(a->id, 0, 0, 13), "alpha, edited\n");
}

TEST_F(ImportTest, RefusesBadArguments) {
  std::string out;
  EXPECT_NE(RunCommand(std::string(TIDEFS_BINARY) + " import --server " + server_.url() +
                           " --project demo --token wrong " + src_ + " 2>&1", &out), 0);
  EXPECT_NE(out.find("unknown or revoked token"), std::string::npos) << out;
  EXPECT_NE(RunImport("a/../b", &out), 0);
  EXPECT_NE(RunCommand(std::string(TIDEFS_BINARY) + " import --server " + server_.url() +
                           " --project demo --token " + server_.rw_token + " /nonexistent 2>&1", &out), 0);
  EXPECT_NE(out.find("not a directory"), std::string::npos) << out;
}

}  // namespace
}  // namespace tidefs
