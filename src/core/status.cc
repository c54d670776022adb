#include "core/status.h"

#include <cerrno>

namespace tidefs {

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid_argument";
    case Code::kNotFound: return "not_found";
    case Code::kAlreadyExists: return "already_exists";
    case Code::kConflict: return "conflict";
    case Code::kNotEmpty: return "not_empty";
    case Code::kUnauthenticated: return "unauthenticated";
    case Code::kPermissionDenied: return "permission_denied";
    case Code::kTooLarge: return "too_large";
    case Code::kRangeNotSatisfiable: return "range_not_satisfiable";
    case Code::kGone: return "gone";
    case Code::kUnavailable: return "unavailable";
    case Code::kIoError: return "io_error";
    case Code::kCorruption: return "corruption";
    case Code::kInternal: return "internal";
  }
  return "internal";
}

int HttpStatusFor(Code code) {
  switch (code) {
    case Code::kOk: return 200;
    case Code::kInvalidArgument: return 400;
    case Code::kNotFound: return 404;
    case Code::kAlreadyExists:
    case Code::kConflict:
    case Code::kNotEmpty: return 409;
    case Code::kUnauthenticated: return 401;
    case Code::kPermissionDenied: return 403;
    case Code::kTooLarge: return 413;
    case Code::kRangeNotSatisfiable: return 416;
    case Code::kGone: return 410;
    case Code::kUnavailable: return 503;
    case Code::kIoError:
    case Code::kCorruption:
    case Code::kInternal: return 500;
  }
  return 500;
}

int ErrnoFor(Code code) {
  switch (code) {
    case Code::kOk: return 0;
    case Code::kInvalidArgument: return EINVAL;
    case Code::kNotFound: return ENOENT;
    case Code::kAlreadyExists: return EEXIST;
    case Code::kNotEmpty: return ENOTEMPTY;
    case Code::kPermissionDenied:
    case Code::kUnauthenticated: return EACCES;
    case Code::kTooLarge: return EFBIG;
    // A conflict is resolved by the journal with a conflict copy; if it
    // reaches a syscall, EIO is the honest answer.
    case Code::kConflict:
    case Code::kRangeNotSatisfiable:
    case Code::kGone:
    case Code::kUnavailable:
    case Code::kIoError:
    case Code::kCorruption:
    case Code::kInternal: return EIO;
  }
  return EIO;
}

Code CodeForHttpStatus(int status) {
  switch (status) {
    case 200: case 201: case 204: case 206: return Code::kOk;
    case 400: case 422: return Code::kInvalidArgument;
    case 401: return Code::kUnauthenticated;
    case 403: return Code::kPermissionDenied;
    case 404: return Code::kNotFound;
    case 409: return Code::kConflict;
    case 413: return Code::kTooLarge;
    case 416: return Code::kRangeNotSatisfiable;
    case 410: return Code::kGone;
    case 502: case 503: case 504: return Code::kUnavailable;
    default: return status >= 500 ? Code::kInternal : Code::kInvalidArgument;
  }
}

}  // namespace tidefs
