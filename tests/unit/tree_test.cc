// The mount's Tree: filled a directory at a time, from a snapshot (cold)
// or from the local state (warm), and kept right by /changes.
#include "mount/tree.h"

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <thread>

#include <gtest/gtest.h>

namespace tidefs {
namespace {

NodeRecord Rec(uint64_t id, uint64_t parent, const std::string& name, NodeKind kind = NodeKind::kFile) {
  NodeRecord n;
  n.id = id;
  n.parent = parent;
  n.name = name;
  n.kind = kind;
  n.mode = kind == NodeKind::kDir ? 0755 : 0644;
  n.version = 1;
  return n;
}

std::vector<std::string> Names(Tree& t, uint64_t dir) {
  auto kids = t.Children(dir);
  EXPECT_TRUE(kids.ok());
  std::vector<std::string> out;
  for (const auto& k : *kids) out.push_back(k.name);
  std::sort(out.begin(), out.end());
  return out;
}

Snapshot Sample() {
  Snapshot s;
  s.seq = 10;
  // Deliberately not sorted by parent.
  s.nodes = {Rec(5, 2, "b.txt"), Rec(kRootId, 0, "", NodeKind::kDir), Rec(2, kRootId, "a", NodeKind::kDir),
             Rec(3, kRootId, "c", NodeKind::kDir), Rec(4, 2, "a.txt"), Rec(6, 3, "x")};
  return s;
}

// A local state holding Sample(), in a temp folder removed at the end.
struct SampleState {
  SampleState() {
    char tmpl[] = "/tmp/tidefs-tree-XXXXXX";
    dir = mkdtemp(tmpl);
    auto s = LocalState::Open(dir + "/state.db", "p");
    EXPECT_TRUE(s.ok());
    if (!s.ok()) return;
    state = std::move(*s);
    EXPECT_TRUE(state->SaveSnapshot(Sample()).ok());
  }
  ~SampleState() {
    state.reset();
    std::filesystem::remove_all(dir);
  }
  std::string dir;
  std::unique_ptr<LocalState> state;
};

TEST(TreeTest, ColdTreeFillsDirectoriesFromTheSnapshotOnUse) {
  Tree t;
  t.Load(std::make_shared<Snapshot>(Sample()));
  EXPECT_EQ(t.seq(), 10u);
  EXPECT_EQ(t.size(), 1u) << "only the root before any directory is used";
  EXPECT_EQ(Names(t, kRootId), (std::vector<std::string>{"a", "c"}));
  auto f = t.Lookup(2, "b.txt");
  ASSERT_TRUE(f.ok() && *f);
  EXPECT_EQ((*f)->id, 5u);
  EXPECT_FALSE(*t.Lookup(2, "nope"));
  EXPECT_FALSE(*t.Get(6)) << "a node of a directory never used is unknown to the kernel too";
}

TEST(TreeTest, ChangesToDirectoriesNotYetUsedAreNotLost) {
  Tree t;
  t.Load(std::make_shared<Snapshot>(Sample()));
  // Both happen before /a or /c is ever listed.
  NodeRecord moved = Rec(4, 3, "moved.txt");
  moved.seq = 11;
  t.Apply(moved);
  NodeRecord gone = Rec(5, 2, "b.txt");
  gone.deleted = true;
  t.Apply(gone);
  NodeRecord fresh = Rec(7, 2, "new.txt");
  t.Apply(fresh);
  EXPECT_EQ(Names(t, 2), (std::vector<std::string>{"new.txt"}));
  EXPECT_EQ(Names(t, 3), (std::vector<std::string>{"moved.txt", "x"}));
  EXPECT_EQ((*t.Get(4))->parent, 3u);
}

// Two records naming one place for a moment (a remote create landing
// while a node of ours there waits to move away as a conflict copy, and
// a late record of ours putting it back there): once ours leaves, the
// name finds the other one again (it was lost from the listing until a
// remount: a two-device random run found it).
TEST(TreeTest, ANameTakenForAMomentComesBackToTheNodeStillThere) {
  Tree t;
  t.Load(std::make_shared<Snapshot>(Sample()));
  ASSERT_EQ(Names(t, kRootId), (std::vector<std::string>{"a", "c"}));
  t.Apply(Rec(8, kRootId, "f"));   // ours
  t.Apply(Rec(9, kRootId, "f"));   // theirs lands
  t.Apply(Rec(8, kRootId, "f"));   // a record of ours, late
  t.Apply(Rec(8, kRootId, "f (conflict)"));  // ours moves away
  auto f = t.Lookup(kRootId, "f");
  ASSERT_TRUE(f.ok() && *f) << "the name lost its node";
  EXPECT_EQ((*f)->id, 9u);
  EXPECT_EQ(Names(t, kRootId), (std::vector<std::string>{"a", "c", "f", "f (conflict)"}));
  // A node that took a name and then left for good gives nothing back
  // that is not there any more.
  t.Apply(Rec(10, kRootId, "g"));
  t.Apply(Rec(11, kRootId, "g"));
  NodeRecord gone = Rec(10, kRootId, "g");
  gone.deleted = true;
  t.Apply(gone);
  t.Apply(Rec(11, kRootId, "h"));
  EXPECT_FALSE(*t.Lookup(kRootId, "g"));
}

TEST(TreeTest, WarmTreeReadsTheLocalStateAndItsChanges) {
  SampleState st;
  ASSERT_TRUE(st.state);
  LocalState* state = st.state.get();
  {
    Tree t(state);
    t.StartLazy(10);
    EXPECT_EQ(t.size(), 0u);
    auto root = t.Get(kRootId);
    ASSERT_TRUE(root.ok() && *root);
    EXPECT_EQ(Names(t, kRootId), (std::vector<std::string>{"a", "c"}));
    // A change: the local state first, then the tree.
    NodeRecord moved = Rec(4, 3, "moved.txt");
    moved.seq = 11;
    ASSERT_TRUE(state->ApplyChanges({moved}, 11).ok());
    t.Apply(moved);
    EXPECT_EQ(Names(t, 2), (std::vector<std::string>{"b.txt"}));
    EXPECT_EQ(Names(t, 3), (std::vector<std::string>{"moved.txt", "x"}));
    auto cursor = state->Cursor();
    ASSERT_TRUE(cursor.ok() && *cursor);
    EXPECT_EQ(**cursor, 11u);
  }
}

// Local changes reach the tree at once and the local state a little later
// (the write-back's writer): a directory first read in between has them
// too, a node they move or delete is not read back where it was, and once
// saved the state alone says so.
TEST(TreeTest, LocalChangesNotYetSavedAreInADirectoryReadFirstMeanwhile) {
  SampleState st;
  ASSERT_TRUE(st.state);
  LocalState* state = st.state.get();
  {
    Tree t(state);
    t.StartLazy(10);
    // Neither /a nor /c has been read: a conflict copy appears in /a, a.txt
    // moves to /c, x is deleted.
    t.ApplyUnsaved(Rec(7, 2, "copy.txt"), 1);
    t.ApplyUnsaved(Rec(4, 3, "moved.txt"), 1);
    NodeRecord gone = Rec(6, 3, "x");
    gone.deleted = true;
    t.ApplyUnsaved(gone, 2);
    auto copy = t.Get(7);
    ASSERT_TRUE(copy.ok() && *copy) << "a node not saved yet is unknown";
    EXPECT_EQ((*copy)->name, "copy.txt");
    EXPECT_FALSE(*t.Get(6)) << "a node deleted here came back from the state";
    EXPECT_EQ(Names(t, 2), (std::vector<std::string>{"b.txt", "copy.txt"}));
    EXPECT_EQ(Names(t, 3), (std::vector<std::string>{"moved.txt"}));
    // Saved: a tree started now reads them from the state.
    NodeRecord x = gone;
    ASSERT_TRUE(state->ApplyChanges({Rec(7, 2, "copy.txt"), Rec(4, 3, "moved.txt"), x}, 10).ok());
    t.Saved(2);
    Tree fresh(state);
    fresh.StartLazy(10);
    EXPECT_EQ(Names(fresh, 2), (std::vector<std::string>{"b.txt", "copy.txt"}));
    EXPECT_EQ(Names(fresh, 3), (std::vector<std::string>{"moved.txt"}));
    // A commit of one not saved moves its version there too.
    t.ApplyUnsaved(Rec(9, 6, "in-x"), 3);  // (6 was deleted above: never read)
    t.SetVersion(9, 4, 12);
    EXPECT_EQ((*t.Get(9))->version, 4u);
    // A later remote change supersedes one not saved: it is not replayed.
    t.ApplyUnsaved(Rec(8, 5, "inside"), 3);  // (5 is a file: a directory never read)
    NodeRecord back = Rec(8, 2, "elsewhere");
    back.deleted = true;
    t.Apply(back);
    EXPECT_FALSE(*t.Get(8));
  }
}

// A local change's record read before a commit of ours moved the node's
// version (a chmod racing the commit of the file's bytes) keeps the newer
// version: the next op on the node names it as its base.
TEST(TreeTest, ALocalRecordReadBeforeACommitDoesNotTakeTheVersionBack) {
  Tree t;
  Snapshot s;
  s.seq = 1;
  s.nodes = {Rec(kRootId, kRootId, "", NodeKind::kDir), Rec(5, kRootId, "f")};
  t.Load(std::make_shared<Snapshot>(s));
  ASSERT_EQ(Names(t, kRootId), std::vector<std::string>{"f"});
  NodeRecord chmod = **t.Get(5);  // read at version 1...
  t.SetVersion(5, 3, 7);           // ...our commit lands...
  chmod.mode = 0600;
  t.ApplyUnsaved(chmod, 1);        // ...and the chmod is applied
  auto now = t.Get(5);
  ASSERT_TRUE(now.ok() && *now);
  EXPECT_EQ((*now)->version, 3u);
  EXPECT_EQ((*now)->seq, 7u);
  EXPECT_EQ((*now)->mode, 0600u) << "the change itself was lost";
  // A newer version in the record is taken as it is, and a delete too.
  chmod.version = 4;
  t.ApplyUnsaved(chmod, 2);
  EXPECT_EQ((*t.Get(5))->version, 4u);
  NodeRecord gone = chmod;
  gone.version = 1;
  gone.deleted = true;
  t.ApplyUnsaved(gone, 3);
  EXPECT_FALSE(*t.Get(5));
}

// A delete our commit made is remembered until /changes reaches its seq:
// a record of the node from before it must not bring the node back.
TEST(TreeTest, ADeleteOfOursIsRememberedUntilTheChangesReachIt) {
  Tree t;
  t.set_seq(10);
  t.NoteDeleted(5, 15);
  EXPECT_TRUE(t.DeletedAfter(5, 14));
  EXPECT_FALSE(t.DeletedAfter(5, 15)) << "its own record (or a later one) is not older";
  EXPECT_FALSE(t.DeletedAfter(6, 1));
  t.NoteDeleted(7, 9);  // already reached: nothing to keep
  EXPECT_FALSE(t.DeletedAfter(7, 1));
  t.set_seq(15);
  EXPECT_FALSE(t.DeletedAfter(5, 14)) << "kept after the changes reached it";
}

// A directory read from the local state while changes to it land (the
// remote sync writes the state, then the tree): none is lost, whatever
// their number during the read, and a delete that landed then stays gone.
TEST(TreeTest, ADirectoryReadWhileItsChangesLandHasThemAll) {
  char tmpl[] = "/tmp/tidefs-tree-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  {
    auto state = LocalState::Open(dir + "/state.db", "p");
    ASSERT_TRUE(state.ok());
    constexpr uint64_t kDirs = 60;
    Snapshot s;
    s.seq = 1;
    s.nodes.push_back(Rec(kRootId, 0, "", NodeKind::kDir));
    s.nodes.push_back(Rec(99, kRootId, "busy", NodeKind::kDir));
    for (uint64_t d = 0; d < kDirs; ++d) {
      s.nodes.push_back(Rec(100 + d, kRootId, "d" + std::to_string(d), NodeKind::kDir));
      s.nodes.push_back(Rec(10000 + d, 100 + d, "old"));
      // (A long read: a wide window for changes to land in.)
      for (uint64_t k = 0; k < 1000; ++k) s.nodes.push_back(Rec(100000 + d * 1000 + k, 100 + d, "k" + std::to_string(k)));
    }
    ASSERT_TRUE((*state)->SaveSnapshot(s).ok());
    Tree t(state->get());
    t.StartLazy(1);
    ASSERT_TRUE(t.Children(99).ok());
    // The directory being read next; the applier puts its changes there,
    // while changes made here elsewhere (in memory first) land all along.
    std::atomic<uint64_t> reading{100};
    std::atomic<bool> done{false};
    std::thread churn([&] {
      for (uint64_t i = 0; !done; ++i) {
        NodeRecord here = Rec(50, 99, "x" + std::to_string(i % 2));
        t.Apply(here);
      }
    });
    std::thread applier([&] {
      uint64_t seq = 1, id = 1'000'000;
      while (!done) {
        const uint64_t d = reading.load();
        ++id;
        NodeRecord made = Rec(id, d, "f" + std::to_string(id));
        made.seq = ++seq;
        NodeRecord gone = Rec(10000 + d - 100, d, "old");
        gone.deleted = true;
        gone.seq = ++seq;
        for (const NodeRecord& r : {made, gone}) {
          ASSERT_TRUE((*state)->ApplyChanges({r}, r.seq).ok());
          t.Apply(r);
        }
      }
    });
    for (uint64_t d = 100; d < 100 + kDirs; ++d) {
      reading = d;
      ASSERT_TRUE(t.Children(d).ok());
    }
    done = true;
    applier.join();
    churn.join();
    size_t differ = 0;
    for (uint64_t d = 100; d < 100 + kDirs; ++d) {
      auto held = (*state)->Children(d);
      ASSERT_TRUE(held.ok());
      std::vector<std::string> want;
      for (const auto& n : *held) want.push_back(n.name);
      std::sort(want.begin(), want.end());
      if (Names(t, d) != want) ++differ;
    }
    EXPECT_EQ(differ, 0u) << "directories whose listing misses a change that landed while they were read";
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tidefs
