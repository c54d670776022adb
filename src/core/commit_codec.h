// POST /commit bodies: {"ops": [op, ...]}. Each op is an object with "op"
// and the fields below; unknown fields and wrong types are refused, so a
// typo never silently changes what a commit means.
//   create  id parent name [mode] [mtime_ns] size blocks   (a file)
//   mkdir   id parent name [mode] [mtime_ns]
//   symlink id parent name target [mtime_ns]
//   write   id base size blocks [mtime_ns]        (new content, truncate)
//   rename  id [base] parent name [replace]       (replace: overwrite target)
//   rename  id [base] parent name exchange        (exchange: the node at parent/name,
//                                                   which takes id's place: a swap)
//   delete  id base
//   setattr id base [mode] [mtime_ns]
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "core/hash.h"
#include "core/status.h"

namespace tidefs {

enum class OpType { kCreate, kMkdir, kSymlink, kWrite, kRename, kDelete, kSetattr };

inline constexpr size_t kMaxCommitOps = 100'000;
inline constexpr size_t kMaxCommitBody = 64 * 1024 * 1024;

const char* OpName(OpType t);

struct CommitOp {
  OpType type = OpType::kCreate;
  uint64_t id = 0;
  bool has_base = false;
  uint64_t base = 0;
  uint64_t parent = 0;
  std::string name;
  bool has_mode = false;
  uint32_t mode = 0;
  bool has_mtime = false;
  int64_t mtime_ns = 0;
  uint64_t size = 0;
  std::vector<Hash128> blocks;
  std::string target;
  bool replace = false;
  uint64_t exchange = 0;  // rename: the node it swaps places with (RENAME_EXCHANGE); 0: none
};

std::string EncodeCommit(const std::vector<CommitOp>& ops);
// Parses and checks a commit body: types, names, ids, manifest shapes.
Result<std::vector<CommitOp>> DecodeCommit(std::string_view body);

}  // namespace tidefs
