#include "core/snapshot_codec.h"

#include <gtest/gtest.h>

namespace tidefs {

static std::vector<NodeRecord> SampleNodes() {
  std::vector<NodeRecord> nodes;
  NodeRecord root;
  root.id = kRootId;
  root.kind = NodeKind::kDir;
  root.mode = 0755;
  root.version = 1;
  root.seq = 1;
  nodes.push_back(root);
  for (int i = 0; i < 100; ++i) {
    NodeRecord n;
    n.id = 1000 + i * 7919;
    n.parent = kRootId;
    n.name = "file" + std::to_string(i);
    n.kind = i % 10 == 0 ? NodeKind::kSymlink : NodeKind::kFile;
    if (n.kind == NodeKind::kSymlink) n.target = "../target" + std::to_string(i);
    n.size = i * 1000;
    n.mtime_ns = 1700000000000000000 + i;
    n.version = i + 1;
    n.seq = 2 + i;
    nodes.push_back(n);
  }
  return nodes;
}

TEST(SnapshotCodec, RoundTrips) {
  auto nodes = SampleNodes();
  std::string bytes = EncodeSnapshot(200, nodes);
  auto snap = DecodeSnapshot(bytes);
  ASSERT_TRUE(snap.ok()) << snap.status().ToString();
  EXPECT_EQ(snap->seq, 200u);
  EXPECT_EQ(snap->nodes, nodes);
}

TEST(SnapshotCodec, EmptyProjectRoundTrips) {
  auto snap = DecodeSnapshot(EncodeSnapshot(5, {}));
  ASSERT_TRUE(snap.ok());
  EXPECT_TRUE(snap->nodes.empty());
}

TEST(SnapshotCodec, RejectsCorruption) {
  std::string bytes = EncodeSnapshot(200, SampleNodes());
  EXPECT_EQ(DecodeSnapshot("").status().code(), Code::kCorruption);
  EXPECT_EQ(DecodeSnapshot("TDFSSNAP").status().code(), Code::kCorruption);
  EXPECT_FALSE(DecodeSnapshot(bytes.substr(0, bytes.size() - 3)).ok());
  std::string bad_magic = bytes;
  bad_magic[0] = 'X';
  EXPECT_FALSE(DecodeSnapshot(bad_magic).ok());
  std::string bad_format = bytes;
  bad_format[8] = 9;
  EXPECT_FALSE(DecodeSnapshot(bad_format).ok());
  std::string bad_count = bytes;
  bad_count[24] ^= 1;  // node count no longer matches the body
  EXPECT_FALSE(DecodeSnapshot(bad_count).ok());
  std::string flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x55;
  EXPECT_FALSE(DecodeSnapshot(flipped).ok());
}

TEST(SnapshotCodec, RejectsInvalidNames) {
  auto nodes = SampleNodes();
  nodes[3].name = "a/b";
  EXPECT_FALSE(DecodeSnapshot(EncodeSnapshot(200, nodes)).ok());
  nodes = SampleNodes();
  nodes[3].seq = 500;  // newer than the snapshot
  EXPECT_FALSE(DecodeSnapshot(EncodeSnapshot(200, nodes)).ok());
}

TEST(SnapshotCodec, CompactForManySimilarNodes) {
  std::vector<NodeRecord> nodes;
  uint64_t id = 0x1234567;
  for (int d = 0; d < 100; ++d) {
    for (int i = 0; i < 1000; ++i) {
      NodeRecord n;
      id = id * 6364136223846793005ull + 1442695040888963407ull;
      n.id = (id & kMaxNodeId) | 2;
      n.parent = 1000 + d;
      char name[16];
      snprintf(name, sizeof name, "f%05d.txt", i);
      n.name = name;
      n.size = 1024;
      n.mtime_ns = 1700000000000000000 + i * 1000003;
      n.version = 1;
      n.seq = d * 1000 + i + 2;
      nodes.push_back(n);
    }
  }
  std::string bytes = EncodeSnapshot(200000, nodes);
  EXPECT_LT(bytes.size() / nodes.size(), 40u) << bytes.size();
  // Many zstd blocks, fed column by column: every node comes back.
  auto back = DecodeSnapshot(bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->seq, 200000u);
  EXPECT_TRUE(back->nodes == nodes);
}

TEST(SnapshotCodec, TheEncoderTakesOneReusedRecordAtATime) {
  NodeRecord n;
  SnapshotEncoder e;
  std::vector<NodeRecord> added;
  for (int i = 0; i < 3; ++i) {  // a symlink, then files: nothing of one stays in the next
    n.id = 10 + i;
    n.parent = kRootId;
    n.name = "n" + std::to_string(i);
    n.kind = i == 0 ? NodeKind::kSymlink : NodeKind::kFile;
    n.target = i == 0 ? "somewhere" : "";
    e.Add(n);
    added.push_back(n);
  }
  auto bytes = e.Finish(9);
  ASSERT_TRUE(bytes.ok());
  auto back = DecodeSnapshot(*bytes);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_TRUE(back->nodes == added);
  EXPECT_EQ(e.count(), 3u);
}

}  // namespace tidefs
