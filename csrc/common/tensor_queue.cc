#include "tensor_queue.h"

#include <algorithm>

#include "spin_wait.h"

namespace bluefog {

void CompleteEntry(TensorTableEntry& entry, const Status& status) {
  StatusCallback callback = std::move(entry.callback);
  {
    TensorTableEntry released = std::move(entry);
  }
  if (callback) callback(status);
}

Status TensorQueue::Add(TensorTableEntry entry, Request request, bool owned) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = table_.find(entry.name);
    if (it != table_.end() && it->second.refusal && !entry.refusal && !behind_refusal_.count(entry.name)) {
      std::string name = entry.name;
      behind_refusal_.emplace(std::move(name), std::make_pair(std::move(entry), std::move(request)));
      return Status::OK();
    }
    if (it != table_.end() || behind_refusal_.count(entry.name)) {
      return Status::InvalidArgument("duplicate name '" + entry.name + "' for " + OpTypeName(entry.op) +
                                     ": an op with this name is still in flight on this rank; wait for it "
                                     "or give a different name");
    }
    std::string name = entry.name;
    table_.emplace(std::move(name), std::move(entry));
    pending_.push_back(std::move(request));
    if (owned) ++owned_pending_;
  }
  if (!owned) cv_.notify_one();  // the owner runs it; a sleeping loop stays asleep
  return Status::OK();
}

void TensorQueue::PopRequests(std::vector<Request>* out) {
  std::lock_guard<std::mutex> lock(mu_);
  while (!pending_.empty()) {
    out->push_back(std::move(pending_.front()));
    pending_.pop_front();
  }
  owned_pending_ = 0;
}

void TensorQueue::Unpop(std::vector<Request>::iterator begin, std::vector<Request>::iterator end) {
  if (begin == end) return;
  {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.insert(pending_.begin(), std::make_move_iterator(begin), std::make_move_iterator(end));
  }
  cv_.notify_one();
}

bool TensorQueue::HasNewRequests(bool count_owned) {
  std::lock_guard<std::mutex> lock(mu_);
  return pending_.size() > (count_owned ? 0 : owned_pending_);
}

bool TensorQueue::ViewInput(const std::string& name, int64_t max_bytes, std::string_view* out) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = table_.find(name);
  if (it == table_.end()) return false;
  const TensorTableEntry& e = it->second;
  if (!e.input || e.input->device() != kCpuDevice || e.input->size_bytes() > max_bytes) return false;
  if (e.ready_event && !e.ready_event->Ready()) return false;
  *out = std::string_view(static_cast<const char*>(e.input->data()), static_cast<size_t>(e.input->size_bytes()));
  return true;
}

bool TensorQueue::Take(const std::string& name, TensorTableEntry* entry) {
  std::unique_lock<std::mutex> lock(mu_);
  auto it = table_.find(name);
  if (it == table_.end()) return false;
  *entry = std::move(it->second);
  table_.erase(it);
  if (behind_refusal_.empty()) return true;
  auto next = behind_refusal_.find(name);
  if (next == behind_refusal_.end()) return true;
  table_.emplace(name, std::move(next->second.first));  // the op that waited behind the refusal goes now
  pending_.push_back(std::move(next->second.second));
  behind_refusal_.erase(next);
  lock.unlock();
  cv_.notify_one();
  return true;
}

void TensorQueue::FailAll(const Status& status) {
  std::unordered_map<std::string, TensorTableEntry> failed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    failed.swap(table_);
    for (auto& kv : behind_refusal_) failed.emplace(kv.first + " (queued behind its refusal)", std::move(kv.second.first));
    behind_refusal_.clear();
    pending_.clear();
    owned_pending_ = 0;
  }
  for (auto& kv : failed) CompleteEntry(kv.second, status);
}

size_t TensorQueue::InFlight() {
  std::lock_guard<std::mutex> lock(mu_);
  return table_.size() + behind_refusal_.size();
}

void TensorQueue::AddDirect(std::function<Status()> work, StatusCallback callback) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    direct_.push_back({std::move(work), std::move(callback), std::this_thread::get_id()});
  }
  cv_.notify_one();
}

