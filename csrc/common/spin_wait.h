// Polling a condition under a mutex, yielding the core between looks, until it
// holds or a deadline passes: the short phase of a wait before it sleeps on a
// condition variable (waking a sleeping thread costs tens of microseconds).
#ifndef BLUEFOG_COMMON_SPIN_WAIT_H
#define BLUEFOG_COMMON_SPIN_WAIT_H

#include <chrono>
#include <mutex>
#include <thread>

namespace bluefog {

// `lock` is held on entry and on return; true if `done()` held.
template <typename Done>
bool SpinUntil(std::unique_lock<std::mutex>& lock, std::chrono::steady_clock::time_point until, Done done) {
  while (!done()) {
    if (std::chrono::steady_clock::now() >= until) return false;
    lock.unlock();
    std::this_thread::yield();
    lock.lock();
  }
  return true;
}

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_SPIN_WAIT_H
