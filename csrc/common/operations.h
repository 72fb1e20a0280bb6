// The process-wide BlueFog instance: lifecycle, the background loop, and the
// C++ enqueue API that frontends call. One per process, shared by all frontends.
#ifndef BLUEFOG_COMMON_OPERATIONS_H
#define BLUEFOG_COMMON_OPERATIONS_H

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "status.h"
#include "tensor.h"

namespace bluefog {

// What an op submitted while a set_skip_negotiate_stage switch of this rank is
// pending is refused with (frontends recognize it: see basics.report_refusal).
inline const std::string kSwitchPending = "set_skip_negotiate_stage() on this rank has not completed";

struct BasicInfo {
  int rank, size, local_rank, local_size, machine_rank, machine_size;
  bool homogeneous, threads_multiple, unified_window_model;
};

// Collective over `fortran_comm` (MPI_Comm_c2f of the communicator) when
// `has_comm`, else over MPI_COMM_WORLD. `overrides`: "BLUEFOG_X=value" lines
// applied over the environment. A second call while running is a cheap no-op.
Status Initialize(bool has_comm, int fortran_comm, const std::string& overrides);
// Waits until every rank has asked to shut down, then stops the loop. Ops
// still in flight fail. Re-initializing afterwards is allowed.
void Shutdown();
// Shutdown in steps, so that a frontend can wait in slices and see Ctrl-C:
// asks for the shutdown (once), waits up to `timeout` for every rank to agree,
// and then shuts down; true once this rank is shut down (or was not running).
// After false the shutdown stays requested (new ops and init are refused) and
// a later call waits again. `*superseded`: another thread finished this
// shutdown meanwhile and initialized again (the new run is left alone).
bool ShutdownWithin(std::chrono::milliseconds timeout, bool* superseded);
bool IsInitialized();
Status GetBasicInfo(BasicInfo* info);

// Nonblocking enqueue: the callback runs with the op's final Status on the
// thread that runs the op's cycle (the background thread, or a caller in
// HelpUntil; never while the enqueue call is still running). An immediate error (not initialized, duplicate name,
// bad arguments) is returned and the callback is never called.
// `group_size` > 0: this allreduce is a member '<group>.<i>' of a grouped
// allreduce of that many tensors; ranks that disagree on it fail every member.
Status EnqueueAllreduce(std::shared_ptr<Tensor> input, std::shared_ptr<Tensor> output,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, bool average,
                        bool hierarchical_local, StatusCallback callback, int64_t group_size = 0);
Status EnqueueBroadcast(std::shared_ptr<Tensor> input, std::shared_ptr<Tensor> output,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, int root_rank,
                        StatusCallback callback);
Status EnqueueAllgather(std::shared_ptr<Tensor> input, std::shared_ptr<OpContext> context,
                        std::shared_ptr<ReadyEvent> ready, const std::string& name, StatusCallback callback);
// NEIGHBOR_ALLREDUCE or NEIGHBOR_ALLGATHER; the output (allocated through
// `context`) holds what each of `src_ranks` sent, in that order. Negotiation
// always checks the ranks' lists against each other; in skip-negotiate mode
// `topo_check` asks for that check (two extra collectives).
Status EnqueueNeighbor(OpType op, std::shared_ptr<Tensor> input, std::shared_ptr<OpContext> context,
                       std::shared_ptr<ReadyEvent> ready, const std::string& name, std::vector<int32_t> src_ranks,
                       std::vector<int32_t> dst_ranks, std::vector<double> dst_weights, StatusCallback callback,
                       bool topo_check = true);
Status EnqueueBarrier(const std::string& name, StatusCallback callback);
Status EnqueueSetSkipNegotiate(bool value, StatusCallback callback);
bool SkipNegotiate();
// Negotiation exchanges run since the process started, and how many of them
// callers ran in HelpUntil (diagnostics and tests).
void ExchangeCounts(uint64_t* total, uint64_t* by_callers);
// Skip-negotiate mode: batches agreed on (each one op, or a fused run), and
// the ops that ran in fused runs of several. Since the process started.
void SkipModeCounts(uint64_t* batches, uint64_t* fused_ops);
void FastRoundCounts(uint64_t* rounds, uint64_t* agreed);
// BLUEFOG_SPIN_TIME_US: how long a frontend polls for an op before it sleeps.
int64_t SpinMicros();
// BLUEFOG_OUTPUT_CACHE_BYTES: free output memory a frontend may keep for reuse.
int64_t OutputCacheBytes();

// Collective window lifecycle (negotiated, so ranks agree on order, dtype and
// shape). `src_ranks`/`dst_ranks`: this rank's in-/out-neighbors.
Status EnqueueWinCreate(std::shared_ptr<Tensor> tensor, const std::string& name, bool zero_init,
                        std::vector<int32_t> src_ranks, std::vector<int32_t> dst_ranks, StatusCallback callback);
// Frees `name`, or all windows when `name` is empty.
Status EnqueueWinFree(const std::string& name, StatusCallback callback);

// Tells the other ranks that this rank's frontend refused op `name` (of kind
// `op`, e.g. "neighbor_allreduce"; bad input on this rank) before submitting
// it: every rank's op of that name fails with `reason` instead of waiting for
// this rank. `callback` (optional) runs once every rank has failed it.
Status EnqueueReject(const std::string& op, const std::string& name, const std::string& reason,
                     StatusCallback callback = nullptr);

// One-sided window work, run on the background thread without negotiation
// (see window_manager.h for the operations). Work that returns IN_PROGRESS
// (a window mutex held elsewhere) is run again later, before any direct work
// the same thread queued after it (other threads' direct work goes on); the
// callback gets the final status.
class WindowManager;
Status EnqueueDirect(std::function<Status(WindowManager&)> work, StatusCallback callback);

// Runs an op through `enqueue` and blocks until it completes.
Status RunBlocking(const std::function<Status(StatusCallback)>& enqueue);

// For an op that a thread waits for outside BlueFog's own waits (a
// TensorFlow kernel: TensorFlow's executor blocks until the kernel's done
// callback). While the returned token is alive it counts as a blocked wait
// for the deadlock check (BLUEFOG_DEADLOCK_CHECK): take one before the enqueue
// and drop it in the op's callback.
std::shared_ptr<void> ExternalWait();

// While alive, ops this thread enqueues are marked as waited for at once by
// this thread (a blocking call): they do not wake the background thread, and
// the caller's HelpUntil runs their cycle. Should it not, the background
// thread still takes them at its next cycle.
class CallerWaitsScope {
 public:
  explicit CallerWaitsScope(bool on);
  ~CallerWaitsScope();
  CallerWaitsScope(const CallerWaitsScope&) = delete;
  CallerWaitsScope& operator=(const CallerWaitsScope&) = delete;

 private:
  bool previous_;
};

// Called by a thread about to block until `done()` (no interpreter lock
// held): while nobody else is running a cycle and there is work ready, runs
// the cycles itself (negotiation, execution, callbacks) instead of waiting to
// be woken by the background thread. Returns when `done()` holds or helping
// stops paying off; the caller then waits as usual. BLUEFOG_CALLER_RUNS=0
// turns it off.
void HelpUntil(const std::function<bool()>& done);

// MPI_Abort on the job's communicator (no return).
void Abort(int code);
void Suspend();
void Resume();

// Timeline activities from the frontends (false if the timeline is off).
bool TimelineStartActivity(const std::string& name, const std::string& activity);
bool TimelineEndActivity(const std::string& name);

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_OPERATIONS_H
