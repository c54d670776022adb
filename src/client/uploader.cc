#include "client/uploader.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "core/block_frame.h"

namespace tidefs {
namespace {

constexpr size_t kFileBatchBytes = 32 << 20;  // read, hashed and sent before the next

}  // namespace

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
                                              const std::string* mem) {
  if (mem && mem->size() != size)
    return Status::Internal("upload of " + std::to_string(size) + " bytes given " + std::to_string(mem->size()));
  const bool small = shared && size <= kSharedBatchFileBytes;
  const uint64_t nblocks = (size + kBlockSize - 1) / kBlockSize;
  std::vector<Hash128> out(nblocks);
  std::vector<std::pair<Hash128, std::string>> batch, in_flight;
  size_t batch_bytes = 0;
  uint64_t read_from = UINT64_MAX, read_to = 0;  // what the batch read of the file
  auto drop_read = [&] {
    if (stats->drop_behind && read_to > read_from)
      (void)::posix_fadvise(fd, static_cast<off_t>(read_from), static_cast<off_t>(read_to - read_from), POSIX_FADV_DONTNEED);
    read_from = UINT64_MAX;
    read_to = 0;
  };
  UploadStats sent_stats;  // written by the sender only (joined before it is read)
  std::future<Status> sending;
  // An early return must not leave the sender running on our locals.
  struct Join {
    std::future<Status>* f;
    ~Join() {
      if (f->valid()) f->wait();
    }
  } join{&sending};
  for (uint64_t b = 0; b < nblocks; ++b) {
    const size_t len = static_cast<size_t>(std::min<uint64_t>(kBlockSize, size - b * kBlockSize));
    // A clean block of the same length keeps its hash (a last block that
    // grew or shrank is read again).
    const bool same_len = b < base.blocks.size() && std::min<uint64_t>(kBlockSize, base.size - b * kBlockSize) == len;
    const bool reuse = same_len && !(b < dirty.size() && dirty[b]);
    if (reuse) {
      out[b] = base.blocks[b];
      continue;
    }
    std::string data(len, '\0');
    size_t got = 0;
    if (mem) {
      mem->copy(data.data(), len, b * kBlockSize);
      got = len;
    }
    while (got < len) {
      ssize_t n = ::pread(fd, data.data() + got, len - got, static_cast<off_t>(b * kBlockSize + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return Status::IoError(std::string("cannot read the file to upload: ") + std::strerror(errno));
      if (n == 0) return Status::IoError("the file to upload is shorter than " + std::to_string(size) + " bytes");
      got += static_cast<size_t>(n);
    }
    if (!mem) {
      read_from = std::min(read_from, b * kBlockSize);
      read_to = b * kBlockSize + len;
    }
    out[b] = HashBlock(data);
    stats->blocks_hashed++;
    if (small) {
      shared->bytes += len;
      shared->blocks.emplace_back(out[b], std::move(data));
      continue;
    }
    batch_bytes += len;
    batch.emplace_back(out[b], std::move(data));
    if (batch_bytes >= kFileBatchBytes) {
      drop_read();
      // The batch goes up while the next one is read and hashed.
      if (sending.valid()) RETURN_IF_ERROR(sending.get());
      if (stats->on_progress && b > 0) stats->on_progress(std::min<uint64_t>(size, (b + 1) * kBlockSize - batch_bytes));
      in_flight = std::move(batch);
      batch.clear();
      sending = std::async(std::launch::async, [&] { return SendMissingBlocks(client, &in_flight, parallel, &sent_stats); });
      batch_bytes = 0;
    }
  }
  drop_read();
  if (sending.valid()) RETURN_IF_ERROR(sending.get());
  RETURN_IF_ERROR(SendMissingBlocks(client, &batch, parallel, &sent_stats));
  if (small && shared->bytes >= kFileBatchBytes) {
    RETURN_IF_ERROR(SendMissingBlocks(client, &shared->blocks, parallel, &sent_stats));
    shared->bytes = 0;
  }
  if (stats->on_progress) stats->on_progress(size);
  stats->blocks_sent += sent_stats.blocks_sent;
  stats->bytes_sent += sent_stats.bytes_sent;
  stats->requests += sent_stats.requests;
  return out;
}

}  // namespace tidefs
