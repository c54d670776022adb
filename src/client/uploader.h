// Block uploads, shared by `tidefs import` and (next) the mount's
// write-back: ask the server which blocks it lacks, send only those as
// frames in requests of at most 4 MiB, several in flight. A /blocks request
// is idempotent (blocks are named by their hash), so the client retries it
// with backoff on a broken connection or a 5xx.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "client/api_client.h"
#include "core/hash.h"
#include "core/memory.h"
#include "core/manifest_codec.h"
#include "core/status.h"

namespace tidefs {

struct UploadStats {
  uint64_t blocks_hashed = 0;
  uint64_t blocks_sent = 0;
  uint64_t bytes_sent = 0;  // block bytes, frames excluded
  uint64_t requests = 0;
  // UploadFileBlocks: told how far into the file the upload has got (bytes
  // hashed and sent), after each batch.
  std::function<void(uint64_t done)> on_progress;
  // UploadFileBlocks: the file's pages leave the page cache once read (a
  // mount's cache file: the kernel's page cache of the mount has them).
  bool drop_behind = false;
};

inline constexpr size_t kUploadRequestBytes = 4 << 20;  // per /blocks request
inline constexpr size_t kMissingQuery = 10000;          // hashes per /blocks/missing
inline constexpr int kUploadSenders = 4;                // a large file's requests in flight (more only queue on the server)

// Sends the blocks the server lacks (each hash once) and clears `blocks`.
Status SendMissingBlocks(ApiClient* client, std::vector<std::pair<Hash128, std::string>>* blocks, int parallel,
                         UploadStats* stats);

// Blocks of several small files gathered for one /blocks/missing and one
// upload: a commit of many small files costs a few requests, not two a file.
struct BlockBatch {
  std::vector<std::pair<Hash128, std::string>> blocks;
  size_t bytes = 0;
};
inline constexpr uint64_t kSharedBatchFileBytes = 1 << 20;  // files up to this size go in a BlockBatch

// The blocks of the file behind `fd` (`size` bytes) for a commit: blocks
// marked in `dirty`, and every block past the end of `base`, are read and
// hashed, and those the server lacks are uploaded, a bounded batch at a
// time; clean blocks of unchanged length keep their hash from `base`. With
// an empty `base`, the whole file is read. Returns every block's hash.
// With `shared`, a file of at most kSharedBatchFileBytes leaves its blocks
// there (sent once the batch is big); the caller sends the rest with
// SendMissingBlocks before it names the hashes in a commit.
// With `mem`, the file's bytes are those (`size` of them), not read from fd.
// Dirty blocks in `known` are on the server already (sent ahead, untouched
// since): they keep that hash and are neither read nor asked about.
// More than 1 MiB to send goes in request bodies taken from `bodies` (a
// BlockSender pool) when given.
Result<std::vector<Hash128>> UploadFileBlocks(ApiClient* client, int fd, uint64_t size,
                                              const Manifest& base, const std::vector<bool>& dirty,
                                              int parallel, UploadStats* stats, BlockBatch* shared = nullptr,
                                              const std::string* mem = nullptr,
                                              const std::unordered_map<uint64_t, Hash128>* known = nullptr,
                                              std::vector<BigBuffer>* bodies = nullptr);

// Request bodies of block frames, sent on a few threads as they come. At
// most as many wait as there are threads; sent bodies go back to a pool (a
// body's memory is reused, not faulted in and zeroed anew). Kept across
// several UploadBlocksAhead calls, it keeps requests in flight between them.
class BlockSender {
 public:
  // With `pool`, bodies are taken from it and go back to it, and it
  // outlives the sender (bodies are fresh memory, core/memory.h, until
  // reused). One sender at a time uses a pool.
  BlockSender(ApiClient* client, int threads, std::vector<BigBuffer>* pool = nullptr);
  ~BlockSender();
  BlockSender(const BlockSender&) = delete;
  BlockSender& operator=(const BlockSender&) = delete;

  // A body kUploadRequestBytes long to fill, and one given back unsent.
  BigBuffer Take();
  void Give(BigBuffer body);
  // Queues the first `len` bytes of `body`, waiting while the queue is
  // full. After a failed request nothing more is sent: the error, here,
  // from error() and from Finish.
  Status Send(BigBuffer body, size_t len);
  Status error();
  // Waits for every queued body to be sent; the first error. Once only.
  Status Finish();

 private:
  void Work();

  ApiClient* const client_;
  const size_t max_waiting_;
  std::mutex mu_;
  std::condition_variable work_, room_;
  std::deque<std::pair<BigBuffer, size_t>> waiting_;  // guarded by mu_
  std::vector<BigBuffer> own_pool_;
  std::vector<BigBuffer>* const pool_;                  // guarded by mu_ (its contents)
  bool done_ = false;                                     // guarded by mu_
  Status error_;                                          // guarded by mu_
  std::vector<std::thread> threads_;
};

// Sends the whole blocks `blocks` of the file behind `fd` (`size` bytes)
// that the server lacks; returns their hashes, in the same order. With
// `sender`, the requests go through it and may still be in flight on
// return: they are on the server only once its Finish() says so.
Result<std::vector<Hash128>> UploadBlocksAhead(ApiClient* client, int fd, uint64_t size,
                                               const std::vector<uint64_t>& blocks, UploadStats* stats,
                                               BlockSender* sender = nullptr);

// Runs tasks on up to n threads; returns the first error (and starts no
// task after it).
Status RunParallel(std::vector<std::function<Status()>>& tasks, int n);

}  // namespace tidefs
