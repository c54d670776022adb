// `tidefs mount`: presents a project as a folder through the libfuse3
// low-level API. This first cut is read-only: the tree comes from the
// snapshot (then /changes), file bytes from the chunk cache.
#pragma once

#include <functional>
#include <string>

#include "client/api_client.h"
#include "core/status.h"

namespace tidefs {

struct MountOptions {
  ClientOptions client;
  std::string device;  // default: the host name
  std::string cache_dir;  // default: ~/.cache/tidefs/<project>
  uint64_t cache_bytes = 10ull << 30;
  // How long a read of bytes not yet cached keeps trying an unreachable
  // server before it fails with EIO.
  double retry_seconds = 10;
  // Unmount gives up sending after this long without progress (the server
  // unreachable): what is left stays for the next mount.
  double send_patience_seconds = 15;
  // A large file still being written sends what the writing has left
  // behind before it is closed (false: only once closed or idle).
  bool send_ahead = true;
  std::string mountpoint;
  bool foreground = false;
  // Called once the tree is visible (a background start detaches here).
  std::function<void()> on_ready;
};

// Mounts and serves until unmounted (fusermount3 -u, umount, SIGTERM).
Status RunMount(const MountOptions& opts);

// Unmounts and waits until the mount's process has finished (so whatever
// it had to save is saved); a mount that is not ours, or not there, is an
// error that says so.
Status Unmount(const std::string& mountpoint);

// The running mount's counters (requests, cache, fetches) as JSON.
Result<std::string> MountStatus(const std::string& mountpoint);
// Returns once the mount's journal is empty: every change recorded before
// the call (files closed or fsynced, namespace changes) is on the server.
// Gives up after `timeout_seconds` (0: never) with kUnavailable; with
// `show`, says on stderr what is left, once a second.
Status WaitSynced(const std::string& mountpoint, double timeout_seconds, bool show);

// The status JSON as a few lines for people: the connection, cursor and
// head, pending journal entries, and each transfer with a progress bar.
std::string FormatStatus(const std::string& json);

// ~/.cache/tidefs/<project> (or /tmp/.cache/... without $HOME).
std::string DefaultCacheDir(const std::string& project);

// Parses a size such as 10G, 512M, 64K or 4096 (binary units).
Result<uint64_t> ParseSize(const std::string& text);

}  // namespace tidefs
