// BlockStore: where block bytes live. Pack files on local disk by default;
// the interface is what an S3-compatible store would implement. The index
// (hash -> location) lives in the MetadataStore. Thread-safe.
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/hash.h"
#include "core/status.h"
#include "server/metadata_store.h"

namespace tidefs {

class BlockStore {
 public:
  virtual ~BlockStore() = default;
  // Stores the blocks; they are durable once a later Sync() returns OK.
  virtual Result<std::vector<BlockLocation>> Append(const std::vector<std::string_view>& blocks) = 0;
  // Makes every block appended so far durable on disk.
  virtual Status Sync() = 0;
  // Reads one block back and checks it against `hash`: a mismatch is
  // kCorruption and no bytes are returned.
  virtual Result<std::string> Read(const BlockLocation& loc, const Hash128& hash) = 0;
  // The same into `out`, which has room for loc.raw_length bytes (no
  // allocation or extra copy on the download path). On error `out` holds
  // nothing the caller may use.
  virtual Status ReadInto(const BlockLocation& loc, const Hash128& hash, char* out) = 0;
  // Asks the kernel to start reading these blocks from disk now (a
  // download reads them one by one, and several downloads sharing a pack
  // would defeat its read-ahead). Best effort.
  virtual void Prefetch(std::span<const BlockLocation> locs) = 0;
  // Gives back the space of blocks the index no longer names (collected):
  // reading them afterwards fails its hash check.
  virtual Status Free(std::span<const BlockLocation> locs) = 0;
  // Whether the block's first bytes are in the page cache (read lately).
  virtual bool IsCached(const BlockLocation& loc) = 0;
  // Says these blocks were just sent to a client that keeps its own copy:
  // their pages may leave the server's page cache (drop-behind), so a
  // large download of cold data neither pushes out what is hot nor takes
  // fresh memory for every byte it streams. Best effort.
  virtual void Release(std::span<const BlockLocation> locs) = 0;
  // Reads whole raw blocks stored back to back in one pack, past the page
  // cache, into `staging` (at least their length plus 8 KiB), and checks
  // them against `hashes`: the blocks' bytes, in order, inside `staging`.
  // nullopt where that cannot be done (compressed or scattered blocks, a
  // file system without O_DIRECT): the caller reads them one by one.
  virtual Result<std::optional<std::string_view>> ReadRunDirect(std::span<const BlockLocation> locs,
                                                                std::span<const Hash128> hashes, char* staging,
                                                                size_t staging_size) {
    return std::optional<std::string_view>();
  }
};

// Packs of about `pack_bytes` each under `dir` (created if missing).
Result<std::unique_ptr<BlockStore>> OpenPackBlockStore(const std::string& dir,
                                                       uint64_t pack_bytes = 256ull << 20);

}  // namespace tidefs
