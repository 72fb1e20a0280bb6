// Typed configuration, read ONCE at init from BLUEFOG_* variables (plus
// overrides given from Python). Nothing on the hot path calls getenv.
#ifndef BLUEFOG_COMMON_CONFIG_H
#define BLUEFOG_COMMON_CONFIG_H

#include <cstdint>
#include <map>
#include <string>

#include "logging.h"

namespace bluefog {

// The largest BLUEFOG_SKIP_PATTERN_MATRIX_RANKS: its matrices are 2 x size^2
// bits (256 KiB in every skip-mode agreement at this size).
constexpr int64_t kSkipPatternMatrixMostRanks = 1024;

struct Config {
  // Under load (ops waiting for peers), the longest the background thread waits
  // for new local work before it negotiates again. New work wakes it at once.
  double cycle_time_ms = 0.5;
  int64_t fusion_threshold_bytes = 8 * 1024 * 1024;
  LogLevel log_level = LogLevel::WARNING;
  bool log_hide_time = false;
  std::string timeline_prefix;  // empty: timeline off
  int mpi_thread_level = 3;     // MPI_THREAD_MULTIPLE, so mpi4py can share MPI
  int nodes_per_machine = 0;    // 0: split by shared memory
  double stall_check_seconds = 60.0;     // <= 0 disables the stall inspector
  double stall_shutdown_seconds = 0.0;   // > 0: stalled ops fail after this long
  // How long a waiting thread (a caller waiting for its op, the background
  // thread waiting for work) polls, yielding the core, before it sleeps on a
  // condition variable. Waking a sleeping thread costs tens of microseconds
  // (more on virtual machines), so short waits must not sleep.
  int64_t spin_time_us = 200;
  // An allreduce / neighbor_allreduce whose input, times the number of ranks,
  // is at most this many bytes travels inside the negotiation exchange: every
  // rank then computes the result from the gathered inputs, with no second
  // collective. 0 disables.
  int64_t inline_bytes = 64 * 1024;
  // Free memory of dropped op outputs a frontend keeps to reuse for the next
  // outputs of the same size (no page faults on first touch). 0 disables.
  int64_t output_cache_bytes = 256 * 1024 * 1024;
  // A thread blocked waiting for its op (a blocking call, synchronize) runs
  // the negotiation cycles itself while nobody else does, instead of handing
  // the op to the background thread and sleeping until it is woken: two
  // thread hand-offs fewer per op. Off: only the background thread communicates.
  bool caller_runs = true;
  // A small allreduce repeated exchange after exchange (the same op on every
  // rank each time) is agreed on and summed in one message allreduce instead of
  // the allgather negotiation (see fast_round.h). Needs inline_bytes > 0.
  bool fast_rounds = true;
  // Ops that can certainly never complete (every rank blocked in a BlueFog
  // wait, nothing moving anywhere for stall_check_seconds) fail on every rank
  // instead of hanging (Coordinator::Stalls). Decided by rank 0's setting.
  bool deadlock_check = true;
  // Allreduces of at least this many bytes (and at least 128 KiB per rank)
  // run as BlueFog's own ring (reduce-scatter then allgather, point to point),
  // which needs no extra pass over memory out of place. 0: MPI's allreduce.
  int64_t ring_allreduce_bytes = 1024 * 1024;
  // BLUEFOG_P2P_GATHER_RANKS: the negotiation exchange gathers every rank's
  // message as point-to-point messages on up to this many ranks, and with
  // MPI_Iallgather on more (0: always MPI_Iallgather).
  int64_t p2p_gather_ranks = 32;
  // BLUEFOG_SKIP_PATTERN_MATRIX_RANKS: in skip-negotiate mode, on up to this
  // many ranks a neighbor op's send/receive pattern is checked inside the op's
  // agreement allreduce (two size x size bit matrices); on more, by gathering
  // every rank's lists (0: always gather; at most kSkipPatternMatrixMostRanks).
  int64_t skip_pattern_matrix_ranks = 64;
  // Window put / get / accumulate: the most elements one MPI call moves (a
  // larger window goes in several calls). 0: as many as an MPI count allows.
  int64_t max_win_sent_length = 0;
};

// Parses BLUEFOG_* entries of `env` into `config`, starting from defaults.
// Returns false and sets `error` for a malformed value (naming the variable).
bool ParseConfig(const std::map<std::string, std::string>& env, Config* config, std::string* error);

// The BLUEFOG_* settings ParseConfig reads (the runtime's; other BLUEFOG_*
// variables belong to the build or the launcher), "\n"-separated.
const char* ConfigKeys();

// The BLUEFOG_* variables of the process environment.
std::map<std::string, std::string> ReadBluefogEnvironment();

// "KEY=VALUE" lines -> map (used for Python-side overrides).
std::map<std::string, std::string> ParseKeyValueLines(const std::string& text);

// A JSON object describing the config (for tests and debug logs).
std::string ConfigToJson(const Config& config);

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_CONFIG_H
