// The mount's intent log, read back after a crash: any bytes (a torn or
// damaged file) must decode to a prefix of whole changes, never crash, and
// what decodes must encode and decode again to the same.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/local_change.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tidefs;
  DecodedLog log = DecodeLocalLog(std::string_view(reinterpret_cast<const char*>(data), size));
  if (log.used > size) abort();
  std::string again;
  for (const auto& c : log.changes) again += EncodeLocalChange(c);
  DecodedLog back = DecodeLocalLog(again);
  if (back.changes.size() != log.changes.size() || !back.stopped.empty() || back.used != again.size()) abort();
  for (size_t i = 0; i < back.changes.size(); ++i) {
    const auto& a = log.changes[i];
    const auto& b = back.changes[i];
    if (a.ticket != b.ticket || a.rows != b.rows || a.entries.size() != b.entries.size() ||
        a.files.size() != b.files.size() || a.staged.size() != b.staged.size())
      abort();
    for (size_t k = 0; k < a.staged.size(); ++k)
      if (a.staged[k].id != b.staged[k].id || a.staged[k].bytes != b.staged[k].bytes) abort();
    for (size_t k = 0; k < a.files.size(); ++k)
      if (a.files[k].present != b.files[k].present || a.files[k].version != b.files[k].version) abort();
  }
  return 0;
}
