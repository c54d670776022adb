// The FUSE session settings of `tidefs mount`, shared with
// bench/fuse_floor.cc: the floor must pay exactly what the mount pays.
// Include after defining FUSE_USE_VERSION and including fuse_lowlevel.h.
#pragma once

namespace tidefs {

// The kernel's requests are at most this large (-o max_read must match).
inline constexpr const char* kFuseMaxReadOption = "max_read=1048576";

inline void TuneFuseConnection(fuse_conn_info* conn) {
  // Large requests and kernel read-ahead: sequential reads arrive as 1 MiB
  // requests and keep several in flight while chunks stream in.
  conn->max_read = 1u << 20;   // matches kFuseMaxReadOption
  conn->max_write = 1u << 20;  // writes of 1 MiB, not 128 KiB
  conn->max_readahead = 4u << 20;
  conn->max_background = 64;
  conn->congestion_threshold = 48;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // Cached pages stay valid until the mount says otherwise (precise
  // invalidation), so reads of cached data need no attribute check.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE;
}

// The multi-threaded loop's settings.
inline fuse_loop_config FuseLoopConfig() {
  fuse_loop_config cfg{};
  cfg.clone_fd = 0;
  cfg.max_idle_threads = 16;
  return cfg;
}

}  // namespace tidefs
