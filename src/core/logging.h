// Logging setup: spdlog to stderr, quiet (warnings) by default; each -v
// step shows more (1: info, 2: debug, 3: trace).
#pragma once

namespace tidefs {
void SetupLogging(int verbosity);
// Names the calling thread (at most 15 characters shown) for top -H, perf
// and gdb.
void NameThread(const char* name);
}
