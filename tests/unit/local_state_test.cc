// The mount's local state: the intent log keeps what a killed mount made
// and had not saved in its databases yet, and the next Open replays it
// exactly once; a torn or damaged end is set aside, never dropped.
#include "client/local_state.h"
#include "core/sqlite.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

class LocalStateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/tidefs-state-XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<LocalState> Open() {
    auto s = LocalState::Open(dir_ + "/state.db", "p");
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? std::move(*s) : nullptr;
  }

  static LocalChange Change(uint64_t ticket, uint64_t id, const std::string& name) {
    LocalChange c;
    c.ticket = ticket;
    NodeRecord n;
    n.id = id;
    n.parent = kRootId;
    n.name = name;
    n.size = 3;
    c.rows.push_back(n);
    JournalEntry e;
    e.op.type = OpType::kCreate;
    e.op.id = id;
    e.op.parent = kRootId;
    e.op.name = name;
    c.entries.push_back(e);
    CachedFile f;
    f.id = id;
    f.manifest.size = 70000;
    f.manifest.blocks = {HashBlock("a"), HashBlock("b")};
    f.present = {false, true};
    c.files.push_back(f);
    return c;
  }
  // The same with `bytes` as the new file's staged first write.
  static LocalChange StagedChange(uint64_t ticket, uint64_t id, const std::string& name, const std::string& bytes) {
    LocalChange c = Change(ticket, id, name);
    c.staged.push_back({id, bytes});
    return c;
  }
  static std::string FileText(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // The changes the intent log holds (it is preallocated: its size says nothing).
  size_t Logged() {
    return DecodeLocalLog(FileText(dir_ + "/intent.log")).changes.size();
  }

  std::string dir_;
};

// A directory's entries come from one covering index (a cold listing
// reads a few pages, not one per entry); a cache made before it gets it
// on its next open, and the listing is the same.
TEST_F(LocalStateTest, ListingsComeFromTheCoveringIndexAlsoForAnOlderCache) {
  Snapshot snap;
  snap.seq = 7;
  for (uint64_t i = 0; i < 50; ++i) {
    NodeRecord n;
    n.id = 1000 + (i * 7919) % 50;  // ids out of name order, as random ids are
    n.parent = i < 40 ? kRootId : 1000;
    n.name = "n" + std::to_string(i);
    n.kind = i == 0 ? NodeKind::kDir : NodeKind::kFile;
    n.size = i;
    snap.nodes.push_back(n);
  }
  auto names = [](const std::vector<NodeRecord>& v) {
    std::vector<std::string> out;
    for (const auto& n : v) out.push_back(n.name + "/" + std::to_string(n.id) + "/" + std::to_string(n.size));
    return out;
  };
  std::vector<std::string> root, sub;
  {
    auto s = Open();
    ASSERT_NE(s, nullptr);
    ASSERT_TRUE(s->SaveSnapshot(snap).ok());
    auto r = s->Children(kRootId), d = s->Children(1000);
    ASSERT_TRUE(r.ok() && d.ok());
    root = names(*r);
    sub = names(*d);
    EXPECT_EQ(root.size(), 40u);
    EXPECT_EQ(sub.size(), 10u);
    EXPECT_TRUE(std::is_sorted(root.begin(), root.end()));
  }
  auto indexes = [&] {
    auto db = Db::Open(dir_ + "/state.db", false);
    EXPECT_TRUE(db.ok());
    std::string out;
    auto q = (*db)->Prepare("SELECT name FROM sqlite_schema WHERE type='index' AND tbl_name='nodes' ORDER BY name");
    EXPECT_TRUE(q.ok());
    while (q->Step()) out += q->Text(0) + " ";
    return out;
  };
  EXPECT_EQ(indexes(), "nodes_listing ");
  {  // The listing reads the index alone, never the table.
    auto db = Db::Open(dir_ + "/state.db", false);
    ASSERT_TRUE(db.ok());
    auto q = (*db)->Prepare(
        "EXPLAIN QUERY PLAN SELECT id, parent, name, kind, mode, size, mtime_ns, version, seq, target FROM nodes "
        "WHERE parent=1 ORDER BY name");
    ASSERT_TRUE(q.ok());
    std::string plan;
    while (q->Step()) plan += q->Text(3) + "\n";
    EXPECT_NE(plan.find("USING COVERING INDEX nodes_listing"), std::string::npos) << plan;
    EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << plan;
  }
  {  // The schema of an older cache: (parent, name) only.
    auto db = Db::Open(dir_ + "/state.db", false);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("DROP INDEX nodes_listing; CREATE INDEX nodes_parent ON nodes(parent, name)").ok());
  }
  EXPECT_EQ(indexes(), "nodes_parent ");
  {
    auto s = Open();  // (exclusive: the schema is looked at once it is closed)
    ASSERT_NE(s, nullptr);
    auto r = s->Children(kRootId), d = s->Children(1000);
    ASSERT_TRUE(r.ok() && d.ok());
    EXPECT_EQ(names(*r), root);
    EXPECT_EQ(names(*d), sub);
  }
  EXPECT_EQ(indexes(), "nodes_listing ");
}

