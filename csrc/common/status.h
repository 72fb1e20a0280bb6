// Status: how every request completes. Frontends map the type to their exception.
#ifndef BLUEFOG_COMMON_STATUS_H
#define BLUEFOG_COMMON_STATUS_H

#include <functional>
#include <string>

namespace bluefog {

// Values are part of the C ABI: append only.
enum class StatusType : int {
  OK = 0,
  UNKNOWN_ERROR = 1,
  PRECONDITION_ERROR = 2,  // e.g. called before init, after shutdown
  ABORTED = 3,             // communication failure, peer shut down
  INVALID_ARGUMENT = 4,    // bad input, cross-rank mismatch
  IN_PROGRESS = 5,
};

class Status {
 public:
  Status() = default;
  static Status OK() { return Status(); }
  static Status UnknownError(std::string msg) { return Status(StatusType::UNKNOWN_ERROR, std::move(msg)); }
  static Status PreconditionError(std::string msg) { return Status(StatusType::PRECONDITION_ERROR, std::move(msg)); }
  static Status Aborted(std::string msg) { return Status(StatusType::ABORTED, std::move(msg)); }
  static Status InvalidArgument(std::string msg) { return Status(StatusType::INVALID_ARGUMENT, std::move(msg)); }
  static Status InProgress() { return Status(StatusType::IN_PROGRESS, ""); }

  bool ok() const { return type_ == StatusType::OK; }
  bool in_progress() const { return type_ == StatusType::IN_PROGRESS; }
  StatusType type() const { return type_; }
  const std::string& reason() const { return reason_; }

 private:
  Status(StatusType type, std::string reason) : type_(type), reason_(std::move(reason)) {}
  StatusType type_ = StatusType::OK;
  std::string reason_;
};

using StatusCallback = std::function<void(const Status&)>;

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_STATUS_H
