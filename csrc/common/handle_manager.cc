#include "handle_manager.h"

#include <chrono>
#include <string>

#include "spin_wait.h"

namespace bluefog {

int HandleManager::Allocate() {
  std::lock_guard<std::mutex> lock(mu_);
  int h = next_++;
  slots_[h] = Slot();
  return h;
}

void HandleManager::MarkDone(int handle, const Status& status) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = slots_.find(handle);
    if (it == slots_.end()) return;
    it->second.done = true;
    it->second.status = status;
  }
  cv_.notify_all();
}

bool HandleManager::Poll(int handle, bool* known) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = slots_.find(handle);
  *known = it != slots_.end();
  return *known && it->second.done;
}

Status HandleManager::Wait(int handle, int64_t spin_us, const Helper& help, bool* claimed,
                           const std::function<bool()>& stop) {
  if (claimed) *claimed = false;
  std::unique_lock<std::mutex> lock(mu_);
  auto unknown = [handle] {
    return Status::InvalidArgument("unknown handle " + std::to_string(handle) +
                                   " (never returned by a nonblocking op, or already synchronized)");
  };
  if (slots_.find(handle) == slots_.end()) return unknown();
  BlockedWait blocked;
  // Done, or gone: another thread waiting for the same handle claimed it.
  auto done = [&] {
    auto it = slots_.find(handle);
    return it == slots_.end() || it->second.done;
  };
  if (help && !done()) {
    // The op's callback takes mu_ to mark it done: release it meanwhile.
    lock.unlock();
    help([&] {
      std::lock_guard<std::mutex> look(mu_);
      return done();
    });
    lock.lock();
  }
  // Most ops finish within a few scheduling slices: poll before sleeping.
  if (spin_us > 0) SpinUntil(lock, std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us), done);
  if (!stop) {
    cv_.wait(lock, done);
  } else {
    while (!cv_.wait_for(lock, std::chrono::milliseconds(100), done)) {
      lock.unlock();  // (`stop` may take an interpreter lock, whose holder may want mu_)
      const bool give_up = stop();
      lock.lock();
      // Even if the op has just finished: the caller reports the interruption,
      // and the handle keeps the result for its next wait.
      if (give_up) return Status::InProgress();
    }
  }
  auto it = slots_.find(handle);
  if (it == slots_.end()) {
    return Status::InvalidArgument("handle " + std::to_string(handle) +
                                   " was synchronized by another thread while this one waited for it");
  }
  Status s = it->second.status;
  slots_.erase(it);
  if (claimed) *claimed = true;
  lock.unlock();
  cv_.notify_all();  // other waiters for this handle: it is gone
  return s;
}

int HandleManager::WaitAny(const std::vector<int>& handles, uint64_t kicks, int timeout_ms) {
  // (Not a BlockedWait: the driver thread waits here while the callers may
  // compute; a caller blocked in its composite's wait counts instead.)
  std::unique_lock<std::mutex> lock(mu_);
  int found = -1;
  auto ready = [&] {
    if (kicks_ != kicks) return true;
    for (size_t i = 0; i < handles.size(); ++i) {
      auto it = slots_.find(handles[i]);
      if (it == slots_.end() || it->second.done) {
        found = static_cast<int>(i);
        return true;
      }
    }
    return false;
  };
  if (!cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), ready)) return -1;
  return found >= 0 ? found : -2;
}

void HandleManager::Kick() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++kicks_;
  }
  cv_.notify_all();
}

uint64_t HandleManager::Kicks() {
  std::lock_guard<std::mutex> lock(mu_);
  return kicks_;
}

}  // namespace bluefog
