// The chunk cache against the real server: files only read are let go from
// memory beyond max_entries (the least recently used first) and come back
// from their saved state with the same bytes; files changed here stay.
#include "cache/chunk_cache.h"

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include <gtest/gtest.h>

#include "client/local_state.h"
#include "helpers.h"
#include "test_server.h"

namespace tidefs {
namespace {

class ChunkCacheTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = MakeTempDir("tidefs-cache");
    std::filesystem::create_directories(dir_ + "/src");
    for (int i = 0; i < kFiles; ++i)
      std::ofstream(dir_ + "/src/f" + std::to_string(i), std::ios::binary) << Content(i);
    ImportOptions io;
    io.src_dir = dir_ + "/src";
    ImportStats st;
    ASSERT_TRUE(Import(&client_, io, &st).ok());
    auto all = client_.ListAll(kRootId);
    ASSERT_TRUE(all.ok()) << all.status().ToString();
    for (auto& n : *all) files_[std::stoi(n.name.substr(1))] = n;
    ASSERT_EQ(files_.size(), static_cast<size_t>(kFiles));
    auto state = LocalState::Open(dir_ + "/state.db", "demo");
    ASSERT_TRUE(state.ok()) << state.status().ToString();
    state_ = std::move(*state);
  }
  void TearDown() override {
    cache_.reset();
    state_.reset();
    std::filesystem::remove_all(dir_);
  }
  static std::string Content(int i) { return RandomBytes(1000 + 97 * i, 500 + i); }
  std::unique_ptr<ChunkCache> NewCache(size_t max_entries) {
    ChunkCacheOptions o;
    o.max_entries = max_entries;
    o.retry_for = std::chrono::milliseconds(500);
    return std::make_unique<ChunkCache>(dir_ + "/cache", &client_, state_.get(), o);
  }
  std::string ReadOf(ChunkCache& c, int i) {
    std::string out(files_[i].size, '\0');
    auto r = c.Read(files_[i], 0, out.size(), out.data());
    if (!r.ok()) return "error: " + r.status().ToString();
    out.resize(*r);
    return out;
  }
  static constexpr int kFiles = 120;
  TestServer server_;
  ApiClient client_ = server_.Client(server_.rw_token);
  std::string dir_;
  std::map<int, NodeRecord> files_;
  std::unique_ptr<LocalState> state_;
  std::unique_ptr<ChunkCache> cache_;
};

// An opener of a newer version retires the entry it replaces; when it
// fails (here: a version the server does not have), a change of the older
// version opens the node again, never writes into the retired entry (which
// fetches nothing more: a read of what it lacked failed), and what it
// wrote reads back with the rest.
TEST_F(ChunkCacheTest, AChangeNeverGoesIntoAnEntryANewerVersionRetired) {
  const std::string data = RandomBytes(kChunkSize + 100000, 77);
  CommitOp op = CreateOp(client_, kRootId, "two-chunks", data);
  CommitReply made = MustCommit(client_, {op});
  ASSERT_EQ(made.items.size(), 1u);
  const NodeRecord v1 = made.items[0];
  cache_ = NewCache(1000);
  std::string buf(16, '\0');
  ASSERT_TRUE(cache_->Read(v1, 0, buf.size(), buf.data()).ok());  // the first chunk only
  NodeRecord v2 = v1;
  v2.version = v1.version + 1;
  EXPECT_FALSE(cache_->Read(v2, 0, buf.size(), buf.data()).ok()) << "the server has no such version";
  ASSERT_TRUE(cache_->Write(v1, 10, "CHANGED", 7).ok());
  std::string want = data;
  want.replace(10, 7, "CHANGED");
  std::string got(data.size(), '\0');
  auto r = cache_->Read(v1, 0, got.size(), got.data());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, got.size());
  EXPECT_TRUE(got == want);
}

// Readers of a file while newer versions of it are opened (each opener
// retires the entry and punches the blocks that changed out of the cache
// file it shares): every read gets whole blocks of some version, never
// the holes. (Each read here takes the whole file, more chunks than stay
// in memory: from the cache file, long enough for an opener to come.)
TEST_F(ChunkCacheTest, AReadNeverSeesTheHolesANewerVersionPunches) {
  const std::string a = RandomBytes(16 * kChunkSize, 91), b = RandomBytes(16 * kChunkSize, 92);
  CommitOp op = CreateOp(client_, kRootId, "flip", a), with_b;
  UploadContent(client_, b, &with_b);
  std::vector<NodeRecord> versions = {MustCommit(client_, {op}).items.at(0)};
  constexpr int kVersions = 10;
  for (int v = 1; v < kVersions; ++v) {  // a, b, a, b...: every block changes each time
    CommitOp w = v % 2 ? with_b : op;
    w.type = OpType::kWrite;
    w.has_base = true;
    w.base = versions.back().version;
    w.id = op.id;
    versions.push_back(MustCommit(client_, {w}).items.at(0));
  }
  cache_ = NewCache(1000);
  std::atomic<bool> done{false};
  std::atomic<int> bad{0}, reads{0}, started{0};
  std::thread reader([&] {
    std::string got(a.size(), '\0');
    while (!done) {
      // (The oldest record: served by whichever entry is newest.)
      ++started;
      auto r = cache_->Read(versions[0], 0, got.size(), got.data());
      if (!r.ok() || *r != got.size()) {
        ADD_FAILURE() << (r.ok() ? "short read " + std::to_string(*r) : r.status().ToString());
        ++bad;
        continue;
      }
      ++reads;
      for (size_t off = 0; off < got.size(); off += kBlockSize)
        if (got.compare(off, kBlockSize, a, off, kBlockSize) != 0 && got.compare(off, kBlockSize, b, off, kBlockSize) != 0)
          ++bad;
    }
  });
  std::string buf(16, '\0');
  for (const NodeRecord& v : versions) {
    // A read that found the file all here (it read it whole before) has
    // just begun: the newer version opens while it reads.
    const int done_reads = reads;
    ASSERT_TRUE(Within(std::chrono::seconds(30), [&] { return reads > done_reads || bad > 0; }));
    const int begun = started;
    ASSERT_TRUE(Within(std::chrono::seconds(30), [&] { return started > begun || bad > 0; }));
    ASSERT_TRUE(cache_->Read(v, 0, buf.size(), buf.data()).ok());
  }
  done = true;
  reader.join();
  EXPECT_EQ(bad, 0) << "reads got blocks of neither version (holes), or failed, over " << reads << " reads";
}

