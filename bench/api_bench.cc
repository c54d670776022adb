// tidefs_bench: measures the server's v1 API over loopback, with a baseline
// measured in the same run for every figure. Driven by bench/server_bench.sh.
//   tidefs_bench URL PROJECT TOKEN <command> [args]
// Commands print "name value unit" lines.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "client/api_client.h"
#include "client/importer.h"
#include "core/block_frame.h"
#include "core/snapshot_codec.h"
#include "core/sqlite.h"

using namespace tidefs;
using Clock = std::chrono::steady_clock;

namespace {

double Secs(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

void Say(const std::string& name, double value, const std::string& unit) {
  printf("%-40s %12.3f %s\n", name.c_str(), value, unit.c_str());
  fflush(stdout);
}

[[noreturn]] void Die(const Status& st, const char* what) {
  fprintf(stderr, "bench: %s: %s\n", what, st.ToString().c_str());
  exit(1);
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    memcpy(&s[i], &v, 8);
  }
  return s;
}

// Creates `count` files named fNNNNNNN in a new directory `dir`, in commits
// of `batch` ops. Sizes vary; content comes from a few shared blocks.
uint64_t PopulateDir(ApiClient& c, const std::string& dir, size_t count, size_t batch, uint64_t parent = kRootId) {
  std::vector<std::pair<Hash128, uint64_t>> blocks;
  std::string body;
  for (int i = 0; i < 64; ++i) {
    std::string b = RandomBytes(100 + i * 997, i);
    Hash128 h = HashBlock(b);
    blocks.emplace_back(h, b.size());
    AppendBlockFrame(&body, h, b);
  }
  if (Status st = c.UploadBlocks(body); !st.ok()) Die(st, "upload");
  CommitOp d;
  d.type = OpType::kMkdir;
  d.id = NewNodeId();
  d.parent = parent;
  d.name = dir;
  std::vector<CommitOp> ops{d};
  std::mt19937 rng(std::hash<std::string>()(dir));  // each directory differs
  for (size_t i = 0; i < count; ++i) {
    CommitOp op;
    op.type = OpType::kCreate;
    op.id = NewNodeId();
    op.parent = d.id;
    char name[32];
    snprintf(name, sizeof name, "f%07zu", i);
    op.name = name;
    auto& [h, size] = blocks[rng() % blocks.size()];
    op.size = size;
    op.blocks = {h};
    op.has_mtime = true;
    op.mtime_ns = 1795000000000000000 + static_cast<int64_t>(rng() % 1000000) * 1000000;
    ops.push_back(std::move(op));
    if (ops.size() >= batch) {
      auto r = c.Commit(ops);
      if (!r.ok() || r->refused) Die(r.ok() ? Status::Conflict(r->message) : r.status(), "commit");
      ops.clear();
    }
  }
  if (!ops.empty()) {
    auto r = c.Commit(ops);
    if (!r.ok() || r->refused) Die(r.ok() ? Status::Conflict(r->message) : r.status(), "commit");
  }
  return d.id;
}

struct LoadResult {
  double p50, p99, max, rate;
  size_t errors;
};

// Open-loop load: requests are scheduled at `rate`/s over `seconds`, spread
// over `threads` keep-alive connections; latency counts from the scheduled
// time, so a slow answer also delays (and charges) the requests behind it.
LoadResult Load(ApiClient& c, const std::vector<std::string>& paths, double rate, double seconds, int threads) {
  const size_t total = static_cast<size_t>(rate * seconds);
  std::vector<double> lat(total, 0);
  std::atomic<size_t> errors{0};
  auto start = Clock::now() + std::chrono::milliseconds(100);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (size_t i = t; i < total; i += threads) {
        auto due = start + std::chrono::nanoseconds(static_cast<int64_t>(i * 1e9 / rate));
        std::this_thread::sleep_until(due);
        auto a = c.Raw("GET", paths[i % paths.size()]);
        if (!a.ok() || a->status != 200) errors++;
        lat[i] = Secs(due, Clock::now()) * 1000;
      }
    });
  }
  for (auto& th : pool) th.join();
  double elapsed = Secs(start, Clock::now());
  std::sort(lat.begin(), lat.end());
  return {lat[total / 2], lat[total * 99 / 100], lat.back(), total / elapsed, errors.load()};
}