TEST_F(LocalStateTest, AKilledMountsLoggedChangesAreReplayedOnce) {
  {
    auto s = Open();
    ASSERT_TRUE(s->LogChange(Change(1, 100, "a.txt")).ok());
    ASSERT_TRUE(s->LogChange(Change(2, 101, "b.txt")).ok());
    EXPECT_EQ(Logged(), 2u);
    // Dies here: nothing saved in the databases.
  }
  {
    auto s = Open();
    EXPECT_EQ(s->last_ticket(), 2u);
    EXPECT_EQ(Logged(), 0u) << "replayed and emptied";
    auto j = s->PendingJournal(10);
    ASSERT_TRUE(j.ok());
    ASSERT_EQ(j->size(), 2u);
    EXPECT_EQ((*j)[0].op.name, "a.txt");
    EXPECT_EQ((*j)[1].op.name, "b.txt");
    auto n = s->GetNode(101);
    ASSERT_TRUE(n.ok() && *n);
    EXPECT_EQ((*n)->name, "b.txt");
    auto f = s->LoadFile(100);
    ASSERT_TRUE(f.ok() && *f);
    EXPECT_EQ((*f)->present, (std::vector<bool>{false, true}));
    // The next change is logged and saved the normal way; a crash after
    // the save but before the log was emptied must not add it twice.
    LocalChange c = Change(3, 102, "c.txt");
    ASSERT_TRUE(s->LogChange(c).ok());
    ASSERT_TRUE(s->SaveChanges({&c}).ok());
  }
  auto s = Open();
  auto j = s->PendingJournal(10);
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(j->size(), 3u);
  EXPECT_EQ(s->last_ticket(), 3u);
}

// Versions our commits made survive a reopen until dropped (no change
// waits any more), those of nodes with a row too (one may be deleted here
// right after they are read, a change before the delete naming the kept
// version).
TEST_F(LocalStateTest, KnownVersionsSurviveAReopenUntilDropped) {
  {
    auto s = Open();
    for (uint64_t t : {1, 2, 3}) {
      LocalChange c = Change(t, 100 + t, "f" + std::to_string(t));
      ASSERT_TRUE(s->LogChange(c).ok());
      ASSERT_TRUE(s->SaveChanges({&c}).ok());
    }
    auto j = s->PendingJournal(10);
    ASSERT_TRUE(j.ok() && j->size() == 3u);
    NodeRecord made;
    made.id = 101;
    made.version = 7;
    ASSERT_TRUE(s->CompleteJournal((*j)[0].seq, {made}, {{101, 7}, {201, 7}, {202, 4}}).ok());
    // A lower one does not take a version back.
    ASSERT_TRUE(s->CompleteJournal((*j)[0].seq, {}, {{201, 5}}).ok());
  }
  {
    auto s = Open();
    auto k = s->KnownVersions();
    ASSERT_TRUE(k.ok());
    EXPECT_EQ(*k, (std::unordered_map<uint64_t, uint64_t>{{101, 7}, {201, 7}, {202, 4}}));
    // A delete's record drops its node's.
    NodeRecord gone;
    gone.id = 202;
    gone.deleted = true;
    auto j = s->PendingJournal(10);
    ASSERT_TRUE(j.ok() && j->size() == 2u);
    ASSERT_TRUE(s->CompleteJournal((*j)[0].seq, {gone}).ok());
    k = s->KnownVersions();
    ASSERT_TRUE(k.ok());
    EXPECT_EQ(*k, (std::unordered_map<uint64_t, uint64_t>{{101, 7}, {201, 7}}));
    ASSERT_TRUE(s->CompleteJournal((*j)[1].seq, {}, {}, /*forget_known=*/true).ok());
    k = s->KnownVersions();
    ASSERT_TRUE(k.ok());
    EXPECT_TRUE(k->empty()) << "kept once none was needed";
  }
}

