#include "c_api.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "config.h"
#include "coordinator.h"
#include "handle_manager.h"
#include "operations.h"
#include "window_manager.h"

using namespace bluefog;

namespace {
thread_local std::string t_last_error;
thread_local int t_last_error_type = 0;
thread_local std::string t_config_json;

int Report(const Status& s) {
  t_last_error = s.reason();
  t_last_error_type = static_cast<int>(s.type());
  return static_cast<int>(s.type());
}

// Barriers and skip-mode switches started from Python, which waits for them in
// slices (see basics.barrier).
HandleManager& BarrierHandles() {
  static HandleManager* handles = new HandleManager();  // never destroyed: safe at exit
  return *handles;
}

int Info(int BasicInfo::*field) {
  BasicInfo info;
  if (!GetBasicInfo(&info).ok()) return -1;
  return info.*field;
}

int Flag(bool BasicInfo::*field) {
  BasicInfo info;
  if (!GetBasicInfo(&info).ok()) return -1;
  return info.*field ? 1 : 0;
}
}  // namespace

extern "C" {

int bluefog_init(int has_comm, int fortran_comm, const char* overrides) {
  return Report(Initialize(has_comm != 0, fortran_comm, overrides ? overrides : ""));
}
void bluefog_shutdown(void) { Shutdown(); }
int bluefog_shutdown_wait(int timeout_ms) {
  bool superseded = false;
  if (!ShutdownWithin(std::chrono::milliseconds(timeout_ms), &superseded)) return 0;
  return superseded ? 2 : 1;
}
int bluefog_is_initialized(void) { return IsInitialized() ? 1 : 0; }
const char* bluefog_last_error(void) { return t_last_error.c_str(); }
int bluefog_last_error_type(void) { return t_last_error_type; }

int bluefog_rank(void) { return Info(&BasicInfo::rank); }
int bluefog_size(void) { return Info(&BasicInfo::size); }
int bluefog_local_rank(void) { return Info(&BasicInfo::local_rank); }
int bluefog_local_size(void) { return Info(&BasicInfo::local_size); }
int bluefog_machine_rank(void) { return Info(&BasicInfo::machine_rank); }
int bluefog_machine_size(void) { return Info(&BasicInfo::machine_size); }
int bluefog_is_homogeneous(void) { return Flag(&BasicInfo::homogeneous); }
int bluefog_mpi_threads_supported(void) { return Flag(&BasicInfo::threads_multiple); }
int bluefog_unified_mpi_window_model_supported(void) { return Flag(&BasicInfo::unified_window_model); }
int bluefog_nccl_built(void) {
#ifdef BLUEFOG_WITH_NCCL
  return 1;
#else
  return 0;
#endif
}

namespace {
// Starts a collective control op whose caller waits for it in slices
// (bluefog_barrier_wait): `enqueue` submits it with the completion callback.
int StartControlOp(const std::function<Status(StatusCallback)>& enqueue, int* handle) {
  const int h = BarrierHandles().Allocate();
  Status s;
  {
    CallerWaitsScope waits(true);  // the waits below run its cycle, as RunBlocking does
    s = enqueue([h](const Status& st) { BarrierHandles().MarkDone(h, st); });
  }
  if (!s.ok()) {
    BarrierHandles().MarkDone(h, s);
    BarrierHandles().Wait(h);
    return Report(s);
  }
  *handle = h;
  return 0;
}
}  // namespace

int bluefog_barrier_start(int* handle) {
  return StartControlOp([](StatusCallback cb) { return EnqueueBarrier("bluefog.barrier", std::move(cb)); }, handle);
}

int bluefog_barrier_wait(int handle, int timeout_ms, int* final_status, char* reason, int reason_size) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  Status s = BarrierHandles().Wait(handle, SpinMicros(), HelpUntil, nullptr,
                                   [until] { return std::chrono::steady_clock::now() >= until; });
  const int code = Report(s);
  if (s.in_progress()) return code;
  if (reason && reason_size > 0) {  // (first, so that the status marks the whole outcome as written)
    const size_t n = std::min(s.reason().size(), static_cast<size_t>(reason_size - 1));
    std::memcpy(reason, s.reason().data(), n);
    reason[n] = '\0';
  }
  if (final_status) *final_status = code;
  return code;
}

