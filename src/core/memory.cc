#include "core/memory.h"

#include <malloc.h>

namespace tidefs {

void TuneMallocForLargeBuffers() {
  mallopt(M_MMAP_THRESHOLD, 64 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);
}

}  // namespace tidefs
