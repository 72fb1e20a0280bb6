#include "config.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <sstream>

extern char** environ;

namespace bluefog {

namespace {

bool ParseDouble(const std::string& text, double* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(text.c_str(), &end);
  if (errno != 0 || end == text.c_str() || *end != '\0' || !std::isfinite(v)) return false;
  *out = v;
  return true;
}

bool ParseInt(const std::string& text, int64_t* out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text.c_str(), &end, 10);
  if (errno != 0 || end == text.c_str() || *end != '\0') return false;
  *out = v;
  return true;
}

bool ParseBool(const std::string& text, bool* out) {
  std::string lower;
  for (char c : text) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  if (lower == "1" || lower == "true" || lower == "yes" || lower == "on") { *out = true; return true; }
  if (lower == "0" || lower == "false" || lower == "no" || lower == "off" || lower.empty()) { *out = false; return true; }
  return false;
}

std::string Bad(const std::string& key, const std::string& value, const std::string& expected) {
  return "invalid value '" + value + "' for " + key + ": expected " + expected;
}

}  // namespace

bool ParseConfig(const std::map<std::string, std::string>& env, Config* config, std::string* error) {
  Config c;
  for (const auto& kv : env) {
    const std::string& key = kv.first;
    const std::string& value = kv.second;
    double d = 0;
    int64_t i = 0;
    if (key == "BLUEFOG_CYCLE_TIME") {
      if (!ParseDouble(value, &d) || d < 0) { *error = Bad(key, value, "a non-negative number of milliseconds"); return false; }
      c.cycle_time_ms = d;
    } else if (key == "BLUEFOG_FUSION_THRESHOLD") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of bytes"); return false; }
      c.fusion_threshold_bytes = i;
    } else if (key == "BLUEFOG_LOG_LEVEL") {
      if (!ParseLogLevel(value, &c.log_level)) { *error = Bad(key, value, "one of trace, debug, info, warning, error, fatal"); return false; }
    } else if (key == "BLUEFOG_LOG_HIDE_TIME") {
      if (!ParseBool(value, &c.log_hide_time)) { *error = Bad(key, value, "a boolean (0/1/true/false)"); return false; }
    } else if (key == "BLUEFOG_TIMELINE") {
      c.timeline_prefix = value;
    } else if (key == "BLUEFOG_MPI_THREAD_LEVEL") {
      if (!ParseInt(value, &i) || i < 0 || i > 3) { *error = Bad(key, value, "0, 1, 2 or 3 (MPI_THREAD_SINGLE..MULTIPLE)"); return false; }
      c.mpi_thread_level = static_cast<int>(i);
    } else if (key == "BLUEFOG_NODES_PER_MACHINE") {
      if (!ParseInt(value, &i) || i < 1) { *error = Bad(key, value, "a positive integer"); return false; }
      c.nodes_per_machine = static_cast<int>(i);
    } else if (key == "BLUEFOG_STALL_CHECK_TIME_SECONDS") {
      if (!ParseDouble(value, &d)) { *error = Bad(key, value, "a number of seconds (<= 0 disables)"); return false; }
      c.stall_check_seconds = d;
    } else if (key == "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS") {
      if (!ParseDouble(value, &d) || d < 0) { *error = Bad(key, value, "a non-negative number of seconds (0 disables)"); return false; }
      c.stall_shutdown_seconds = d;
    } else if (key == "BLUEFOG_SPIN_TIME_US") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of microseconds"); return false; }
      c.spin_time_us = i;
    } else if (key == "BLUEFOG_INLINE_BYTES") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of bytes (0 disables)"); return false; }
      c.inline_bytes = i;
    } else if (key == "BLUEFOG_OUTPUT_CACHE_BYTES") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of bytes (0 disables)"); return false; }
      c.output_cache_bytes = i;
    } else if (key == "BLUEFOG_CALLER_RUNS") {
      if (!ParseBool(value, &c.caller_runs)) { *error = Bad(key, value, "a boolean (0/1/true/false)"); return false; }
    } else if (key == "BLUEFOG_FAST_ROUNDS") {
      if (!ParseBool(value, &c.fast_rounds)) { *error = Bad(key, value, "a boolean (0/1/true/false)"); return false; }
    } else if (key == "BLUEFOG_DEADLOCK_CHECK") {
      if (!ParseBool(value, &c.deadlock_check)) { *error = Bad(key, value, "a boolean (0/1/true/false)"); return false; }
    } else if (key == "BLUEFOG_RING_ALLREDUCE_BYTES") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of bytes (0 disables)"); return false; }
      c.ring_allreduce_bytes = i;
    } else if (key == "BLUEFOG_P2P_GATHER_RANKS") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of ranks (0: always MPI_Iallgather)"); return false; }
      c.p2p_gather_ranks = i;
    } else if (key == "BLUEFOG_SKIP_PATTERN_MATRIX_RANKS") {
      if (!ParseInt(value, &i) || i < 0 || i > kSkipPatternMatrixMostRanks) {
        *error = Bad(key, value, "a number of ranks from 0 (always gather the lists) to " +
                                     std::to_string(kSkipPatternMatrixMostRanks));
        return false;
      }
      c.skip_pattern_matrix_ranks = i;
    } else if (key == "BLUEFOG_MAX_WIN_SENT_LENGTH") {
      if (!ParseInt(value, &i) || i < 0) { *error = Bad(key, value, "a non-negative number of elements (0: no limit)"); return false; }
      c.max_win_sent_length = i;
    } else if (key == "BLUEFOG_STALL_CHECK_DISABLE") {
      bool disable = false;
      if (!ParseBool(value, &disable)) { *error = Bad(key, value, "a boolean"); return false; }
      if (disable) c.stall_check_seconds = 0;
    }
    // Other BLUEFOG_* variables belong to other layers (build, launcher).
    // (Every key read here is listed in ConfigKeys().)
  }
  if (c.stall_shutdown_seconds > 0 && c.stall_check_seconds > 0 &&
      c.stall_shutdown_seconds < c.stall_check_seconds) {
    *error = "BLUEFOG_STALL_SHUTDOWN_TIME_SECONDS must be at least BLUEFOG_STALL_CHECK_TIME_SECONDS";
    return false;
  }
  *config = c;
  return true;
}

