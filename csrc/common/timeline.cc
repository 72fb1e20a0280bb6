#include "timeline.h"

#include <algorithm>
#include <iterator>

#include "logging.h"

namespace bluefog {

namespace {
std::string JsonEscape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out.push_back('\\');
      out.push_back(c);
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out.push_back(c);
    }
  }
  return out;
}
}  // namespace

bool Timeline::Initialize(const std::string& path) {
  Shutdown();
  // A re-init (shutdown, then init) in this process appends to the trace it
  // was writing: its lanes keep their pids and the clock goes on. Another
  // path, or the first init, starts a new trace.
  const bool resume = path == path_;
  file_ = std::fopen(path.c_str(), resume ? "a" : "w");
  if (!file_) {
    BFLOG(ERROR) << "cannot open timeline file '" << path << "'; timeline disabled";
    path_.clear();
    return false;
  }
  std::setvbuf(file_, nullptr, _IONBF, 0);  // WriterLoop writes whole batches itself
  if (!resume) {
    std::fputs("[\n", file_);
    start_ = std::chrono::steady_clock::now();
    pids_.clear();
    open_.clear();
    path_ = path;
  }
  stop_ = false;
  writer_ = std::thread(&Timeline::WriterLoop, this);
  enabled_ = true;
  return true;
}

void Timeline::Shutdown() {
  if (!writer_.joinable()) return;
  enabled_ = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_one();
  writer_.join();
  std::fclose(file_);
  file_ = nullptr;
}

int Timeline::ThreadId() {
  std::lock_guard<std::mutex> lock(tid_mu_);
  auto id = std::this_thread::get_id();
  auto it = tids_.find(id);
  if (it != tids_.end()) return it->second;
  int tid = next_tid_++;
  tids_[id] = tid;
  return tid;
}

void Timeline::Start(const std::string& name, const std::string& activity) {
  if (!enabled()) return;
  Push(Event{'B', name, activity, 0, ThreadId()});
}

void Timeline::End(const std::string& name) {
  if (!enabled()) return;
  Push(Event{'E', name, std::string(), 0, ThreadId()});
}

void Timeline::Push(Event event) {
  event.ts_us =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - start_).count();
  {
    std::lock_guard<std::mutex> lock(mu_);
    events_.push_back(std::move(event));
  }
  cv_.notify_one();
}

void Timeline::WriteEvent(const Event& e, std::string* out) {
  auto it = pids_.find(e.name);
  int pid;
  if (it == pids_.end()) {
    pid = static_cast<int>(pids_.size()) + 1;
    pids_[e.name] = pid;
    const std::string p = std::to_string(pid);
    *out += "{\"name\": \"process_name\", \"ph\": \"M\", \"pid\": " + p + ", \"tid\": 0, \"args\": {\"name\": \"" +
            JsonEscape(e.name) + "\"}},\n{\"name\": \"process_sort_index\", \"ph\": \"M\", \"pid\": " + p +
            ", \"tid\": 0, \"args\": {\"sort_index\": " + p + "}},\n";
  } else {
    pid = it->second;
  }
  std::vector<int>& open = open_[e.name];
  int tid = e.tid;
  if (e.phase == 'B') {
    open.push_back(tid);
    *out += "{\"name\": \"" + JsonEscape(e.activity) + "\", \"ph\": \"B\"";
  } else {
    // This thread's innermost open phase of the lane; else (a phase another
    // thread began, such as NEGOTIATE, ended by a caller running the cycle)
    // the innermost open one.
    auto mine = std::find(open.rbegin(), open.rend(), tid);
    if (mine != open.rend()) {
      open.erase(std::next(mine).base());
    } else if (!open.empty()) {
      tid = open.back();
      open.pop_back();
    }
    *out += "{\"ph\": \"E\"";
  }
  *out += ", \"ts\": " + std::to_string(e.ts_us) + ", \"pid\": " + std::to_string(pid) + ", \"tid\": " +
          std::to_string(tid) + "},\n";
}

void Timeline::WriterLoop() {
  std::deque<Event> batch;
  std::string out;
  while (true) {
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, std::chrono::milliseconds(100), [this] { return stop_ || !events_.empty(); });
      batch.swap(events_);
      stopping = stop_;
    }
    // One write per batch of whole lines (the file is unbuffered): a process
    // killed meanwhile leaves a trace that ends on a whole event.
    out.clear();
    for (const auto& e : batch) WriteEvent(e, &out);
    if (!out.empty()) std::fwrite(out.data(), 1, out.size(), file_);
    batch.clear();
    if (stopping) return;
  }
}

}  // namespace bluefog
