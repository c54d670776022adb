#include "client/uploader.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "core/block_frame.h"

namespace tidefs {
namespace {

constexpr size_t kSharedSendBytes = 32 << 20;  // small files' blocks gathered before they go
constexpr size_t kLargeBatchBytes = 16 << 20;  // large path: asked about in one /blocks/missing

// Reads `len` bytes at `at` of the file (or of `mem`) into `out`.
Status ReadBlock(int fd, const std::string* mem, uint64_t size, uint64_t at, size_t len, char* out) {
  if (mem) {
    mem->copy(out, len, at);
    return Status::Ok();
  }
  size_t got = 0;
  while (got < len) {
    ssize_t n = ::pread(fd, out + got, len - got, static_cast<off_t>(at + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Status::IoError(std::string("cannot read the file to upload: ") + std::strerror(errno));
    if (n == 0) return Status::IoError("the file to upload is shorter than " + std::to_string(size) + " bytes");
    got += static_cast<size_t>(n);
  }
  return Status::Ok();
}

// The range of a file that reads covered, for dropping its pages after
// (UploadStats::drop_behind).
struct ReadSpan {
  uint64_t from = UINT64_MAX, to = 0;
  void Add(uint64_t at, size_t len) {
    from = std::min(from, at);
    to = std::max<uint64_t>(to, at + len);
  }
  void Drop(int fd, bool drop_behind) {
    if (drop_behind && to > from)
      (void)::posix_fadvise(fd, static_cast<off_t>(from), static_cast<off_t>(to - from), POSIX_FADV_DONTNEED);
    *this = {};
  }
};

// A large file's blocks `todo`: read straight into request bodies (no
// string or copy per block), asked about a batch at a time, and those the
// server lacks sent through `sender` while the next batch is read. The
// bodies may still be in flight on return: `sender.Finish()` says when
// they have landed.
Status UploadLargeFile(ApiClient* client, int fd, const std::string* mem, uint64_t size,
                       const std::vector<uint64_t>& todo, std::vector<Hash128>* out, UploadStats* stats,
                       BlockSender& sender) {
  struct Body {
    BigBuffer bytes;  // kUploadRequestBytes long; the first `used` count
    size_t used = 0;
    std::vector<std::pair<Hash128, size_t>> frames;  // hash, offset in bytes
  };
  std::vector<Body> batch;
  size_t batch_bytes = 0;
  ReadSpan read;  // what the batch read of the file
  std::unordered_set<Hash128, Hash128Hasher> sent;  // hashes already in a request
  auto send_batch = [&]() -> Status {
    read.Drop(fd, stats->drop_behind);
    std::vector<Hash128> hashes;
    for (const Body& b : batch)
      for (const auto& f : b.frames) hashes.push_back(f.first);
    std::unordered_set<Hash128, Hash128Hasher> want;
    for (size_t i = 0; i < hashes.size(); i += kMissingQuery) {
      std::vector<Hash128> q(hashes.begin() + i, hashes.begin() + std::min(hashes.size(), i + kMissingQuery));
      ASSIGN_OR_RETURN(auto m, client->MissingBlocks(q));
      want.insert(m.begin(), m.end());
    }
    for (Body& b : batch) {
      // Frames the server has, or that an earlier request carries, leave the body.
      size_t kept = 0;
      for (size_t i = 0; i < b.frames.size(); ++i) {
        const auto [h, at] = b.frames[i];
        const size_t end = i + 1 < b.frames.size() ? b.frames[i + 1].second : b.used;
        if (!want.count(h) || !sent.insert(h).second) continue;
        if (kept != at) std::memmove(b.bytes.data() + kept, b.bytes.data() + at, end - at);
        kept += end - at;
        stats->blocks_sent++;
        stats->bytes_sent += end - at - kFrameHeaderSize;
      }
      if (kept == 0) {
        sender.Give(std::move(b.bytes));
        continue;
      }
      stats->requests++;
      RETURN_IF_ERROR(sender.Send(std::move(b.bytes), kept));  // a failed request: stop reading the file
    }
    batch.clear();
    batch_bytes = 0;
    return Status::Ok();
  };
  // Bodies taken and not handed on go back to the sender's pool.
  struct GiveBack {
    std::vector<Body>& batch;
    BlockSender& sender;
    ~GiveBack() {
      for (Body& b : batch)
        if (!b.bytes.empty()) sender.Give(std::move(b.bytes));
    }
  } give_back{batch, sender};
  for (uint64_t b : todo) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - b * kBlockSize));
    if (batch.empty() || batch.back().used + kFrameHeaderSize + len > kUploadRequestBytes) {
      if (batch_bytes >= kLargeBatchBytes) {
        RETURN_IF_ERROR(send_batch());
        if (stats->on_progress) stats->on_progress(b * kBlockSize);
      }
      batch.push_back({sender.Take(), 0, {}});
    }
    Body& body = batch.back();
    const size_t at = body.used;
    char* data = body.bytes.data() + at + kFrameHeaderSize;
    RETURN_IF_ERROR(ReadBlock(fd, mem, size, b * kBlockSize, len, data));
    if (!mem) read.Add(b * kBlockSize, len);
    (*out)[b] = HashBlock(data, len);
    WriteBlockFrameHeader(body.bytes.data() + at, (*out)[b], static_cast<uint32_t>(len));
    body.used = at + kFrameHeaderSize + len;
    body.frames.emplace_back((*out)[b], at);
    batch_bytes += len;
    stats->blocks_hashed++;
  }
  RETURN_IF_ERROR(send_batch());
  return sender.error();
}

}  // namespace

