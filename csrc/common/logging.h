// Minimal leveled logging to stderr, configured once at init.
#ifndef BLUEFOG_COMMON_LOGGING_H
#define BLUEFOG_COMMON_LOGGING_H

#include <sstream>
#include <string>

namespace bluefog {

enum class LogLevel : int { TRACE = 0, DEBUG = 1, INFO = 2, WARNING = 3, ERROR = 4, FATAL = 5 };

bool ParseLogLevel(const std::string& text, LogLevel* level);
const char* LogLevelName(LogLevel level);

// Set by init from the config; rank -1 means "not known yet".
void SetLogOptions(LogLevel min_level, bool hide_time, int rank);
bool LogEnabled(LogLevel level);

class LogMessage {
 public:
  explicit LogMessage(LogLevel level) : level_(level) {}
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  LogLevel level_;
  std::ostringstream stream_;
};

// Lets BFLOG be one expression (safe inside an unbraced if/else).
struct LogVoidify {
  void operator&(std::ostream&) {}
};

}  // namespace bluefog

#define BFLOG(LEVEL)                                           \
  !::bluefog::LogEnabled(::bluefog::LogLevel::LEVEL) ? (void)0 \
                                                     : ::bluefog::LogVoidify() & ::bluefog::LogMessage(::bluefog::LogLevel::LEVEL).stream()

#endif  // BLUEFOG_COMMON_LOGGING_H
