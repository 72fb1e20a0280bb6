// Integer handles for nonblocking ops: a frontend allocates one per op, the
// op's completion callback marks it done, and the user polls or waits.
#ifndef BLUEFOG_COMMON_HANDLE_MANAGER_H
#define BLUEFOG_COMMON_HANDLE_MANAGER_H

#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "status.h"

namespace bluefog {

// Counts the threads of this process blocked in a BlueFog wait (a handle's
// wait, a blocking op): while it is positive and nothing moves, this rank
// cannot submit anything from those threads. Negotiation tells the other
// ranks (the deadlock check in coordinator.h).
class BlockedWait {
 public:
  BlockedWait() { count_.fetch_add(1, std::memory_order_relaxed); }
  ~BlockedWait() { count_.fetch_sub(1, std::memory_order_relaxed); }
  BlockedWait(const BlockedWait&) = delete;
  BlockedWait& operator=(const BlockedWait&) = delete;
  static int Count() { return count_.load(std::memory_order_relaxed); }

 private:
  static inline std::atomic<int> count_{0};
};

class HandleManager {
 public:
  int Allocate();
  void MarkDone(int handle, const Status& status);
  // True once done. Sets *known to false for an unknown handle.
  bool Poll(int handle, bool* known);
  // Blocks until done (callers must not hold an interpreter lock), forgets the
  // handle, and returns the op's status; INVALID_ARGUMENT for an unknown handle,
  // or for one that another thread's Wait claimed meanwhile. `*claimed` (if
  // given) tells whether this call got the op's own status.
  // First lets `help` work towards completion (it is given a "done yet?"
  // test; bluefog::HelpUntil runs the op's cycle on this thread), then polls
  // (yielding the core) for up to `spin_us` before it sleeps.
  // `stop` (if given) is asked every 100 ms while the op is not done; once it
  // says true, Wait returns IN_PROGRESS and keeps the handle, which may be
  // waited for again (a frontend checks for Ctrl-C there).
  using Helper = std::function<void(const std::function<bool()>&)>;
  Status Wait(int handle, int64_t spin_us = 0, const Helper& help = nullptr, bool* claimed = nullptr,
              const std::function<bool()>& stop = nullptr);

  // Blocks until one of `handles` is done (or unknown) and returns its index;
  // returns -1 once `timeout_ms` passes, and -2 as soon as Kick() has been
  // called since Kicks() returned `kicks`. Forgets nothing (Wait claims).
  // (One thread drives several multi-step ops this way, each moving on as
  // soon as its current step is done; the kick tells it of a new one.)
  int WaitAny(const std::vector<int>& handles, uint64_t kicks, int timeout_ms);
  void Kick();
  uint64_t Kicks();

 private:
  struct Slot {
    bool done = false;
    Status status;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Slot> slots_;
  int next_ = 0;
  uint64_t kicks_ = 0;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_HANDLE_MANAGER_H
