// The mount's Tree: filled a directory at a time, from a snapshot (cold)
// or from the local state (warm), and kept right by /changes.
#include "mount/tree.h"

#include <stdlib.h>

#include <algorithm>
#include <filesystem>

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

TEST(TreeTest, WarmTreeReadsTheLocalStateAndItsChanges) {
  char tmpl[] = "/tmp/tidefs-tree-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  {
    auto state = LocalState::Open(dir + "/state.db", "p");
    ASSERT_TRUE(state.ok());
    ASSERT_TRUE((*state)->SaveSnapshot(Sample()).ok());
    Tree t(state->get());
    t.StartLazy(10);
    EXPECT_EQ(t.size(), 0u);
    auto root = t.Get(kRootId);
    ASSERT_TRUE(root.ok() && *root);
    EXPECT_EQ(Names(t, kRootId), (std::vector<std::string>{"a", "c"}));
    // A change: the local state first, then the tree.
    NodeRecord moved = Rec(4, 3, "moved.txt");
    moved.seq = 11;
    ASSERT_TRUE((*state)->ApplyChanges({moved}, 11).ok());
    t.Apply(moved);
    EXPECT_EQ(Names(t, 2), (std::vector<std::string>{"b.txt"}));
    EXPECT_EQ(Names(t, 3), (std::vector<std::string>{"moved.txt", "x"}));
    auto cursor = (*state)->Cursor();
    ASSERT_TRUE(cursor.ok() && *cursor);
    EXPECT_EQ(**cursor, 11u);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace tidefs
