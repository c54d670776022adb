// What `tidefs serve` and `tidefs admin` do, callable from the CLI.
#pragma once

#include <chrono>
#include <string>

#include "core/status.h"
#include "server/metadata_store.h"

namespace tidefs {

struct ServeOptions {
  std::string data_dir;
  std::string host = "127.0.0.1";
  uint16_t port = 7750;
  int threads = 8;
  std::string ready_file;  // written with the URL once listening
  // Uploaded blocks that no commit named for this long are collected, a
  // round every `collect_every`.
  std::chrono::seconds block_grace{86400};
  std::chrono::seconds collect_every{3600};
};

// Runs the server until SIGINT/SIGTERM.
Status Serve(const ServeOptions& opts);

// Opens the metadata store of a data dir (creating it), as serve does.
Result<std::unique_ptr<MetadataStore>> OpenDataDir(const std::string& data_dir);

// Creates a token for device of project; returns the token text (shown once).
Result<std::string> CreateToken(MetadataStore* store, const std::string& project, const std::string& device,
                                bool read_only);
TokenHash HashToken(std::string_view token);

}  // namespace tidefs
