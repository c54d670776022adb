// WebSocket messages: events as a mount receives them, progress reports as
// the server receives them.
#include <string_view>

#include "core/event_codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view msg(reinterpret_cast<const char*>(data), size);
  auto ev = tidefs::DecodeEvent(msg);
  if (ev.ok() && ev->type == tidefs::Event::Type::kCommit && ev->prev >= ev->seq) __builtin_trap();
  auto rep = tidefs::DecodeProgressReport(msg);
  if (rep.ok()) {
    // What the server re-sends must decode the same.
    auto again = tidefs::DecodeProgressReport(tidefs::EncodeProgressReport(*rep));
    if (!again.ok() || *again != *rep) __builtin_trap();
  }
  return 0;
}