// A version kept for a change still waiting moves on with a later commit
// of the node that no change waits on (its lost answer replayed, say):
// kept at the older one, a delete made after would name it after a
// restart, be refused as stale, and the deleted file come back.
TEST_F(LocalStateTest, AKnownVersionMovesOnWithALaterCommitOfItsNode) {
  auto s = Open();
  for (uint64_t t : {1, 2}) {
    LocalChange c = Change(t, 100 + t, "f" + std::to_string(t));
    ASSERT_TRUE(s->LogChange(c).ok());
    ASSERT_TRUE(s->SaveChanges({&c}).ok());
  }
  auto j = s->PendingJournal(10);
  ASSERT_TRUE(j.ok() && j->size() == 2u);
  NodeRecord made;
  made.id = 301;
  made.version = 1;
  ASSERT_TRUE(s->CompleteJournal(0, {made}, {{301, 1}}).ok());
  made.version = 2;
  ASSERT_TRUE(s->CompleteJournal((*j)[0].seq, {made}, {}).ok());
  auto k = s->KnownVersions();
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(*k, (std::unordered_map<uint64_t, uint64_t>{{301, 2}}));
  NodeRecord gone;
  gone.id = 301;
  gone.deleted = true;
  ASSERT_TRUE(s->CompleteJournal((*j)[0].seq, {gone}, {}).ok());
  k = s->KnownVersions();
  ASSERT_TRUE(k.ok());
  EXPECT_TRUE(k->empty());
}

TEST_F(LocalStateTest, ATornOrDamagedEndIsKeptAsideAndTheRestReplayed) {
  Open();  // creates the databases
  const std::string good = EncodeLocalChange(Change(2, 101, "b.txt"));
  {
    // A whole frame, a damaged one, a whole one after it, then half a frame.
    std::string bad = good;
    bad[bad.size() - 1] ^= 0x55;
    std::ofstream out(dir_ + "/intent.log", std::ios::binary | std::ios::trunc);
    out << EncodeLocalChange(Change(1, 100, "a.txt")) << bad << good << good.substr(0, 7);
  }
  auto s = Open();
  auto j = s->PendingJournal(10);
  ASSERT_TRUE(j.ok());
  ASSERT_EQ(j->size(), 1u) << "only what comes before the damage";
  EXPECT_EQ((*j)[0].op.name, "a.txt");
  int aside = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir_)) {
    if (e.path().filename().string().rfind("intent.log.damaged-", 0) != 0) continue;
    ++aside;
    const std::string kept = FileText(e.path());
    EXPECT_EQ(kept.size(), 2 * good.size() + 7) << "every byte not replayed is kept";
  }
  EXPECT_EQ(aside, 1);
  EXPECT_EQ(Logged(), 0u);
}