// Loopback TCP ceiling: one connection, one sender thread, 1 GiB.
double LoopbackMBps() {
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(ls, reinterpret_cast<sockaddr*>(&a), &len);
  listen(ls, 1);
  const size_t total = 1ull << 30;
  std::thread sender([&] {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
    std::string buf = RandomBytes(1 << 20, 9);
    for (size_t sent = 0; sent < total;) {
      ssize_t n = send(s, buf.data(), buf.size(), 0);
      if (n <= 0) break;
      sent += n;
    }
    close(s);
  });
  int r = accept(ls, nullptr, nullptr);
  std::string buf(1 << 20, '\0');
  auto t0 = Clock::now();
  size_t got = 0;
  while (got < total) {
    ssize_t n = recv(r, buf.data(), buf.size(), 0);
    if (n <= 0) break;
    got += n;
  }
  double s = Secs(t0, Clock::now());
  sender.join();
  close(r);
  close(ls);
  return got / s / 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: tidefs_bench URL PROJECT TOKEN nodes|populate|snapshot|transfer|commit [args]\n");
    return 2;
  }
  ClientOptions o;
  o.server = argv[1];
  o.project = argv[2];
  o.token = argv[3];
  o.retries = 0;
  ApiClient c(o);
  std::string cmd = argv[4];

  if (cmd == "nodes") {
    // /nodes pages of 500 in a 100k-entry directory under load.
    size_t entries = argc > 5 ? std::stoul(argv[5]) : 100000;
    double rate = argc > 6 ? std::stod(argv[6]) : 2000;
    double seconds = argc > 7 ? std::stod(argv[7]) : 10;
    uint64_t dir = PopulateDir(c, "big-dir", entries, 10000);
    // Cursors spread over the whole directory.
    std::vector<std::string> paths;
    std::string after;
    for (;;) {
      std::string p = "/nodes?parent=" + std::to_string(dir) + (after.empty() ? "" : "&after=" + ApiClient::UrlEncode(after));
      paths.push_back(p);
      auto page = c.ListNodes(dir, after);
      if (!page.ok()) Die(page.status(), "list");
      if (!page->next) break;
      after = *page->next;
    }
    std::vector<std::string> health{"//healthz"};
    LoadResult base = Load(c, health, rate, seconds / 2, 16);
    Say("baseline_healthz_p50", base.p50, "ms");
    Say("baseline_healthz_p99", base.p99, "ms");
    LoadResult r = Load(c, paths, rate, seconds, 16);
    Say("nodes_page500_rate", r.rate, "req/s");
    Say("nodes_page500_p50", r.p50, "ms");
    Say("nodes_page500_p99", r.p99, "ms");
    Say("nodes_page500_max", r.max, "ms");
    Say("nodes_page500_errors", r.errors, "");
    Say("nodes_page500_p99_over_healthz_p99", r.p99 / base.p99, "x");
  } else if (cmd == "populate") {
    // DIRS directories of PER small files each (the 1M-node mount benchmark).
    size_t dirs = argc > 5 ? std::stoul(argv[5]) : 1000;
    size_t per = argc > 6 ? std::stoul(argv[6]) : 1000;
    for (size_t d = 0; d < dirs; ++d) PopulateDir(c, "d" + std::to_string(d), per, 10000);
    Say("populate_nodes", dirs * (per + 1), "nodes");
  } else if (cmd == "snapshot") {
    size_t dirs = argc > 5 ? std::stoul(argv[5]) : 1000;
    size_t per = argc > 6 ? std::stoul(argv[6]) : 1000;
    auto t0 = Clock::now();
    for (size_t d = 0; d < dirs; ++d) PopulateDir(c, "d" + std::to_string(d), per, 10000);
    Say("populate_nodes", dirs * (per + 1), "nodes");
    Say("populate_seconds", Secs(t0, Clock::now()), "s");
    t0 = Clock::now();
    auto first = c.Raw("GET", "/snapshot");
    double build = Secs(t0, Clock::now());
    t0 = Clock::now();
    auto second = c.Raw("GET", "/snapshot");
    double cached = Secs(t0, Clock::now());
    if (!first.ok() || first->status != 200) Die(first.ok() ? Status::Internal(first->body) : first.status(), "snapshot");
    t0 = Clock::now();
    auto snap = DecodeSnapshot(first->body);
    double decode = Secs(t0, Clock::now());
    if (!snap.ok()) Die(snap.status(), "decode");
    Say("snapshot_nodes", snap->nodes.size(), "nodes");
    Say("snapshot_bytes_per_node", double(first->body.size()) / snap->nodes.size(), "B");
    Say("snapshot_first_request_build", build, "s");
    Say("snapshot_cached_request", cached, "s");
    Say("snapshot_client_decode", decode, "s");
  } else if (cmd == "transfer") {
    size_t mib = argc > 5 ? std::stoul(argv[5]) : 1024;
    int parallel = argc > 6 ? std::stoi(argv[6]) : 4;
    double loop = LoopbackMBps();
    Say("baseline_loopback_tcp", loop, "MB/s");
    const size_t total = mib << 20;
    // Upload: incompressible blocks in 4 MiB requests, `parallel` in flight.
    std::string data = RandomBytes(total, 1234);
    std::vector<Hash128> hashes;
    for (size_t off = 0; off < total; off += kBlockSize) hashes.push_back(HashBlock(data.data() + off, kBlockSize));
    std::vector<std::string> bodies;
    for (size_t off = 0; off < total; off += 4 << 20) {
      std::string b;
      for (size_t k = off; k < off + (4 << 20) && k < total; k += kBlockSize)
        AppendBlockFrame(&b, hashes[k / kBlockSize], std::string_view(data).substr(k, kBlockSize));
      bodies.push_back(std::move(b));
    }
    if (getenv("BENCH_PAUSE")) {  // lets a profiler attach to the upload alone
      fprintf(stderr, "uploading in 2 s\n");
      std::this_thread::sleep_for(std::chrono::seconds(2));
    }
    std::atomic<size_t> next{0};
    auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < parallel; ++t)
      pool.emplace_back([&] {
        for (size_t i; (i = next++) < bodies.size();)
          if (Status st = c.UploadBlocks(bodies[i]); !st.ok()) Die(st, "upload");
      });
    for (auto& th : pool) th.join();
    double up = total / Secs(t0, Clock::now()) / 1e6;
    Say("upload_blocks_incompressible", up, "MB/s");
    Say("upload_over_loopback", up / loop, "x");
    CommitOp f;
    f.type = OpType::kCreate;
    f.id = NewNodeId();
    f.parent = kRootId;
    f.name = "big-" + std::to_string(f.id);
    f.size = total;
    f.blocks = hashes;
    auto r = c.Commit({f});
    if (!r.ok() || r->refused) Die(r.ok() ? Status::Conflict(r->message) : r.status(), "commit");
    // Download: 4 MiB ranges (the mount's chunk), `parallel` in flight.
    for (int round = 0; round < 2; ++round) {
      next = 0;
      std::atomic<size_t> bytes{0};
      t0 = Clock::now();
      pool.clear();
      for (int t = 0; t < parallel; ++t)
        pool.emplace_back([&] {
          for (size_t i; (i = next++) < total / kChunkSize;) {
            auto got = c.GetContent(f.id, 0, i * kChunkSize, (i + 1) * kChunkSize - 1);
            if (!got.ok() || got->size() != kChunkSize) Die(got.ok() ? Status::Internal("short") : got.status(), "download");
            if (round == 0 && memcmp(got->data(), data.data() + i * kChunkSize, kChunkSize) != 0)
              Die(Status::Corruption("bytes differ"), "download");
            bytes += got->size();
          }
        });
      for (auto& th : pool) th.join();
      double down = bytes / Secs(t0, Clock::now()) / 1e6;
      if (round == 1) {
        Say("download_content_4mib_ranges", down, "MB/s");
        Say("download_over_loopback", down / loop, "x");
      }
    }
  } else if (cmd == "commit") {
    size_t n = argc > 5 ? std::stoul(argv[5]) : 10000;
    // Baseline: the same rows inserted straight into a SQLite table.
    {
      std::string path = "/tmp/tidefs-bench-baseline.db";
      unlink(path.c_str());
      unlink((path + "-wal").c_str());
      auto db = Db::Open(path);
      if (!db.ok()) Die(db.status(), "sqlite");
      (void)(*db)->Exec("CREATE TABLE nodes(project, id, parent, name, kind, mode, size, mtime_ns, version, seq, deleted, target, PRIMARY KEY(project, id)) WITHOUT ROWID; CREATE UNIQUE INDEX n ON nodes(project, parent, name) WHERE deleted=0; CREATE INDEX s ON nodes(project, seq)");
      auto t0 = Clock::now();
      (void)(*db)->Exec("BEGIN");
      auto st = (*db)->Prepare("INSERT INTO nodes VALUES(1, ?1, 1, ?2, 1, 420, 0, 0, 1, ?3, 0, NULL)");
      for (size_t i = 0; i < n; ++i) {
        st->Reset();
        st->Bind(1, NewNodeId()).Bind(2, "f" + std::to_string(i)).Bind(3, i);
        (void)st->Run();
      }
      (void)(*db)->Exec("COMMIT");
      Say("baseline_sqlite_insert_rows", Secs(t0, Clock::now()), "s");
      unlink(path.c_str());
    }
    std::string block = "hello";
    std::string body;
    AppendBlockFrame(&body, HashBlock(block), block);
    if (Status st = c.UploadBlocks(body); !st.ok()) Die(st, "upload");
    CommitOp d;
    d.type = OpType::kMkdir;
    d.id = NewNodeId();
    d.parent = kRootId;
    d.name = "commit-bench-" + std::to_string(d.id);
    auto r0 = c.Commit({d});
    std::vector<CommitOp> ops;
    for (size_t i = 0; i < n; ++i) {
      CommitOp op;
      op.type = OpType::kCreate;
      op.id = NewNodeId();
      op.parent = d.id;
      op.name = "file" + std::to_string(i);
      op.size = block.size();
      op.blocks = {HashBlock(block)};
      ops.push_back(std::move(op));
    }
    auto t0 = Clock::now();
    auto r = c.Commit(ops);
    double s = Secs(t0, Clock::now());
    if (!r.ok() || r->refused) Die(r.ok() ? Status::Conflict(r->message) : r.status(), "commit");
    Say("commit_10k_creates_one_batch", s, "s");
  } else {
    fprintf(stderr, "unknown command %s\n", cmd.c_str());
    return 2;
  }
  return 0;
}
