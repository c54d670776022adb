#include "server/admin.h"

#include "core/memory.h"

#include <openssl/sha.h>
#include <sys/random.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include <spdlog/spdlog.h>

#include "server/api.h"
#include "server/block_store.h"
#include "server/http_server.h"
#include "server/metrics.h"

namespace tidefs {

Result<std::unique_ptr<MetadataStore>> OpenDataDir(const std::string& data_dir) {
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) return Status::IoError("cannot create data dir " + data_dir + ": " + ec.message());
  return OpenSqliteMetadataStore(data_dir + "/meta.db");
}

TokenHash HashToken(std::string_view token) {
  TokenHash h;
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), h.data());
  return h;
}

Result<std::string> CreateToken(MetadataStore* store, const std::string& project, const std::string& device,
                                bool read_only) {
  ASSIGN_OR_RETURN(ProjectInfo p, store->GetProject(project));
  RETURN_IF_ERROR(ValidateDeviceName(device));
  unsigned char raw[32];
  if (getrandom(raw, sizeof raw, 0) != sizeof raw) return Status::IoError("getrandom failed");
  static const char kHex[] = "0123456789abcdef";
  std::string token = "tdf_";
  for (unsigned char c : raw) {
    token += kHex[c >> 4];
    token += kHex[c & 15];
  }
  RETURN_IF_ERROR(store->AddToken(HashToken(token), p.id, device, read_only));
  return token;
}

Status Serve(const ServeOptions& opts) {
  TuneMallocForLargeBuffers();
  ASSIGN_OR_RETURN(auto meta, OpenDataDir(opts.data_dir));
  ASSIGN_OR_RETURN(auto blocks, OpenPackBlockStore(opts.data_dir + "/packs"));
  Metrics metrics;
  Api api(meta.get(), blocks.get(), &metrics);
  HttpServer server(&api, &metrics);
  RETURN_IF_ERROR(server.Listen(opts.host, opts.port));
  std::string url = "http://" + opts.host + ":" + std::to_string(server.port());
  spdlog::info("tidefs serving {} on {}", opts.data_dir, url);
  if (!opts.ready_file.empty()) {
    std::string tmp = opts.ready_file + ".tmp";
    {
      std::ofstream f(tmp);
      f << url << "\n";
      if (!f) return Status::IoError("cannot write ready file " + opts.ready_file);
    }
    std::filesystem::rename(tmp, opts.ready_file);
  }
  // The collector of uploads no commit named: a round now and then, off
  // the serving threads.
  api.set_block_grace(opts.block_grace);
  std::mutex collector_mu;
  std::condition_variable collector_cv;
  bool stopping = false;
  std::thread collector([&] {
    std::unique_lock lock(collector_mu);
    while (!collector_cv.wait_for(lock, opts.collect_every, [&] { return stopping; })) {
      lock.unlock();
      if (auto n = api.CollectBlocks(); !n.ok()) spdlog::warn("collecting unreferenced blocks: {}", n.status().ToString());
      lock.lock();
    }
  });
  server.Run(opts.threads);
  {
    std::lock_guard lock(collector_mu);
    stopping = true;
  }
  collector_cv.notify_all();
  collector.join();
  spdlog::info("tidefs server stopped");
  return Status::Ok();
}

}  // namespace tidefs
