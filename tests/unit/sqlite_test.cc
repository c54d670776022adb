#include "core/sqlite.h"

#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <thread>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

class WalCheckpointerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tidefs-sqlite-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/t.db";
    auto db = Db::Open(path_);
    ASSERT_TRUE(db.ok()) << db.status().ToString();
    db_ = std::move(*db);
    ASSERT_TRUE(db_->Exec("CREATE TABLE t(k INTEGER PRIMARY KEY, v TEXT)").ok());
    auto c = WalCheckpointer::Start(db_.get());
    ASSERT_TRUE(c.ok()) << c.status().ToString();
    checkpointer_ = std::move(*c);
  }
  void TearDown() override {
    checkpointer_.reset();
    db_.reset();
    std::filesystem::remove_all(dir_);
  }

  static uint64_t SizeOf(const std::string& path) {
    struct stat st{};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  }
  // Rows scattered over the table (distinct keys: i * 7919 mod a prime).
  static void Insert(Db* db, int rows, int from) {
    Transaction tx(db);
    ASSERT_TRUE(tx.status().ok());
    for (int i = from; i < from + rows; ++i) {
      auto s = db->Prepare("INSERT INTO t(k, v) VALUES(?1, ?2)");
      ASSERT_TRUE(s.ok());
      s->Bind(1, static_cast<int64_t>(i) * 7919 % 1000003).Bind(2, std::string(900, 'v'));
      ASSERT_TRUE(s->Run().ok());
    }
    ASSERT_TRUE(tx.Commit().ok());
  }

  std::string dir_, path_;
  std::unique_ptr<Db> db_;
  std::unique_ptr<WalCheckpointer> checkpointer_;
};

TEST_F(WalCheckpointerTest, CommitsPastTheThresholdAreCheckpointedByItsThread) {
  const uint64_t before = SizeOf(path_);
  // Well past 1,000 pages, in commits that each stay below the inline limit.
  for (int round = 0; round < 6; ++round) Insert(db_.get(), 1000, round * 1000);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (checkpointer_->checkpoints() == 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_GT(checkpointer_->checkpoints(), 0u) << "no checkpoint ran on the thread";
  // The rows reached the database file itself.
  EXPECT_GT(SizeOf(path_), before + (1u << 20));
  checkpointer_.reset();
  // Without it the database still takes writes, and keeps every row.
  Insert(db_.get(), 100, 100000);
  auto s = db_->Prepare("SELECT count(*) FROM t");
  ASSERT_TRUE(s.ok());
  ASSERT_TRUE(s->Step());
  EXPECT_EQ(s->Int(0), 6100);
}

TEST_F(WalCheckpointerTest, ACommitFarPastTheLimitCheckpointsInline) {
  // One transaction of ~80 MiB: over 16,000 WAL pages at its commit, so
  // the commit itself checkpoints (the thread is not even woken).
  Insert(db_.get(), 80000, 0);
  EXPECT_GT(SizeOf(path_), 64u << 20) << "the commit returned before its rows reached the database file";
  EXPECT_EQ(checkpointer_->checkpoints(), 0u);
}

}  // namespace
}  // namespace tidefs
