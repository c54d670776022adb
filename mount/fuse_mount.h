// `tidefs mount`: presents a project as a folder through the libfuse3
// low-level API. This first cut is read-only: the tree comes from the
// snapshot (then /changes), file bytes from the chunk cache.
#pragma once

#include <string>

#include "client/api_client.h"
#include "core/status.h"

namespace tidefs {

struct MountOptions {
  ClientOptions client;
  std::string device = "mount";
  std::string cache_dir;  // default: ~/.cache/tidefs/<project>
  std::string mountpoint;
  bool foreground = false;
  int ready_fd = -1;  // written once the tree is visible (background start)
};

// Mounts and serves until unmounted (fusermount3 -u, umount, SIGTERM).
Status RunMount(const MountOptions& opts);

}  // namespace tidefs
