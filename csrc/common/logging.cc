#include "logging.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

namespace bluefog {

namespace {
std::atomic<int> g_min_level{static_cast<int>(LogLevel::WARNING)};
std::atomic<bool> g_hide_time{false};
std::atomic<int> g_rank{-1};
}  // namespace

bool ParseLogLevel(const std::string& text, LogLevel* level) {
  static const struct { const char* name; LogLevel level; } kLevels[] = {
      {"trace", LogLevel::TRACE},     {"debug", LogLevel::DEBUG}, {"info", LogLevel::INFO},
      {"warning", LogLevel::WARNING}, {"warn", LogLevel::WARNING}, {"error", LogLevel::ERROR},
      {"fatal", LogLevel::FATAL}};
  std::string lower;
  for (char c : text) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  for (const auto& entry : kLevels) {
    if (lower == entry.name) {
      *level = entry.level;
      return true;
    }
  }
  return false;
}

const char* LogLevelName(LogLevel level) {
  switch (level) {
    case LogLevel::TRACE: return "trace";
    case LogLevel::DEBUG: return "debug";
    case LogLevel::INFO: return "info";
    case LogLevel::WARNING: return "warning";
    case LogLevel::ERROR: return "error";
    case LogLevel::FATAL: return "fatal";
  }
  return "unknown";
}

void SetLogOptions(LogLevel min_level, bool hide_time, int rank) {
  g_min_level = static_cast<int>(min_level);
  g_hide_time = hide_time;
  g_rank = rank;
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= g_min_level.load(); }

LogMessage::~LogMessage() {
  static const char kLetters[] = "TDIWEF";
  std::string prefix;
  if (!g_hide_time) {
    auto now = std::chrono::system_clock::now();
    std::time_t t = std::chrono::system_clock::to_time_t(now);
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count() % 1000000;
    char buf[64];
    std::tm tm_buf;
    localtime_r(&t, &tm_buf);
    std::strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S", &tm_buf);
    char frac[16];
    std::snprintf(frac, sizeof(frac), ".%06lld", static_cast<long long>(us));
    prefix = std::string(buf) + frac + " ";
  }
  int rank = g_rank.load();
  std::string rank_text = rank >= 0 ? std::to_string(rank) : std::string("?");
  std::string line = "[" + prefix + kLetters[static_cast<int>(level_)] + " bluefog rank " + rank_text +
                     "] " + stream_.str() + "\n";
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
}

}  // namespace bluefog