BlockSender::BlockSender(ApiClient* client, int threads, std::vector<BigBuffer>* pool)
    : client_(client), max_waiting_(static_cast<size_t>(threads)), pool_(pool ? pool : &own_pool_) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Work(); });
}

BlockSender::~BlockSender() { (void)Finish(); }

BigBuffer BlockSender::Take() {
  std::lock_guard lock(mu_);
  if (pool_->empty()) return BigBuffer(kUploadRequestBytes);
  BigBuffer b = std::move(pool_->back());
  pool_->pop_back();
  return b;
}

void BlockSender::Give(BigBuffer body) {
  std::lock_guard lock(mu_);
  pool_->push_back(std::move(body));
}

Status BlockSender::Send(BigBuffer body, size_t len) {
  std::unique_lock lock(mu_);
  room_.wait(lock, [this] { return waiting_.size() < max_waiting_ || !error_.ok(); });
  if (!error_.ok()) return error_;
  waiting_.emplace_back(std::move(body), len);
  work_.notify_one();
  return Status::Ok();
}

Status BlockSender::error() {
  std::lock_guard lock(mu_);
  return error_;
}

Status BlockSender::Finish() {
  {
    std::lock_guard lock(mu_);
    done_ = true;
  }
  work_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
  std::lock_guard lock(mu_);
  return error_;
}

void BlockSender::Work() {
  for (;;) {
    std::pair<BigBuffer, size_t> body;
    {
      std::unique_lock lock(mu_);
      work_.wait(lock, [this] { return !waiting_.empty() || done_; });
      if (waiting_.empty() || !error_.ok()) return;
      body = std::move(waiting_.front());
      waiting_.pop_front();
    }
    room_.notify_one();
    Status st = client_->UploadBlocks(std::string_view(body.first.data(), body.second));
    std::lock_guard lock(mu_);
    if (!st.ok() && error_.ok()) {
      error_ = st;
      waiting_.clear();
      room_.notify_all();
    }
    pool_->push_back(std::move(body.first));
  }
}

Status RunParallel(std::vector<std::function<Status()>>& tasks, int n) {
  std::atomic<size_t> next{0};
  std::mutex mu;
  Status first;
  auto worker = [&] {
    for (;;) {
      size_t i = next++;
      if (i >= tasks.size()) return;
      Status st = tasks[i]();
      if (!st.ok()) {
        std::lock_guard lock(mu);
        if (first.ok()) first = st;
        next = tasks.size();
      }
    }
  };
  std::vector<std::thread> threads;
  for (int i = 1; i < std::min<int>(n, static_cast<int>(tasks.size())); ++i) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  return first;
}

Status SendMissingBlocks(ApiClient* client, std::vector<std::pair<Hash128, std::string>>* blocks, int parallel,
                         UploadStats* stats) {
  std::vector<Hash128> missing;
  for (size_t i = 0; i < blocks->size(); i += kMissingQuery) {
    std::vector<Hash128> q;
    for (size_t k = i; k < std::min(blocks->size(), i + kMissingQuery); ++k) q.push_back((*blocks)[k].first);
    ASSIGN_OR_RETURN(auto m, client->MissingBlocks(q));
    missing.insert(missing.end(), m.begin(), m.end());
  }
  std::unordered_set<Hash128, Hash128Hasher> want(missing.begin(), missing.end());
  std::vector<std::string> bodies(1);
  for (const auto& [h, data] : *blocks) {
    if (!want.erase(h)) continue;  // the server has it, or it is already in a request
    if (bodies.back().size() + data.size() + kFrameHeaderSize > kUploadRequestBytes) bodies.emplace_back();
    AppendBlockFrame(&bodies.back(), h, data);
    stats->blocks_sent++;
    stats->bytes_sent += data.size();
  }
  std::vector<std::function<Status()>> tasks;
  for (auto& b : bodies)
    if (!b.empty()) tasks.push_back([client, &b] { return client->UploadBlocks(b); });
  stats->requests += tasks.size();
  RETURN_IF_ERROR(RunParallel(tasks, parallel));
  blocks->clear();
  return Status::Ok();
}