const char* ConfigKeys() {
  return "BLUEFOG_CYCLE_TIME\nBLUEFOG_FUSION_THRESHOLD\nBLUEFOG_LOG_LEVEL\nBLUEFOG_LOG_HIDE_TIME\n"
         "BLUEFOG_TIMELINE\nBLUEFOG_MPI_THREAD_LEVEL\nBLUEFOG_NODES_PER_MACHINE\n"
         "BLUEFOG_STALL_CHECK_TIME_SECONDS\nBLUEFOG_STALL_SHUTDOWN_TIME_SECONDS\nBLUEFOG_SPIN_TIME_US\n"
         "BLUEFOG_INLINE_BYTES\nBLUEFOG_OUTPUT_CACHE_BYTES\nBLUEFOG_CALLER_RUNS\nBLUEFOG_FAST_ROUNDS\n"
         "BLUEFOG_DEADLOCK_CHECK\nBLUEFOG_RING_ALLREDUCE_BYTES\nBLUEFOG_MAX_WIN_SENT_LENGTH\n"
         "BLUEFOG_STALL_CHECK_DISABLE\nBLUEFOG_P2P_GATHER_RANKS\nBLUEFOG_SKIP_PATTERN_MATRIX_RANKS";
}

std::map<std::string, std::string> ReadBluefogEnvironment() {
  std::map<std::string, std::string> env;
  for (char** p = environ; p && *p; ++p) {
    std::string entry(*p);
    if (entry.rfind("BLUEFOG_", 0) != 0) continue;
    auto eq = entry.find('=');
    if (eq == std::string::npos) continue;
    env[entry.substr(0, eq)] = entry.substr(eq + 1);
  }
  return env;
}

std::map<std::string, std::string> ParseKeyValueLines(const std::string& text) {
  std::map<std::string, std::string> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    auto eq = line.find('=');
    if (eq == std::string::npos || eq == 0) continue;
    out[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return out;
}

std::string ConfigToJson(const Config& c) {
  std::ostringstream os;
  std::string escaped;
  for (char ch : c.timeline_prefix) {
    if (ch == '"' || ch == '\\') escaped.push_back('\\');
    escaped.push_back(ch);
  }
  os << "{\"cycle_time_ms\": " << c.cycle_time_ms << ", \"fusion_threshold_bytes\": " << c.fusion_threshold_bytes
     << ", \"log_level\": \"" << LogLevelName(c.log_level) << "\", \"log_hide_time\": "
     << (c.log_hide_time ? "true" : "false") << ", \"timeline_prefix\": \"" << escaped
     << "\", \"mpi_thread_level\": " << c.mpi_thread_level << ", \"nodes_per_machine\": " << c.nodes_per_machine
     << ", \"stall_check_seconds\": " << c.stall_check_seconds
     << ", \"stall_shutdown_seconds\": " << c.stall_shutdown_seconds
     << ", \"spin_time_us\": " << c.spin_time_us << ", \"inline_bytes\": " << c.inline_bytes
     << ", \"output_cache_bytes\": " << c.output_cache_bytes
     << ", \"caller_runs\": " << (c.caller_runs ? "true" : "false")
     << ", \"fast_rounds\": " << (c.fast_rounds ? "true" : "false")
     << ", \"deadlock_check\": " << (c.deadlock_check ? "true" : "false")
     << ", \"ring_allreduce_bytes\": " << c.ring_allreduce_bytes
     << ", \"p2p_gather_ranks\": " << c.p2p_gather_ranks
     << ", \"skip_pattern_matrix_ranks\": " << c.skip_pattern_matrix_ranks
     << ", \"max_win_sent_length\": " << c.max_win_sent_length << "}";
  return os.str();
}

}  // namespace bluefog
