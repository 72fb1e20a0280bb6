// Chrome-trace timeline (opens in Perfetto / chrome://tracing).
//
// Each rank writes `<prefix><rank>.json`: a JSON array opened with '[' and left
// open, so it is readable while the job runs. Each tensor name is a "process"
// (with process_name / process_sort_index metadata); threads are numbered 1, 2,
// ... in order of first use. Events are queued by any thread and written by a
// writer thread that flushes continuously.
#ifndef BLUEFOG_COMMON_TIMELINE_H
#define BLUEFOG_COMMON_TIMELINE_H

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace bluefog {

class Timeline {
 public:
  ~Timeline() { Shutdown(); }
  // Opens the file and starts the writer. Returns false (and logs) on failure.
  // The same path as the last call's (a re-init) appends to that trace.
  bool Initialize(const std::string& path);
  void Shutdown();
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // 'B' / 'E' events of `activity` on the calling thread, in tensor `name`'s lane.
  void Start(const std::string& name, const std::string& activity);
  void End(const std::string& name);

 private:
  struct Event {
    char phase;
    std::string name;      // tensor name
    std::string activity;  // for 'B'
    int64_t ts_us;
    int tid;
  };
  void Push(Event event);
  void WriterLoop();
  void WriteEvent(const Event& e, std::string* out);
  int ThreadId();

  std::atomic<bool> enabled_{false};
  std::FILE* file_ = nullptr;
  std::string path_;  // the trace this process last wrote (a re-init appends to it)
  std::chrono::steady_clock::time_point start_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> events_;
  bool stop_ = false;
  std::thread writer_;
  std::unordered_map<std::string, int> pids_;  // writer thread only
  // Per lane (op name): the thread ids of its open phases, innermost last
  // (writer thread only). An end event goes to its begin's thread: an op's
  // phase can begin on the background thread and end on a caller's, and
  // trace viewers pair begin/end events per thread. An end closes the
  // ending thread's own innermost open phase of the lane if it has one.
  std::unordered_map<std::string, std::vector<int>> open_;
  std::atomic<int> next_tid_{1};
  std::mutex tid_mu_;
  std::unordered_map<std::thread::id, int> tids_;
};

}  // namespace bluefog

#endif  // BLUEFOG_COMMON_TIMELINE_H
