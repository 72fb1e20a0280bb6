// Integer handles for nonblocking ops: a frontend allocates one per op, the
// op's completion callback marks it done, and the user polls or waits.
#ifndef BLUEFOG_COMMON_HANDLE_MANAGER_H
#define BLUEFOG_COMMON_HANDLE_MANAGER_H

#include <condition_variable>
#include <functional>
#include <mutex>
#include <unordered_map>

#include "status.h"

namespace bluefog {

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

 private:
  struct Slot {
    bool done = false;
    Status status;
  };
  std::mutex mu_;
  std::condition_variable cv_;
  std::unordered_map<int, Slot> slots_;
  int next_ = 0;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_HANDLE_MANAGER_H
