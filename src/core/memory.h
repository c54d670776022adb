// Process-wide allocator tuning for programs that move megabytes at a time.
#pragma once

namespace tidefs {

// Keeps multi-megabyte buffers (request bodies, chunks) on the heap for
// reuse instead of an mmap/munmap, and fresh zeroed pages, per use.
void TuneMallocForLargeBuffers();

}  // namespace tidefs
