// Plain request/response types between the Beast server (http_server.cc,
// the only file that includes Beast) and the API handlers.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "core/status.h"

namespace tidefs {

struct HttpRequest {
  std::string method;
  std::string path;                           // percent-decoded, without query
  std::map<std::string, std::string> query;   // percent-decoded
  std::map<std::string, std::string> headers; // lowercase names
  std::string_view body;  // valid while the request is handled
  bool bad_target = false;  // the target did not decode

  const std::string* Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? nullptr : &it->second;
  }
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  // When set, the body is produced piece by piece (large downloads):
  // `stream_length` bytes in all; each call returns the next piece, valid
  // until the next call (the producer owns its buffer: no copy here); an
  // error aborts the connection.
  std::function<Result<std::string_view>()> stream;
  uint64_t stream_length = 0;
};

}  // namespace tidefs
