#include "core/commit_codec.h"

#include <gtest/gtest.h>

namespace tidefs {

TEST(CommitCodec, RoundTrips) {
  std::vector<CommitOp> ops(3);
  ops[0].type = OpType::kMkdir;
  ops[0].id = 42;
  ops[0].parent = 1;
  ops[0].name = "src";
  ops[1].type = OpType::kCreate;
  ops[1].id = 43;
  ops[1].parent = 42;
  ops[1].name = "main.cc";
  ops[1].size = 10;
  ops[1].blocks = {HashBlock("0123456789")};
  ops[1].has_mode = true;
  ops[1].mode = 0600;
  ops[2].type = OpType::kRename;
  ops[2].id = 43;
  ops[2].parent = 1;
  ops[2].name = "main2.cc";
  ops[2].replace = true;
  auto back = DecodeCommit(EncodeCommit(ops));
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  ASSERT_EQ(back->size(), 3u);
  EXPECT_EQ((*back)[1].blocks, ops[1].blocks);
  EXPECT_EQ((*back)[1].mode, 0600u);
  EXPECT_TRUE((*back)[2].replace);
}

TEST(CommitCodec, RejectsBadBodies) {
  const char* bad[] = {
      "", "{", "[]", "{\"ops\":[]}", "{\"ops\":{}}", "{\"ops\":[1]}",
      "{\"ops\":[{\"op\":\"explode\",\"id\":5}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1}]}",                        // no name
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1,\"name\":\"..\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1,\"name\":\"a/b\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":\"5\",\"parent\":1,\"name\":\"a\"}]}",      // wrong type
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":-5,\"parent\":1,\"name\":\"a\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":0,\"parent\":1,\"name\":\"a\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":9223372036854775808,\"parent\":1,\"name\":\"a\"}]}",
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1,\"name\":\"a\",\"colour\":1}]}",  // unknown field
      "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1,\"name\":\"a\",\"mode\":99999}]}",
      "{\"ops\":[{\"op\":\"create\",\"id\":5,\"parent\":1,\"name\":\"a\",\"size\":1,\"blocks\":[]}]}",
      "{\"ops\":[{\"op\":\"create\",\"id\":5,\"parent\":1,\"name\":\"a\",\"size\":1,\"blocks\":[\"zz\"]}]}",
      "{\"ops\":[{\"op\":\"write\",\"id\":5,\"size\":0,\"blocks\":[]}]}",           // no base
      "{\"ops\":[{\"op\":\"rename\",\"id\":5,\"parent\":1,\"name\":\"a\",\"replace\":\"yes\"}]}",
      "{\"ops\":[{\"op\":\"symlink\",\"id\":5,\"parent\":1,\"name\":\"a\",\"target\":\"\"}]}",
      "{\"ops\":[],\"extra\":1}",
  };
  for (const char* b : bad) EXPECT_FALSE(DecodeCommit(b).ok()) << b;
  std::string long_name = "{\"ops\":[{\"op\":\"mkdir\",\"id\":5,\"parent\":1,\"name\":\"" + std::string(256, 'n') + "\"}]}";
  EXPECT_FALSE(DecodeCommit(long_name).ok());
}

}  // namespace tidefs