// A block that keeps some of the server's bytes when written (in part,
// or the old last block of a write past the end) is dirty, and the cache
// file is synced before a record may say so; a block already dirty and
// synced needs nothing more.
TEST_F(ChunkCacheTest, ABlockWrittenInPartIsDirtyAndOnDiskBeforeItsRecordSaysSo) {
  cache_ = NewCache(1000);
  const NodeRecord& f = files_[100];  // 10,700 bytes: one block
  ASSERT_EQ(ReadOf(*cache_, 100), Content(100));
  EXPECT_FALSE(cache_->NeedsSync(f.id));
  ASSERT_TRUE(cache_->Write(f, 3 * kBlockSize, "x", 1).ok());
  auto rec = cache_->FileRecord(f.id);
  ASSERT_TRUE(rec && rec->dirty);
  ASSERT_GE(rec->dirty->size(), 4u);
  EXPECT_TRUE((*rec->dirty)[0]) << "the old last block is not the manifest's any more";
  EXPECT_TRUE(cache_->NeedsSync(f.id));
  ASSERT_TRUE(cache_->SyncFile(f.id).ok());
  EXPECT_FALSE(cache_->NeedsSync(f.id));
  ASSERT_TRUE(cache_->Write(f, 5, "again", 5).ok());
  EXPECT_FALSE(cache_->NeedsSync(f.id)) << "a block dirty and synced already";
  const NodeRecord& g = files_[101];
  ASSERT_EQ(ReadOf(*cache_, 101), Content(101));
  ASSERT_TRUE(cache_->Write(g, 10, "part", 4).ok());
  EXPECT_TRUE(cache_->NeedsSync(g.id));
  ASSERT_TRUE(cache_->FileRecord(g.id)->dirty.value()[0]);
}

TEST_F(ChunkCacheTest, FilesOnlyReadAreLetGoBeyondTheBoundAndReadTheSameAfter) {
  cache_ = NewCache(40);
  // One written here first: it stays whatever is read after it.
  const std::string mine = "written here, not sent";
  ASSERT_TRUE(cache_->Write(files_[0], 0, mine.data(), mine.size()).ok());
  for (int i = 1; i < kFiles; ++i) ASSERT_EQ(ReadOf(*cache_, i), Content(i)) << i;
  auto st = cache_->stats();
  EXPECT_LE(st.files_in_memory, 40u);
  EXPECT_GE(st.files_let_go, static_cast<uint64_t>(kFiles - 40));
  EXPECT_EQ(st.chunks_fetched, static_cast<uint64_t>(kFiles));  // (the written one's block was completed first)
  EXPECT_TRUE(cache_->Holds(files_[0].id));
  EXPECT_FALSE(cache_->Holds(files_[1].id));  // the oldest read
  EXPECT_TRUE(cache_->Holds(files_[kFiles - 1].id));  // the newest
  // Let go and read again: from the cache file, checked against the saved
  // manifest, nothing fetched; the file written here kept its bytes.
  for (int i = 1; i < kFiles; ++i) ASSERT_EQ(ReadOf(*cache_, i), Content(i)) << i;
  EXPECT_EQ(cache_->stats().chunks_fetched, static_cast<uint64_t>(kFiles));
  EXPECT_EQ(cache_->stats().verify_failures, 0u);
  EXPECT_EQ(ReadOf(*cache_, 0).substr(0, mine.size()), mine);
  // With the server gone, every file read before still reads.
  server_.Stop();
  for (int i = 1; i < kFiles; ++i) ASSERT_EQ(ReadOf(*cache_, i), Content(i)) << i;
  server_.Start();
}

// A let-go file whose cache file was damaged meanwhile: its first read
// re-hashes what the saved bitmap claims and fetches the bad block again.
TEST_F(ChunkCacheTest, ALetGoFileIsCheckedAgainstItsManifestWhenItComesBack) {
  cache_ = NewCache(4);
  for (int i = 0; i < 10; ++i) ASSERT_EQ(ReadOf(*cache_, i), Content(i));
  ASSERT_FALSE(cache_->Holds(files_[0].id));
  {
    std::fstream f(dir_ + "/cache/data/" + std::to_string(files_[0].id), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(10);
    f.put('\x55' ^ Content(0)[10]);
  }
  const uint64_t fetched = cache_->stats().chunks_fetched;
  EXPECT_EQ(ReadOf(*cache_, 0), Content(0));
  EXPECT_EQ(cache_->stats().verify_failures, 0u);  // (a cached block failing its check is fetched, not counted)
  EXPECT_EQ(cache_->stats().chunks_fetched, fetched + 1);
}

}  // namespace
}  // namespace tidefs