TEST_F(LocalStateTest, SavedChangesNeverTakeAVersionBackNorKeepADeletedFilesBitmap) {
  auto s = Open();
  LocalChange a = Change(1, 100, "a.txt");
  a.rows[0].version = 5;
  a.files[0].version = 5;
  ASSERT_TRUE(s->SaveChanges({&a}).ok());
  // A row and a bitmap captured before version 5 was known, saved late.
  LocalChange late = Change(2, 100, "a.txt");
  late.entries.clear();
  late.rows[0].version = 4;
  late.files[0].version = 4;
  late.files[0].present = {true, true};
  ASSERT_TRUE(s->SaveChanges({&late}).ok());
  EXPECT_EQ((*s->GetNode(100))->version, 5u);
  EXPECT_EQ((*s->LoadFile(100))->version, 5u);
  EXPECT_EQ((*s->LoadFile(100))->present, (std::vector<bool>{false, true}));
  // Deleted: its bitmap goes, also one queued in the same batch.
  LocalChange again = Change(3, 100, "a.txt");
  again.entries.clear();
  again.rows[0].version = 6;
  again.files[0].version = 6;
  LocalChange del;
  del.ticket = 4;
  NodeRecord gone;
  gone.id = 100;
  gone.deleted = true;
  del.rows.push_back(gone);
  ASSERT_TRUE(s->SaveChanges({&again, &del}).ok());
  EXPECT_FALSE(*s->GetNode(100));
  EXPECT_FALSE(*s->LoadFile(100));
}

// A file's dirty bits (its blocks written here) are kept with its record,
// through the log and the database; a record without them (an older
// cache dir's) says they are not known.
TEST_F(LocalStateTest, AFilesDirtyBitsAreSavedWithItsRecord) {
  {
    // A cache dir from before the bits were saved.
    auto db = Db::Open(dir_ + "/files.db", /*exclusive=*/true);
    ASSERT_TRUE(db.ok());
    ASSERT_TRUE((*db)->Exec("CREATE TABLE files (id INTEGER PRIMARY KEY, version INTEGER NOT NULL,"
                            " manifest BLOB NOT NULL, present BLOB NOT NULL)").ok());
  }
  {
    auto s = Open();
    LocalChange a = Change(1, 100, "a.txt");
    ASSERT_TRUE(s->SaveChanges({&a}).ok());
    EXPECT_FALSE((*s->LoadFile(100))->dirty);
    LocalChange b = Change(2, 101, "b.txt");
    b.files[0].dirty = std::vector<bool>{true, false};
    ASSERT_TRUE(s->LogChange(b).ok());  // replayed by the next Open
  }
  auto s = Open();
  EXPECT_FALSE((*s->LoadFile(100))->dirty);
  auto f = s->LoadFile(101);
  ASSERT_TRUE(f.ok() && *f);
  EXPECT_EQ((*f)->dirty, (std::vector<bool>{true, false}));
  auto all = s->LoadAllFiles();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  (*f)->dirty.reset();
  ASSERT_TRUE(s->SaveFile(**f).ok());
  EXPECT_FALSE((*s->LoadFile(101))->dirty);
}

TEST_F(LocalStateTest, StagedBytesOfAKilledMountGoToTheirCacheFilesUnlessThereAlready) {
  std::filesystem::create_directories(dir_ + "/data");
  {
    auto s = Open();
    LocalChange a = StagedChange(1, 200, "a.txt", "staged a");
    LocalChange b = StagedChange(2, 201, "b.txt", "staged b");
    LocalChange c = StagedChange(3, 202, "c.txt", "staged c");
    NodeRecord gone;  // c is deleted later in the log: no file for it
    gone.id = 202;
    gone.deleted = true;
    LocalChange d;
    d.ticket = 4;
    d.rows.push_back(gone);
    for (const auto* x : {&a, &b, &c, &d}) ASSERT_TRUE(s->LogChange(*x).ok());
    // b's bytes reached its file before the crash, and were written over since.
    std::ofstream(dir_ + "/data/201") << "newer b";
  }
  auto s = Open();
  EXPECT_EQ(FileText(dir_ + "/data/200"), "staged a");
  EXPECT_EQ(FileText(dir_ + "/data/201"), "newer b") << "an older logged write came back";
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data/202"));
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data/200.staged"));
}