Result<std::vector<Hash128>> UploadFileBlocks(ApiClient* client, int fd, uint64_t size,
                                              const Manifest& base, const std::vector<bool>& dirty,
                                              int parallel, UploadStats* stats, BlockBatch* shared,
                                              const std::string* mem,
                                              const std::unordered_map<uint64_t, Hash128>* known,
                                              std::vector<BigBuffer>* bodies) {
  if (mem && mem->size() != size)
    return Status::Internal("upload of " + std::to_string(size) + " bytes given " + std::to_string(mem->size()));
  const bool small = shared && size <= kSharedBatchFileBytes;
  const uint64_t nblocks = (size + kBlockSize - 1) / kBlockSize;
  std::vector<Hash128> out(nblocks);
  // A clean block of the same length keeps its hash (a last block that
  // grew or shrank is read again).
  auto reuse = [&](uint64_t b) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - b * kBlockSize));
    const bool same_len = b < base.blocks.size() && std::min<uint64_t>(kBlockSize, base.size - b * kBlockSize) == len;
    return same_len && !(b < dirty.size() && dirty[b]);
  };
  // A block sent ahead keeps the hash it was sent with.
  auto sent_ahead = [&](uint64_t b) {
    if (!known) return false;
    auto it = known->find(b);
    if (it == known->end() || (b + 1) * kBlockSize > size) return false;  // (only whole blocks go ahead)
    out[b] = it->second;
    return true;
  };
  if (!small) {
    std::vector<uint64_t> todo;
    for (uint64_t b = 0; b < nblocks; ++b) {
      if (reuse(b)) out[b] = base.blocks[b];
      else if (!sent_ahead(b)) todo.push_back(b);
    }
    // More than a small file's worth, with a pool of bodies: read straight
    // into them, not a string per block and bodies grown by appending
    // (fresh memory to fault in: 16 MiB left at a send-ahead's close cost
    // 5,000 faults). Without, only more than a batch goes that way.
    if (todo.size() * kBlockSize > (bodies ? kSharedBatchFileBytes : kLargeBatchBytes)) {
      BlockSender sender(client, kUploadSenders, bodies);
      RETURN_IF_ERROR(UploadLargeFile(client, fd, mem, size, todo, &out, stats, sender));
      RETURN_IF_ERROR(sender.Finish());
      if (stats->on_progress) stats->on_progress(size);
      return out;
    }
  }
  // A small file, or few changed blocks: read, asked about and sent at once.
  std::vector<std::pair<Hash128, std::string>> batch;
  ReadSpan read;
  UploadStats sent_stats;
  for (uint64_t b = 0; b < nblocks; ++b) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - b * kBlockSize));
    if (reuse(b)) {
      out[b] = base.blocks[b];
      continue;
    }
    if (sent_ahead(b)) continue;
    std::string data(len, '\0');
    RETURN_IF_ERROR(ReadBlock(fd, mem, size, b * kBlockSize, len, data.data()));
    if (!mem) read.Add(b * kBlockSize, len);
    out[b] = HashBlock(data);
    stats->blocks_hashed++;
    if (small) {
      shared->bytes += len;
      shared->blocks.emplace_back(out[b], std::move(data));
    } else {
      batch.emplace_back(out[b], std::move(data));
    }
  }
  read.Drop(fd, stats->drop_behind);
  RETURN_IF_ERROR(SendMissingBlocks(client, &batch, parallel, &sent_stats));
  if (small && shared->bytes >= kSharedSendBytes) {
    RETURN_IF_ERROR(SendMissingBlocks(client, &shared->blocks, parallel, &sent_stats));
    shared->bytes = 0;
  }
  if (stats->on_progress) stats->on_progress(size);
  stats->blocks_sent += sent_stats.blocks_sent;
  stats->bytes_sent += sent_stats.bytes_sent;
  stats->requests += sent_stats.requests;
  return out;
}

Result<std::vector<Hash128>> UploadBlocksAhead(ApiClient* client, int fd, uint64_t size,
                                               const std::vector<uint64_t>& blocks, UploadStats* stats,
                                               BlockSender* sender) {
  for (uint64_t b : blocks)
    if ((b + 1) * kBlockSize > size) return Status::Internal("block " + std::to_string(b) + " is not whole; it cannot go ahead");
  std::vector<Hash128> all(blocks.empty() ? 0 : blocks.back() + 1);
  if (sender) {
    RETURN_IF_ERROR(UploadLargeFile(client, fd, nullptr, size, blocks, &all, stats, *sender));
  } else {
    BlockSender own(client, kUploadSenders);
    RETURN_IF_ERROR(UploadLargeFile(client, fd, nullptr, size, blocks, &all, stats, own));
    RETURN_IF_ERROR(own.Finish());
  }
  std::vector<Hash128> out;
  out.reserve(blocks.size());
  for (uint64_t b : blocks) out.push_back(all[b]);
  return out;
}

}  // namespace tidefs
