// The op queue: the user's thread adds named entries; the background thread
// takes the new requests each cycle and later the entries agreed to be ready.
#ifndef BLUEFOG_COMMON_TENSOR_QUEUE_H
#define BLUEFOG_COMMON_TENSOR_QUEUE_H

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "message.h"
#include "status.h"
#include "tensor.h"

namespace bluefog {

struct TensorTableEntry {
  std::string name;
  OpType op = OpType::ALLREDUCE;
  std::shared_ptr<Tensor> input;
  std::shared_ptr<Tensor> output;     // may be null until allocated (allgather)
  std::shared_ptr<OpContext> context;
  std::shared_ptr<ReadyEvent> ready_event;
  int32_t root_rank = -1;
  bool average = false;
  bool hierarchical_local = false;
  int64_t int_arg = 0;
  std::vector<int32_t> src_ranks;  // neighbor ops
  std::vector<int32_t> dst_ranks;
  std::vector<double> dst_weights;
  StatusCallback callback;
  // This rank's frontend refused the op (EnqueueReject): the entry only tells
  // the other ranks, and an op of the same name may queue up behind it.
  bool refusal = false;
};

// Releases the entry's tensors, THEN runs its callback: when a frontend learns
// that an op finished, the core holds no reference to its tensors any more.
void CompleteEntry(TensorTableEntry& entry, const Status& status);

class TensorQueue {
 public:
  // Fails with INVALID_ARGUMENT if `name` is still in flight on this rank
  // (unless the op in flight is this rank's refusal of it: the new one then
  // waits behind it and is submitted when the refusal is resolved, as a
  // caller retrying after the error expects).
  // `owned`: the enqueuing thread will wait for this op next and run the
  // cycle itself, so the request does not wake a thread in WaitForWork(...,
  // /*count_owned=*/false) (any cycle still takes it).
  Status Add(TensorTableEntry entry, Request request, bool owned = false);
  // Moves the requests added since the last call into `out` (in enqueue order).
  void PopRequests(std::vector<Request>* out);
  // Puts requests taken by PopRequests and not run back in front of the ones
  // added since, in their order (for the next cycle, e.g. in the other mode).
  void Unpop(std::vector<Request>::iterator begin, std::vector<Request>::iterator end);
  bool HasNewRequests(bool count_owned = true);
  // Points *out at the input bytes of entry `name` if they are in CPU memory,
  // at most `max_bytes` long and ready now (never waits). False otherwise. The
  // entry keeps its input alive until it completes, after this cycle's encode.
  bool ViewInput(const std::string& name, int64_t max_bytes, std::string_view* out);
  // Removes and returns the entry (false if unknown).
  bool Take(const std::string& name, TensorTableEntry* entry);
  // Fails every entry still in the table (used at shutdown).
  void FailAll(const Status& status);
  size_t InFlight();

  // Direct ops (one-sided window ops): run by the background thread as soon
  // as it can, without negotiation, in the order each submitting thread
  // added them. `work` may return IN_PROGRESS (a window mutex held
  // elsewhere): it then stays first in line among its thread's ops and is
  // tried again once a growing pause has passed, while the background thread
  // goes on with other work, the other threads' direct ops included (so that
  // a mutex release from one thread never waits behind another thread's op
  // that waits for a mutex); otherwise `callback` gets its status.
  void AddDirect(std::function<Status()> work, StatusCallback callback);
  // Runs the direct ops queued so far, in each thread's order: a thread whose
  // op must wait has its later ops wait too. Ops that wait are tried again
  // only once the pause has passed (or with `force`); ops of other threads
  // added meanwhile run at once. Returns how many completed.
  size_t RunDirect(bool force = false);
  // Direct ops completed so far (a rank that completes them is not stuck).
  uint64_t DirectCompleted() const { return direct_completed_.load(std::memory_order_relaxed); }
  // Completes every queued direct op with `status` (at shutdown).
  void FailDirect(const Status& status);

  // Blocks until new requests or direct ops arrive, Wake() is called, or the
  // timeout passes. Polls (yielding the core) for up to `spin` of that time
  // before it sleeps. Without `count_owned`, owned requests do not end the wait.
  void WaitForWork(std::chrono::microseconds timeout, std::chrono::microseconds spin = {},
                   bool count_owned = true);
  void Wake();

 private:
  std::atomic<uint64_t> direct_completed_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool woken_ = false;
  std::unordered_map<std::string, TensorTableEntry> table_;
  std::deque<Request> pending_;
  // Ops added while a refusal of the same name was in flight (see Add).
  std::unordered_map<std::string, std::pair<TensorTableEntry, Request>> behind_refusal_;
  struct DirectOp {
    std::function<Status()> work;
    StatusCallback callback;
    std::thread::id thread;  // the submitter's: its ops run in its order
  };
  bool DirectDue() const;  // mu_ held
  std::deque<DirectOp> direct_;
  std::chrono::steady_clock::time_point direct_retry_at_{};  // while some wait: when they are tried again
  std::chrono::microseconds direct_pause_{0};
  size_t direct_waiting_ = 0;  // how many of direct_ (at its front) were left waiting by the last run
  std::vector<std::thread::id> direct_waiting_threads_;  // ... and whose (few threads: a vector)
  size_t owned_pending_ = 0;  // how many of pending_ are owned
};

// The thread that submitted the direct op whose work is running on this
// thread now (see TensorQueue::RunDirect); a default id outside of one.
std::thread::id DirectSubmitter();

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_TENSOR_QUEUE_H