// The writer saves a burst's changes before it makes their staged bytes'
// cache files, and keeps the log until it has: a killed mount's saved
// changes give their bytes back too, unless the node is gone since.
TEST_F(LocalStateTest, StagedBytesOfSavedChangesComeBackWhileTheLogKeepsThem) {
  std::filesystem::create_directories(dir_ + "/data");
  {
    auto s = Open();
    LocalChange a = StagedChange(1, 300, "a.txt", "saved a");
    LocalChange b = StagedChange(2, 301, "b.txt", "saved b");
    for (const auto* x : {&a, &b}) ASSERT_TRUE(s->LogChange(*x).ok());
    ASSERT_TRUE(s->SaveChanges({&a, &b}).ok());
    // b was deleted elsewhere since (the remote change left the mirror).
    ASSERT_TRUE(s->ApplyChanges({[] {
                                  NodeRecord n;
                                  n.id = 301;
                                  n.deleted = true;
                                  return n;
                                }()},
                               2)
                    .ok());
  }
  auto s = Open();
  EXPECT_EQ(FileText(dir_ + "/data/300"), "saved a");
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/data/301")) << "bytes of a node deleted since came back";
  EXPECT_TRUE(*s->GetNode(300));
}

TEST(LocalChangeCodecTest, RoundTripsAndRejectsWhatDoesNotFit) {
  LocalChange c;
  c.ticket = 7;
  NodeRecord link;
  link.id = 9;
  link.parent = kRootId;
  link.name = "l";
  link.kind = NodeKind::kSymlink;
  link.target = "../x";
  NodeRecord gone;  // a tombstone as the write-back makes one: only the id
  gone.id = 10;
  gone.deleted = true;
  c.rows = {link, gone};
  JournalEntry flush;
  flush.flush = true;
  flush.op.type = OpType::kWrite;
  flush.op.id = 9;
  flush.op.has_base = true;
  c.entries = {flush};
  std::string frame = EncodeLocalChange(c);
  DecodedLog log = DecodeLocalLog(frame + frame);
  ASSERT_EQ(log.changes.size(), 2u);
  EXPECT_TRUE(log.stopped.empty());
  EXPECT_EQ(log.changes[0].rows, c.rows);
  EXPECT_TRUE(log.changes[0].entries[0].flush);
  EXPECT_EQ(log.changes[0].entries[0].op.id, 9u);
  // Staged bytes (a later section: frames without it still read).
  c.staged = {{9, std::string("x\0y", 3)}, {11, ""}};
  DecodedLog with = DecodeLocalLog(EncodeLocalChange(c));
  ASSERT_EQ(with.changes.size(), 1u);
  ASSERT_EQ(with.changes[0].staged.size(), 2u);
  EXPECT_EQ(with.changes[0].staged[0].bytes, std::string("x\0y", 3));
  EXPECT_EQ(with.changes[0].staged[1].id, 11u);
  c.staged = {{0, "bad id"}};
  EXPECT_TRUE(DecodeLocalLog(EncodeLocalChange(c)).changes.empty());
  c.staged.clear();
  // Files' dirty bits (the last section: frames without it read as not
  // known), per file, known or not.
  CachedFile f;
  f.id = 9;
  f.manifest.size = 70000;
  f.manifest.blocks = {HashBlock("a"), HashBlock("b")};
  f.present = {true, true};
  c.files = {f, f};
  c.files[1].dirty = std::vector<bool>{false, true};
  DecodedLog bits = DecodeLocalLog(EncodeLocalChange(c));
  ASSERT_EQ(bits.changes.size(), 1u) << bits.stopped;
  EXPECT_FALSE(bits.changes[0].files[0].dirty);
  EXPECT_EQ(bits.changes[0].files[1].dirty, (std::vector<bool>{false, true}));
  EXPECT_TRUE(bits.changes[0].staged.empty());
  c.files[1].dirty.reset();
  EXPECT_FALSE(DecodeLocalLog(EncodeLocalChange(c)).changes[0].files[1].dirty);
  c.files[1].dirty = std::vector<bool>{true};  // (encoded to the manifest's length)
  EXPECT_EQ(DecodeLocalLog(EncodeLocalChange(c)).changes[0].files[1].dirty, (std::vector<bool>{true, false}));
  c.files.clear();
  // A row whose name the server would refuse is damage, not a change.
  c.rows[0].name = "a/b";
  EXPECT_TRUE(DecodeLocalLog(EncodeLocalChange(c)).changes.empty());
  EXPECT_FALSE(DecodeLocalLog(EncodeLocalChange(c)).stopped.empty());
}

}  // namespace
}  // namespace tidefs