bool TensorQueue::DirectDue() const {
  return !direct_.empty() && (direct_pause_.count() == 0 || direct_.size() > direct_waiting_ ||
                              std::chrono::steady_clock::now() >= direct_retry_at_);
}

namespace {
thread_local std::thread::id tls_direct_submitter;
bool Among(const std::vector<std::thread::id>& threads, std::thread::id t) {
  return std::find(threads.begin(), threads.end(), t) != threads.end();
}
}  // namespace

std::thread::id DirectSubmitter() { return tls_direct_submitter; }

size_t TensorQueue::RunDirect(bool force) {
  constexpr std::chrono::microseconds kFirstPause{5}, kLongestPause{100};
  std::unique_lock<std::mutex> lock(mu_);
  // The usual case, checked first: this runs on every poll of every MPI wait.
  if (direct_.empty() || (!force && !DirectDue())) return 0;
  // Ops that waited are tried again only once the pause has passed; before,
  // only ops of other threads (added meanwhile) run.
  const bool retry = force || direct_pause_.count() == 0 || std::chrono::steady_clock::now() >= direct_retry_at_;
  std::vector<std::thread::id> waiting_threads;  // threads whose next op must wait
  if (!retry) waiting_threads = direct_waiting_threads_;
  std::deque<DirectOp> ops, kept;
  ops.swap(direct_);
  lock.unlock();
  size_t done = 0;
  for (; !ops.empty(); ops.pop_front()) {
    DirectOp& op = ops.front();
    if (Among(waiting_threads, op.thread)) {
      kept.push_back(std::move(op));
      continue;
    }
    tls_direct_submitter = op.thread;
    Status s = op.work();
    tls_direct_submitter = std::thread::id();
    if (s.in_progress()) {
      waiting_threads.push_back(op.thread);
      kept.push_back(std::move(op));
      continue;
    }
    if (op.callback) op.callback(s);
    ++done;
  }
  direct_completed_.fetch_add(done, std::memory_order_relaxed);
  lock.lock();
  direct_waiting_ = kept.size();
  direct_waiting_threads_.swap(waiting_threads);
  if (kept.empty()) {
    direct_pause_ = std::chrono::microseconds(0);
    return done;
  }
  // Those left go back in front of any added meanwhile, in order.
  while (!kept.empty()) {
    direct_.push_front(std::move(kept.back()));
    kept.pop_back();
  }
  // Only a retry moves the pause on (each waiting op was tried once more).
  if (retry) {
    direct_pause_ = direct_pause_.count() == 0 ? kFirstPause : std::min(direct_pause_ * 2, kLongestPause);
    direct_retry_at_ = std::chrono::steady_clock::now() + direct_pause_;
  }
  return done;
}

void TensorQueue::FailDirect(const Status& status) {
  std::deque<DirectOp> ops;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ops.swap(direct_);
    direct_pause_ = std::chrono::microseconds(0);
    direct_waiting_ = 0;
    direct_waiting_threads_.clear();
  }
  for (auto& op : ops)
    if (op.callback) op.callback(status);
}

void TensorQueue::WaitForWork(std::chrono::microseconds timeout, std::chrono::microseconds spin, bool count_owned) {
  auto has_work = [this, count_owned] {
    return pending_.size() > (count_owned ? 0 : owned_pending_) || DirectDue() || woken_;
  };
  auto start = std::chrono::steady_clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  // A direct op waiting out its pause: no longer than that (nothing signals its end).
  if (!direct_.empty() && direct_pause_.count() > 0) {
    auto until = std::chrono::duration_cast<std::chrono::microseconds>(direct_retry_at_ - start);
    timeout = std::max(std::chrono::microseconds(0), std::min(timeout, until));
  }
  if (spin.count() > 0) SpinUntil(lock, start + std::min(spin, timeout), has_work);
  auto left = timeout - std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start);
  if (left.count() > 0) cv_.wait_for(lock, left, has_work);
  woken_ = false;
}

void TensorQueue::Wake() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    woken_ = true;
  }
  cv_.notify_one();
}

}  // namespace bluefog
