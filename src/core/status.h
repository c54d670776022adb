// Status and Result<T>: errors as values. No exception crosses a FUSE op,
// a thread or a request handler; callers map a Code to an errno or an HTTP
// status with the functions below.
#pragma once

#include <optional>
#include <string>
#include <utility>

namespace tidefs {

enum class Code {
  kOk = 0,
  kInvalidArgument,    // bad input from outside: 400 / EINVAL
  kNotFound,           // 404 / ENOENT
  kAlreadyExists,      // 409 / EEXIST
  kConflict,           // stale base version: 409
  kNotEmpty,           // directory not empty: 409 / ENOTEMPTY
  kUnauthenticated,    // 401
  kPermissionDenied,   // 403 / EACCES
  kTooLarge,           // 413 / EFBIG
  kRangeNotSatisfiable,// 416
  kGone,               // history purged (a checkpoint too old): 410
  kUnavailable,        // server unreachable: 503 / EIO
  kIoError,            // local disk trouble: 500 / EIO
  kCorruption,         // bytes failed a check: 500 / EIO
  kInternal,           // a bug: 500 / EIO
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  static Status Invalid(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status Exists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
  static Status Conflict(std::string m) { return {Code::kConflict, std::move(m)}; }
  static Status NotEmpty(std::string m) { return {Code::kNotEmpty, std::move(m)}; }
  static Status Unauthenticated(std::string m) { return {Code::kUnauthenticated, std::move(m)}; }
  static Status Denied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
  static Status TooLarge(std::string m) { return {Code::kTooLarge, std::move(m)}; }
  static Status Unavailable(std::string m) { return {Code::kUnavailable, std::move(m)}; }
  static Status IoError(std::string m) { return {Code::kIoError, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// The short machine-readable name used as "error" in JSON answers.
const char* CodeName(Code code);
int HttpStatusFor(Code code);
// Positive errno value for a syscall answer.
int ErrnoFor(Code code);
Code CodeForHttpStatus(int status);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {}  // NOLINT
  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

#define TIDEFS_CONCAT_INNER(a, b) a##b
#define TIDEFS_CONCAT(a, b) TIDEFS_CONCAT_INNER(a, b)

#define RETURN_IF_ERROR(expr)              \
  do {                                     \
    ::tidefs::Status _st = (expr);         \
    if (!_st.ok()) return _st;             \
  } while (0)

#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) return tmp.status();         \
  lhs = std::move(tmp).value()

#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(TIDEFS_CONCAT(_res_, __LINE__), lhs, expr)

}  // namespace tidefs