int bluefog_reject(const char* op, const char* name, const char* reason) {
  const std::string o = op ? op : "", n = name ? name : "", why = reason ? reason : "";
  if (!SkipNegotiate()) return Report(EnqueueReject(o, n, why));
  // Skip-negotiate mode runs ops in submission order: the refusal is this
  // rank's op at this point of its order, so it completes before the frontend
  // raises (a retry under the same name must come after it, not after
  // whatever this rank submits while the refusal waits for the peers).
  Status s = RunBlocking([&](StatusCallback cb) { return EnqueueReject(o, n, why, std::move(cb)); });
  return Report(s.type() == StatusType::INVALID_ARGUMENT ? Status::OK() : s);  // (the refusal itself failing the op)
}

int bluefog_set_skip_negotiate_start(int value, int* handle) {
  return StartControlOp([value](StatusCallback cb) { return EnqueueSetSkipNegotiate(value != 0, std::move(cb)); },
                        handle);
}
int bluefog_get_skip_negotiate_stage(void) { return SkipNegotiate() ? 1 : 0; }
void bluefog_exchange_counts(long long* total, long long* by_callers) {
  uint64_t t = 0, c = 0;
  ExchangeCounts(&t, &c);
  *total = static_cast<long long>(t);
  *by_callers = static_cast<long long>(c);
}
void bluefog_skip_mode_counts(long long* batches, long long* fused_ops) {
  uint64_t b = 0, f = 0;
  SkipModeCounts(&b, &f);
  *batches = static_cast<long long>(b);
  *fused_ops = static_cast<long long>(f);
}
int bluefog_pattern_matrix_check(int size, const int* src_counts, const int* srcs, const int* dst_counts,
                                 const int* dsts, char* out, int out_size) {
  const int n = PatternWords(size, kSkipPatternMatrixMostRanks);
  if (n == 0) return -1;
  std::vector<uint64_t> all(n, ~uint64_t{0}), mine(n);
  const int* s = srcs;
  const int* d = dsts;
  for (int rank = 0; rank < size; ++rank) {
    Request r;
    r.op = OpType::NEIGHBOR_ALLREDUCE;
    r.topo_check = true;
    r.src_ranks.assign(s, s + src_counts[rank]);
    r.dst_ranks.assign(d, d + dst_counts[rank]);
    s += src_counts[rank];
    d += dst_counts[rank];
    FillPatternWords(r, rank, size, n, mine.data());
    for (int i = 0; i < n; ++i) all[i] &= mine[i];
  }
  std::string problem;
  if (!PatternFromWords(all.data(), n, size, &problem)) return 0;
  if (out && out_size > 0) {
    const size_t k = std::min(problem.size(), static_cast<size_t>(out_size - 1));
    std::memcpy(out, problem.data(), k);
    out[k] = '\0';
  }
  return 1;
}
void bluefog_fast_round_counts(long long* rounds, long long* agreed) {
  uint64_t r = 0, a = 0;
  FastRoundCounts(&r, &a);
  *rounds = static_cast<long long>(r);
  *agreed = static_cast<long long>(a);
}
long long bluefog_win_transfer_calls(void) { return static_cast<long long>(WindowTransferCalls()); }
void bluefog_suspend(void) { Suspend(); }
void bluefog_resume(void) { Resume(); }
void bluefog_abort(int code) { Abort(code); }

int bluefog_timeline_start_activity(const char* name, const char* activity) {
  return TimelineStartActivity(name, activity) ? 1 : 0;
}
int bluefog_timeline_end_activity(const char* name) { return TimelineEndActivity(name) ? 1 : 0; }

const char* bluefog_parse_config(const char* text, int use_env) {
  auto env = use_env ? ReadBluefogEnvironment() : std::map<std::string, std::string>();
  for (const auto& kv : ParseKeyValueLines(text ? text : "")) env[kv.first] = kv.second;
  Config config;
  std::string error;
  if (!ParseConfig(env, &config, &error)) {
    Report(Status::InvalidArgument(error));
    return nullptr;
  }
  t_config_json = ConfigToJson(config);
  return t_config_json.c_str();
}

const char* bluefog_config_keys(void) { return ConfigKeys(); }

}  // extern "C"
